"""``labelmesh ui``: the URL of the node's web UI, with its access token (node/web/)."""
from __future__ import annotations

import argparse

from .common import call, out


def cmd_ui(args) -> int:
    r = call(args, "ui_url")
    out(args, r, f"{r['login_url']}\n(open it in a browser on this machine; the token changes at each node start)")
    if args.open and not args.json:
        import webbrowser
        webbrowser.open(r["login_url"])
    return 0


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """Register ui on ``sub``."""
    s = sub.add_parser("ui", parents=[common], help="print the web UI's URL with its access token (node run with --http)")
    s.add_argument("--open", action="store_true", help="also open it in the default browser")
    s.set_defaults(fn=cmd_ui)

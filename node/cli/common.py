"""What every verb of the CLI shares: errors and exit codes, output, the RPC client of a
data dir, and the config-override flags of ``run`` and ``config show``."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..config import parse_level_pairs, resolve_config
from ..errors import NodeError
from ..rpc.client import RpcClient
from ..rpc.errors import RpcCallError

EXIT_USER = 2
EXIT_UNAVAILABLE = 3


class CliError(NodeError):
    """A verb failed in a way the user can fix: printed as one line, exit status ``code``."""

    def __init__(self, msg: str, code: int = EXIT_USER):
        super().__init__(msg)
        self.code = code


def default_data_dir() -> str:
    return os.environ.get("LABELMESH_DATA_DIR") or str(Path.home() / ".labelmesh")


def out(args, obj, human: str | None = None) -> None:
    if args.json or human is None:
        print(json.dumps(obj, indent=None if args.json else 2))
    else:
        print(human)


def client(args, timeout: float = 60.0):
    dd = Path(args.data_dir)
    sock = dd / "node.sock"
    try:
        sock = dd / resolve_config(dd)[0].rpc_socket  # honours LABELMESH_RPC_SOCKET like `run`
    except Exception:
        pass
    if not sock.exists():
        raise CliError(f"no node is running with data dir {dd} (no {sock}); start it with `labelmesh run --data-dir {dd}`",
                       EXIT_UNAVAILABLE)
    return RpcClient(sock, timeout=timeout)


def call(args, method: str, params: dict | None = None, timeout: float = 60.0):
    try:
        with client(args, timeout) as c:
            return c.call(method, params or {})
    except RpcCallError as e:
        raise CliError(f"{method}: {e.message} (code {e.code})") from None
    except (ConnectionError, FileNotFoundError, OSError) as e:
        raise CliError(f"cannot reach the node's RPC socket: {e}", EXIT_UNAVAILABLE) from None


def common_parser() -> argparse.ArgumentParser:
    """The options every verb takes: --data-dir and --json."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=default_data_dir(),
                        help="node data directory (default: $LABELMESH_DATA_DIR or ~/.labelmesh)")
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    return common


def override_parser() -> argparse.ArgumentParser:
    """Flags that override config.toml and LABELMESH_* (shared by `run` and `config show`)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("config overrides (flag > LABELMESH_* environment > config.toml > default)")
    g.add_argument("--listen", action="append", metavar="MULTIADDR",
                   help="libp2p listen multiaddr, repeatable (replaces the config's list)")
    g.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                   help="bootstrap peer /ip4/../tcp/../p2p/<id>, repeatable (replaces the config's list)")
    g.add_argument("--log-level", action="append", metavar="LEVEL|COMPONENT=LEVEL",
                   help="debug, info, warning or error; or a component's level, e.g. sync=debug or "
                        "libp2p.pubsub=info (repeatable)")
    g.add_argument("--log-format", metavar="FORMAT", help="text (default) or json")
    g.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus /metrics on a loopback HOST:PORT (port 0 = any free port); \"\" = off")
    g.add_argument("--validator-account", metavar="NAME", help="local account that attests as a validator")
    g.add_argument("--http", metavar="HOST:PORT", dest="http_listen",
                   help="serve the web UI on HOST:PORT, e.g. 127.0.0.1:8080 (`labelmesh ui` prints its URL); \"\" = off")
    g.add_argument("--http-allow-remote", action="store_true",
                   help="let --http bind a non-loopback address (refused otherwise: no TLS, the token is the only lock)")
    return p


def flags_from_args(args) -> dict:
    """Config field -> value given on the command line (None = not given)."""
    level, levels = None, {}
    for v in getattr(args, "log_level", None) or []:
        if "=" in v:
            levels.update(parse_level_pairs(v, "--log-level"))
        else:
            level = v.strip().lower()
    return {"listen": getattr(args, "listen", None), "bootstrap": getattr(args, "bootstrap", None),
            "log_level": level, "log_levels": levels or None, "log_format": getattr(args, "log_format", None),
            "metrics_listen": getattr(args, "metrics_listen", None),
            "validator_account": getattr(args, "validator_account", None),
            "http_listen": getattr(args, "http_listen", None)}


def effective_config(args):
    """(config, sources) for ``args.data_dir``: flags > environment > file > defaults."""
    return resolve_config(Path(args.data_dir), flags_from_args(args))


# ------------------------------------------------------------------ ids, names, times for people

#: the shortest task id prefix accepted (as git: 4 hex digits)
MIN_PREFIX = 4


def resolve_task(args, text: str, wait: float = 0.0) -> str:
    """The full task id that ``text`` (a whole id or any unique prefix of at least
    MIN_PREFIX hex digits) names; CliError if none or several tasks match. With ``wait``
    (seconds), a task this node does not know yet is waited for that long (it may still be
    on its way from the node it was posted on)."""
    import time

    t = (text or "").strip().lower()
    if not t or any(c not in "0123456789abcdef" for c in t) or len(t) > 64:
        raise CliError(f"a task id is hex: {text!r} is not (give the id or a prefix of it; `labelmesh task list`)")
    if len(t) < MIN_PREFIX:
        raise CliError(f"give at least {MIN_PREFIX} hex digits of the task id (got {t!r})")
    end = time.monotonic() + wait
    while True:
        r = call(args, "tasks_list", {"prefix": t, "limit": 10})
        if r["total"] or time.monotonic() >= end:
            break
        time.sleep(0.2)
    if r["total"] == 0:
        raise CliError(f"no task id starts with {t} on this node" + (f" (waited {wait:g} s)" if wait else "")
                       + "; `labelmesh task list` lists them")
    if r["total"] > 1:
        shown = "; ".join(f"{x['task_id'][:16]} {x['title']!r} ({x['status']})" for x in r["tasks"])
        more = f"; and {r['total'] - len(r['tasks'])} more" if r["total"] > len(r["tasks"]) else ""
        raise CliError(f"task id prefix {t} is ambiguous, {r['total']} tasks match: {shown}{more}; "
                       "give more digits")
    return r["tasks"][0]["task_id"]


def account_names(args) -> dict[str, str]:
    """{public key hex: local account name} of the running node's accounts ({} if unknown)."""
    try:
        return {a["public_key"]: a["name"] for a in call(args, "account_list").get("accounts", [])}
    except CliError:
        return {}


def who(names: dict[str, str], public_key: str) -> str:
    """An account for people: its local name if it is one of ours, else its hex key."""
    return names.get(public_key, public_key)


def fmt_duration(seconds: float) -> str:
    s = int(abs(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60:02d} s" if s < 600 else f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def fmt_time(ms: int) -> str:
    """Epoch milliseconds as a local date and time, e.g. '2026-12-03 11:05:00 UTC'."""
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ms / 1000))


def fmt_deadline(deadline_ms: int, now_ms: int | None = None) -> str:
    """'2026-12-03 11:05:00 UTC (in 9 min 59 s)' or '(... ago)': a date and a countdown."""
    import time

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    left = (deadline_ms - now_ms) / 1000
    return f"{fmt_time(deadline_ms)} ({'in ' + fmt_duration(left) if left > 0 else fmt_duration(left) + ' ago'})"


def fmt_share(value: int, one: int = 65536) -> str:
    """A fixed-point share with 3 decimals, rounded down: 0.9999 shows as 0.999, never as 1.000."""
    return f"{value * 1000 // one / 1000:.3f}"

"""`labelmesh` — the command-line interface of a labelmesh node.

Every verb takes ``--data-dir`` (default ``$LABELMESH_DATA_DIR`` or
``~/.labelmesh``) and ``--json`` (machine-readable output). Failures print one
line on stderr and exit non-zero; tracebacks are only for bugs.
"""
from __future__ import annotations

import argparse
import os
import sys

from protocol.errors import LabelmeshError

from . import daemon, ledger, ops, results, sign, tasks, ui
from .common import EXIT_USER, CliError, common_parser, default_data_dir


def build_parser(with_offline: bool = True) -> argparse.ArgumentParser:
    """The whole ``labelmesh`` parser, one verb group at a time (the order of --help)."""
    common = common_parser()
    p = argparse.ArgumentParser(prog="labelmesh", parents=[common],
                                description="labelmesh: a peer-to-peer node for a decentralized data-annotation marketplace.")
    from .. import __version__
    p.add_argument("--version", action="version", version=f"labelmesh {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    daemon.add_parsers(sub, common)  # init, run
    ops.add_parsers(sub, common)  # status, config, account, backup, restore, completion
    tasks.add_parsers(sub, common)  # rpc, task, label, consensus
    sign.add_parsers(sub, common)  # sign (offline)
    if with_offline:  # node.cli.aggregate imports numpy (~11 MB RSS): the daemon (`run`) never needs it
        from . import aggregate
        s = aggregate.add_parser(sub)
        s.set_defaults(fn=aggregate.run_aggregate, json=False, data_dir=default_data_dir())
    results.add_parsers(sub, common)  # rewards, reputation, export, certificate, blob
    ui.add_parsers(sub, common)  # ui (the web UI's URL)
    ledger.add_parsers(sub, common)  # balance, transfer
    add_plugin_verbs(sub, common)  # e.g. `devnet`, from the devtools package
    return p


PLUGIN_GROUP = "labelmesh.cli"
"""Entry-point group of extra CLI verbs (pyproject.toml): each entry point names a function
``register(subparsers, common)`` that adds one verb. This is how ``labelmesh devnet``
reaches ``devtools`` without the runtime package importing it."""


def add_plugin_verbs(sub, common: argparse.ArgumentParser) -> None:
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        ep.load()(sub, common)


def main(argv=None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(with_offline=not (words and words[0] == "run"))
    args = parser.parse_args(argv)
    args.cli_parser = parser  # for `completion`, which describes it
    try:
        code = args.fn(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except CliError as e:
        print(f"labelmesh: {e}", file=sys.stderr)
        return e.code
    except LabelmeshError as e:
        print(f"labelmesh: {e}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`labelmesh ... | head`): no traceback, and no second error when
        # Python flushes stdout at exit; 141 = 128 + SIGPIPE, as a shell reports it
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141

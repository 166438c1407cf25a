"""Operator verbs of the CLI: ``config show``, ``backup``, ``restore`` and
``completion``; ``add_parsers`` also registers ``status`` (node/cli/status.py) and
``account`` (node/cli/accounts.py). See docs/operations.md for the operator's view.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from ..config import CONFIG_FILE, FIELD_DOCS, load_config
from ..rpc.client import RpcClient
from ..rpc.errors import RpcCallError
from . import accounts, status
from .common import EXIT_UNAVAILABLE, CliError, client, effective_config, out, override_parser
from .status import fmt_bytes


def cmd_config_show(args) -> int:
    cfg, sources = effective_config(args)
    values = cfg.as_dict()
    path = str(Path(args.data_dir) / CONFIG_FILE)
    if args.json:
        print(json.dumps({"config_file": path, "values": values, "sources": sources}))
        return 0

    def show(v):
        if isinstance(v, list):
            return ", ".join(v) if v else "[]"
        if isinstance(v, dict):
            return ", ".join(f"{k}={x}" for k, x in v.items()) if v else "{}"
        return v if v != "" else '""'

    w = max(len(show(v)) for v in values.values())
    w = min(max(w, 10), 60)
    lines = [f"# effective configuration of {args.data_dir} (file {path})",
             f"{'field':<18} {'value':<{w}}  source"]
    for k, v in values.items():
        lines.append(f"{k:<18} {show(v):<{w}}  {sources[k]}")
    if args.verbose:
        lines.append("")
        lines += [f"{k:<18} {FIELD_DOCS[k]}" for k in values]
    print("\n".join(lines))
    return 0


def cmd_backup(args) -> int:
    dest = str(Path(args.dest).expanduser().absolute())
    try:
        sock = client(args).path
    except CliError:
        sock = None  # no socket: no node runs here
    r = None
    if sock is not None:
        try:
            with RpcClient(sock, timeout=args.timeout) as rc:
                r = rc.call("backup_create", {"dest": dest})
            how = "hot copy of the running node"
        except RpcCallError as e:
            raise CliError(f"backup: {e.message}") from None
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # a stale socket of a node that died: back up the stopped node
        except (ConnectionError, OSError) as e:
            raise CliError(f"cannot reach the node's RPC socket ({e}); is it running?", EXIT_UNAVAILABLE) from None
    if r is None:
        r = _backup_stopped(Path(args.data_dir), dest)
        how = "copy of the stopped node"
    out(args, r, f"backup written to {r['dest']} ({how}, {r['seconds']} s)\n"
                  f"  {r['messages']} messages, last seq {r['last_seq']}, schema {r['schema_version']}, "
                  f"store {fmt_bytes(r['store_bytes'])}, {len(r['files'])} other files\n"
                  "  it holds the node's keys: keep it as private as the data dir\n"
                  f"  restore with: labelmesh restore {r['dest']} --data-dir NEW_DIR")
    return 0


def _backup_stopped(dd: Path, dest: str) -> dict:
    """Back up a data dir whose node is not running: open its store here (the store's
    lock keeps a node from starting on it meanwhile)."""
    from protocol.genesis import genesis_from_json

    from ..storage.backup import BackupError, create_backup
    from ..storage.errors import StoreError
    from ..storage.store import Store

    if not (dd / "store" / "data.mdb").exists():
        raise CliError(f"{dd} has no store to back up (is --data-dir right?)")
    try:
        cfg = load_config(dd)
        genesis = genesis_from_json((dd / cfg.genesis).read_text())
        with Store(dd / "store") as store:
            return create_backup(SimpleNamespace(store=store, data_dir=dd, genesis=genesis), dest)
    except (StoreError, BackupError) as e:
        raise CliError(f"backup: {e}") from None
    except OSError as e:
        raise CliError(f"backup: {e.strerror or e}") from None


def cmd_restore(args) -> int:
    from ..storage.backup import restore_backup

    r = restore_backup(Path(args.src).expanduser(), Path(args.data_dir).expanduser())
    out(args, r, f"restored {r['messages']} messages of network {r['network_name']} into {r['data_dir']}"
                  + (f" (store migrated from schema {r['migrated_from_schema']})" if r["migrated_from_schema"] is not None else "")
                  + f"\nstart it with: labelmesh run --data-dir {r['data_dir']}\n"
                  "do not run it while the node it was backed up from still runs: same node identity and accounts")
    return 0


def cmd_completion(args) -> int:
    """A bash completion script for the verbs and flags of this parser."""
    def subcommands(p):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                return a.choices
        return {}

    def options(p):
        return sorted({o for a in p._actions for o in a.option_strings if a.help != argparse.SUPPRESS})

    top = args.cli_parser  # the whole parser, handed over by node/cli/main.py
    cases = []
    for name, sp in sorted(subcommands(top).items()):
        words = list(subcommands(sp)) + options(sp)
        cases.append(f'        {name}) words="{" ".join(words)}" ;;')
    script = f"""# bash completion for labelmesh: `eval "$(labelmesh completion bash)"` (or save it in
# ~/.local/share/bash-completion/completions/labelmesh)
_labelmesh() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" verb="" words i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in -*) ;; *) verb="${{COMP_WORDS[i]}}"; break ;; esac
    done
    case "$verb" in
        "") words="{' '.join(sorted(subcommands(top)))} {' '.join(options(top))}" ;;
{chr(10).join(cases)}
        *) words="" ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    [ ${{#COMPREPLY[@]}} -eq 0 ] && COMPREPLY=($(compgen -f -- "$cur"))
}}
complete -F _labelmesh labelmesh
"""
    sys.stdout.write(script)
    return 0


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """Register status, config, account, backup, restore and completion on ``sub``."""
    status.add_parser(sub, common)

    s = sub.add_parser("config", parents=[common], help="show the effective configuration")
    csub = s.add_subparsers(dest="config_cmd", metavar="VERB")
    csub.required = True
    c = csub.add_parser("show", parents=[common, override_parser()],
                        help="effective config (flags > LABELMESH_* > config.toml > default) and where each value came from")
    c.add_argument("-v", "--verbose", action="store_true", help="also explain each field")
    c.set_defaults(fn=cmd_config_show)

    accounts.add_parsers(sub, common)

    s = sub.add_parser("backup", parents=[common], help="consistent hot backup of the node into DEST "
                                                         "(the node may keep running)")
    s.add_argument("dest", help="a new or empty directory outside the data dir")
    s.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the node (default 3600)")
    s.set_defaults(fn=cmd_backup)

    s = sub.add_parser("restore", parents=[common], help="copy a backup into a new data dir (--data-dir) and check it")
    s.add_argument("src", help="a directory made by `labelmesh backup`")
    s.set_defaults(fn=cmd_restore)

    s = sub.add_parser("completion", help="print a shell completion script: eval \"$(labelmesh completion bash)\"")
    s.add_argument("shell", choices=["bash"])
    s.set_defaults(fn=cmd_completion, json=False, data_dir="")

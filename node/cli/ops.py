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
from .progress import Working
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
        return str(v) if v != "" else '""'

    w = max(len(show(v)) for v in values.values())
    w = min(max(w, 10), 60)
    lines = [f"# effective configuration of {args.data_dir} (file {path})",
             f"{'field':<20} {'value':<{w}}  source"]
    for k, v in values.items():
        lines.append(f"{k:<20} {show(v):<{w}}  {sources[k]}")
    if args.verbose:
        lines.append("")
        lines += [f"{k:<20} {FIELD_DOCS[k]}" for k in values]
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
            with RpcClient(sock, timeout=args.timeout) as rc, Working(args, "backing up"):
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


#: options whose value is a directory or a file, completed as such
DIR_OPTIONS = {"--data-dir", "--root"}
FILE_OPTIONS = {"--out", "--gold", "--answers", "--reputation", "--workers-out", "--genesis"}


def _subcommands(p) -> dict:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices
    return {}


def completion_table(top) -> list[tuple[str, list[str], dict[str, list[str]], list[str] | None]]:
    """(verb path, words, {option: its values}, values of the first positional or None) for
    the top parser and each verb and sub-verb: what the completion scripts offer."""
    from ..rpc.methods import METHODS

    rows = []

    def walk(path: str, p) -> None:
        subs = _subcommands(p)
        opts = sorted({o for a in p._actions for o in a.option_strings if a.help != argparse.SUPPRESS})
        values = {}
        for a in p._actions:
            for o in a.option_strings:
                if a.choices:
                    values[o] = [str(c) for c in a.choices]
                elif o in DIR_OPTIONS:
                    values[o] = ["<dir>"]
                elif o in FILE_OPTIONS:
                    values[o] = ["<file>"]
                elif o in ("--account", "--validator-account"):
                    values[o] = ["<account>"]
        positional = sorted(METHODS) if path == "rpc" else None
        for a in p._actions:
            if not a.option_strings and a.choices and not isinstance(a, argparse._SubParsersAction):
                positional = [str(c) for c in a.choices]
        rows.append((path, list(subs) + opts, values, positional))
        for name, sp in subs.items():
            walk(f"{path} {name}".strip(), sp)

    walk("", top)
    return rows


def completion_script(top, shell: str) -> str:
    """A completion script for bash, or for zsh (the same function through zsh's
    bashcompinit): verbs and sub-verbs, their flags, the values of flags with fixed choices
    (and directories / files where a flag takes one, the data dir's account names after
    --account), and RPC method names after `rpc`."""
    table = completion_table(top)
    verb_cases, value_cases, pos_cases = [], [], []
    for path, words, values, positional in table:
        verb_cases.append(f'        "{path}") words="{" ".join(words)}" ;;')
        for opt, vals in sorted(values.items()):
            action = ('COMPREPLY=($(compgen -d -- "$cur"))' if vals == ["<dir>"] else
                      'COMPREPLY=($(compgen -W "$(_labelmesh_accounts)" -- "$cur"))' if vals == ["<account>"] else
                      'COMPREPLY=($(compgen -f -- "$cur"))' if vals == ["<file>"] else
                      f'COMPREPLY=($(compgen -W "{" ".join(vals)}" -- "$cur"))')
            value_cases.append(f'        "{path}|{opt}") {action}; return 0 ;;')
        if positional:
            pos_cases.append(f'        "{path}") words="$words {" ".join(positional)}" ;;')
    subs = sorted({p for p, *_ in table if p})
    head = ("#compdef labelmesh\n# zsh completion for labelmesh: `eval \"$(labelmesh completion zsh)\"` in ~/.zshrc "
            "(after compinit)\nautoload -U +X bashcompinit && bashcompinit\n" if shell == "zsh" else
            "# bash completion for labelmesh: `eval \"$(labelmesh completion bash)\"` (or save it in\n"
            "# ~/.local/share/bash-completion/completions/labelmesh)\n")
    return head + f"""_labelmesh_accounts() {{
    # the local account names: accounts/*.json of --data-dir (else $LABELMESH_DATA_DIR, ~/.labelmesh)
    local dd="${{LABELMESH_DATA_DIR:-$HOME/.labelmesh}}" i f
    for ((i = 1; i < ${{#COMP_WORDS[@]}} - 1; i++)); do
        [ "${{COMP_WORDS[i]}}" = "--data-dir" ] && dd="${{COMP_WORDS[i+1]}}"
    done
    for f in "$dd"/accounts/*.json; do [ -e "$f" ] && f="${{f##*/}}" && echo "${{f%.json}}"; done
}}
_labelmesh() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" path="" npos=0 words="" i w
    [ "$COMP_CWORD" -gt 0 ] && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    # the verb path (e.g. "task post"): leading words that name a verb or sub-verb
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        case "$w" in -*) continue ;; esac
        case "${{path:+$path }}$w" in
{chr(10).join(f'            "{p}") path="{p}"; continue ;;' for p in subs)}
        esac
        case "${{COMP_WORDS[i-1]}}" in -*) ;; *) npos=$((npos + 1)) ;; esac
    done
    case "$path|$prev" in
{chr(10).join(value_cases)}
    esac
    case "$path" in
{chr(10).join(verb_cases)}
        *) words="" ;;
    esac
    if [ "$npos" -eq 0 ]; then
        case "$path" in
{chr(10).join(pos_cases) or '        __none__) ;;'}
        esac
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    [ ${{#COMPREPLY[@]}} -eq 0 ] && COMPREPLY=($(compgen -f -- "$cur"))
    return 0
}}
complete -F _labelmesh labelmesh
"""


def cmd_completion(args) -> int:
    """A completion script for bash or zsh, from this very parser (handed over by main)."""
    sys.stdout.write(completion_script(args.cli_parser, args.shell))
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

    s = sub.add_parser("completion", help="print a shell completion script: eval \"$(labelmesh completion bash)\" "
                                           "(or zsh): verbs, flags, flag values, RPC method names")
    s.add_argument("shell", choices=["bash", "zsh"])
    s.set_defaults(fn=cmd_completion, json=False, data_dir="")

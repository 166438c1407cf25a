"""Operator verbs of the CLI: ``status [--watch]``, ``config show``, ``account ...``,
``backup``, ``restore`` and ``completion``; plus the config-override flags that
``run`` and ``config show`` share (``node/cli.py`` registers them with
``add_parsers``). See docs/operations.md for the operator's view.

Keys are never printed, except by ``account export``, which says so on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from .cli import EXIT_UNAVAILABLE, CliError, _call, _client, _out

EXPORT_FORMAT = 1


# ------------------------------------------------------------------ config overrides

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
    return p


def flags_from_args(args) -> dict:
    """Config field -> value given on the command line (None = not given)."""
    from .config import parse_level_pairs

    level, levels = None, {}
    for v in getattr(args, "log_level", None) or []:
        if "=" in v:
            levels.update(parse_level_pairs(v, "--log-level"))
        else:
            level = v.strip().lower()
    return {"listen": getattr(args, "listen", None), "bootstrap": getattr(args, "bootstrap", None),
            "log_level": level, "log_levels": levels or None, "log_format": getattr(args, "log_format", None),
            "metrics_listen": getattr(args, "metrics_listen", None),
            "validator_account": getattr(args, "validator_account", None)}


def effective_config(args):
    """(config, sources) for ``args.data_dir``: flags > environment > file > defaults."""
    from .config import resolve_config

    return resolve_config(Path(args.data_dir), flags_from_args(args))


def cmd_config_show(args) -> int:
    from .config import CONFIG_FILE, FIELD_DOCS

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


# ------------------------------------------------------------------ accounts

def _keystore(args):
    from .keystore import Keystore

    return Keystore(Path(args.data_dir))


def _account_entry(ks, name: str) -> dict:
    for a in ks.list():
        if a["name"] == name:
            return a
    raise CliError(f"no account named {name!r} in {ks.dir}; see `labelmesh account list`")


def _new_passphrase(args) -> str | None:
    """The passphrase to encrypt a new key with: None lets the keystore use
    $LABELMESH_PASSPHRASE (if set); --encrypt without it asks on the terminal."""
    from .keystore import ENV_PASSPHRASE

    if os.environ.get(ENV_PASSPHRASE) or not getattr(args, "encrypt", False):
        return None
    if not sys.stdin.isatty():
        raise CliError(f"--encrypt needs a passphrase: set {ENV_PASSPHRASE} or run it on a terminal")
    import getpass
    pw = getpass.getpass("passphrase for the new key: ")
    if not pw or pw != getpass.getpass("again: "):
        raise CliError("the passphrases are empty or differ; nothing was created")
    return pw


def _unlock_passphrase(ks, name: str) -> str | None:
    """For an encrypted account without $LABELMESH_PASSPHRASE: ask on the terminal."""
    from .keystore import ENV_PASSPHRASE

    if os.environ.get(ENV_PASSPHRASE) or not ks.is_encrypted(name) or not sys.stdin.isatty():
        return None  # the keystore says what is missing
    import getpass
    return getpass.getpass(f"passphrase of account {name}: ")


def _describe_created(ks, name: str, pk: bytes) -> tuple[dict, str]:
    enc = any(a["name"] == name and a.get("encrypted") for a in ks.list())
    return ({"name": name, "public_key": pk.hex(), "encrypted": enc},
            f"  public key {pk.hex()}\n  key file   {ks.dir / (name + '.json')} (0600"
            + (", encrypted with your passphrase)" if enc else ", not encrypted)"))


def cmd_account_new(args) -> int:
    ks = _keystore(args)
    pk = ks.create(args.name, passphrase=_new_passphrase(args))
    obj, text = _describe_created(ks, args.name, pk)
    _out(args, obj, f"created account {args.name}\n{text}")
    return 0


def cmd_account_list(args) -> int:
    accounts = _keystore(args).list()
    if args.json:
        print(json.dumps({"accounts": accounts}))
        return 0
    if not accounts:
        print(f"no accounts in {Path(args.data_dir) / 'accounts'}; create one with `labelmesh account new NAME`")
        return 0
    w = max(len(a["name"]) for a in accounts)
    print("\n".join([f"{'name':<{w}}  {'public key':<64}  key"] +
                     [f"{a['name']:<{w}}  {a['public_key']}  {'encrypted' if a.get('encrypted') else 'plain'}"
                      for a in accounts]))
    return 0


def cmd_account_show(args) -> int:
    ks = _keystore(args)
    a = _account_entry(ks, args.name)
    out = {"name": a["name"], "public_key": a["public_key"], "key_file": str(ks.dir / f"{a['name']}.json"),
           "encrypted": bool(a.get("encrypted"))}
    extra = _account_standing(args, a["public_key"])
    out.update(extra)
    lines = [f"account     {a['name']}", f"public key  {a['public_key']}",
             f"key file    {out['key_file']} ({'encrypted' if out['encrypted'] else 'not encrypted'}; never printed, "
             "`labelmesh account export` to copy it)"]
    if "rewards" in extra:
        lines.append(f"rewards     {extra['rewards']:,} credits from certified tasks")
    if extra.get("reputation"):
        lines.append("reputation  " + ", ".join(f"{r['domain'] or '*'} {r['weight_f']:.4f}" for r in extra["reputation"]))
    if "node" in extra:
        lines.append(f"node        {extra['node']}")
    _out(args, out, "\n".join(lines))
    return 0


def _account_standing(args, public_key: str) -> dict:
    """Rewards and reputation from the running node, if there is one (else a note)."""
    try:
        rw = _call(args, "rewards_get", {"account": public_key})
        rp = _call(args, "reputation_get", {"account": public_key})
    except CliError as e:
        return {"node": f"not reachable ({e})" if e.code == EXIT_UNAVAILABLE else f"no rewards/reputation: {e}"}
    total = sum(t["reward"] for t in rw.get("totals", []) if t["account"] == public_key)
    return {"rewards": total, "reputation": [{"domain": r["domain"], "weight": r["weight"], "weight_f": r["weight_f"]}
                                             for r in rp.get("reputation", []) if r["account"] == public_key]}


def cmd_account_export(args) -> int:
    ks = _keystore(args)
    _account_entry(ks, args.name)
    sk = ks.signing_key(args.name, passphrase=_unlock_passphrase(ks, args.name))
    doc = {"labelmesh_account": EXPORT_FORMAT, "name": args.name, "public_key": bytes(sk.verify_key).hex(),
           "seed": bytes(sk).hex()}
    text = json.dumps(doc) + "\n"
    print(f"labelmesh: WARNING: this is the secret key of account {args.name!r}. Anyone who holds it can sign "
          "as this account. Keep it offline; import it with `labelmesh account import`.", file=sys.stderr)
    if args.out:
        from .keystore import write_private
        try:
            write_private(Path(args.out), text.encode())
        except FileExistsError:
            raise CliError(f"{args.out} exists; export into a new file") from None
        except OSError as e:
            raise CliError(f"cannot write {args.out}: {e.strerror}") from None
        print(f"exported account {args.name} to {args.out} (mode 0600)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _parse_export(text: str) -> tuple[bytes, str | None]:
    """(seed, public key hex or None) from an export document or a bare 64-hex seed."""
    text = text.strip()
    if text.startswith("{"):
        try:
            d = json.loads(text)
            if d.get("labelmesh_account") != EXPORT_FORMAT:
                raise ValueError("not a labelmesh account export")
            seed, pk = bytes.fromhex(d["seed"]), d.get("public_key")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CliError(f"cannot read the account export: {e}") from None
    else:
        try:
            seed, pk = bytes.fromhex(text), None
        except ValueError:
            raise CliError("expected an account export (JSON from `labelmesh account export`) or a 64-hex-digit seed") from None
    if len(seed) != 32:
        raise CliError(f"a seed is 32 bytes (64 hex digits), got {len(seed)} bytes")
    return seed, pk


def cmd_account_import(args) -> int:
    import nacl.signing

    src = args.file or "-"
    passphrase = _new_passphrase(args)
    try:
        text = sys.stdin.read() if src == "-" else Path(src).read_text()
    except OSError as e:
        raise CliError(f"cannot read {'stdin' if src == '-' else src}: {e.strerror or e}") from None
    seed, pk_claimed = _parse_export(text)
    pk = bytes(nacl.signing.SigningKey(seed).verify_key)
    if pk_claimed is not None and pk_claimed != pk.hex():
        raise CliError("the export's public_key does not match its seed; the file is damaged")
    ks = _keystore(args)
    for a in ks.list():
        if a["public_key"] == pk.hex():
            raise CliError(f"this key is already here as account {a['name']!r}")
    ks.create(args.name, seed=seed, passphrase=passphrase)
    obj, text = _describe_created(ks, args.name, pk)
    _out(args, obj, f"imported account {args.name}\n{text}")
    return 0


# ------------------------------------------------------------------ status

def _fmt_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def gather_status(args) -> dict:
    """Everything `labelmesh status` shows, from one RPC connection; rewards and
    reputation only if the node has those methods (older nodes do not)."""
    from .rpc import RpcCallError

    try:
        with _client(args) as c:
            info = c.call("node_info")
            accounts = c.call("account_list").get("accounts", [])
            methods = c.call("rpc_methods").get("methods", {})
            mine = {a["public_key"] for a in accounts}
            rewards, reputation = {}, {}
            if "rewards_get" in methods:
                for t in c.call("rewards_get").get("totals", []):
                    if t["account"] in mine:
                        rewards[t["account"]] = t["reward"]
            if "reputation_get" in methods:
                for r in c.call("reputation_get").get("reputation", []):
                    if r["account"] in mine:
                        reputation.setdefault(r["account"], []).append(
                            {"domain": r["domain"], "weight": r["weight"], "weight_f": r["weight_f"]})
    except RpcCallError as e:
        raise CliError(f"status: {e.message} (code {e.code})") from None
    except (ConnectionError, OSError) as e:
        raise CliError(f"cannot reach the node's RPC socket: {e}", EXIT_UNAVAILABLE) from None
    rows = [{"name": a["name"], "public_key": a["public_key"],
             "reward": rewards.get(a["public_key"], 0) if "rewards_get" in methods else None,
             "reputation": reputation.get(a["public_key"], []) if "reputation_get" in methods else None}
            for a in accounts]
    return {**info, "accounts": rows}


def render_status(s: dict) -> str:
    m = s["messages"]
    kinds = ", ".join(f"{k} {v}" for k, v in m.get("by_kind", {}).items())
    lines = [f"node      {s['peer_id'] or '(no p2p)'}  v{s.get('version', '?')}  pid {s['pid']}  "
             f"up {_fmt_age(s['uptime_s'])}",
             f"network   {s['network_name']}  {s['network_id'][:16]}",
             f"peers     {s['peer_count']}" + (f"   listen {s['listen_addrs'][0]}" if s.get("listen_addrs") else "")]
    sy = s.get("sync") or {}
    if sy.get("peers"):
        age = (f"{(s['time_ms'] - sy['last_sync_ms']) / 1000:.1f} s ago" if sy.get("last_sync_ms") else "not yet")
        state = "in sync" if sy.get("last_sync_ms") and not sy.get("lag_tasks") else "catching up"
        lines.append(f"sync      {state}: {sy['synced_peers']}/{sy['peers']} peers synced, last {age}, "
                     f"lag {sy['lag_tasks']} tasks, fetched {sy['fetched']}, served {sy['served']}")
    else:
        lines.append("sync      no peers to sync with")
    ts = s.get("tasks_by_state")
    if ts:
        lines.append(f"tasks     open {ts['open']}  closed {ts['closed']}  certified {ts['certified']}  "
                     f"(total {s['tasks']})")
    else:
        lines.append(f"tasks     {s['tasks']}")
    lines.append(f"messages  stored {m['stored']}" + (f" ({kinds})" if kinds else "") +
                 f"   accepted {m['accepted']}  rejected {m['rejected']}  ignored {m['ignored']}  "
                 f"duplicates {m['duplicates']}")
    st = s.get("store")
    if st:
        lines.append(f"store     schema {st['schema_version']}, {_fmt_bytes(st['file_bytes'])} on disk, "
                     f"{_fmt_bytes(st['used_bytes'])} used")
    bl = s.get("blobs")
    if bl:
        lines.append(f"blobs     stored {bl['stored']} ({_fmt_bytes(bl['stored_bytes'])})  wanted {bl['wanted']}  "
                     f"fetched {bl['fetched']}  failed {bl['failed']}")
    lines.append(f"metrics   {s.get('metrics_url') or 'off (set metrics_listen)'}")
    accts = s.get("accounts") or []
    if accts:
        w = max(8, max(len(a["name"]) for a in accts))
        lines.append(f"accounts  {'name':<{w}}  {'public key':<19}  {'reward':>12}  reputation (weight by domain)")
        for a in accts:
            rew = "-" if a["reward"] is None else f"{a['reward']:,}"
            if a["reputation"] is None:
                rep = "-"
            else:
                rep = ", ".join(f"{r['domain'] or '*'} {r['weight_f']:.4f}" for r in a["reputation"]) or "none yet"
            lines.append(f"          {a['name']:<{w}}  {a['public_key'][:16]}…  {rew:>12}  {rep}")
    return "\n".join(lines)


CLEAR = "\x1b[H\x1b[2J"


def cmd_status(args) -> int:
    if args.watch is None:
        s = gather_status(args)
        _out(args, s, render_status(s))
        return 0
    interval = args.watch
    if not interval > 0:
        raise CliError("--watch takes a refresh interval in seconds > 0, e.g. --watch 2")
    n = 0
    try:
        while args.iterations is None or n < args.iterations:
            n += 1
            try:
                s = gather_status(args)
                frame, obj = render_status(s), s
            except CliError as e:  # the node may be restarting: keep watching
                frame, obj = f"node not reachable: {e}", {"error": str(e)}
            if args.json:
                print(json.dumps(obj), flush=True)
            else:
                sys.stdout.write(f"{CLEAR}labelmesh status  {time.strftime('%H:%M:%S')}  "
                                 f"(every {interval:g} s, Ctrl-C to stop)\n\n{frame}\n")
                sys.stdout.flush()
            if args.iterations is not None and n >= args.iterations:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        print()
    return 0


# ------------------------------------------------------------------ backup / restore

def cmd_backup(args) -> int:
    from .rpc import RpcCallError, RpcClient

    dest = str(Path(args.dest).expanduser().absolute())
    try:
        sock = _client(args).path
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
    _out(args, r, f"backup written to {r['dest']} ({how}, {r['seconds']} s)\n"
                  f"  {r['messages']} messages, last seq {r['last_seq']}, schema {r['schema_version']}, "
                  f"store {_fmt_bytes(r['store_bytes'])}, {len(r['files'])} other files\n"
                  "  it holds the node's keys: keep it as private as the data dir\n"
                  f"  restore with: labelmesh restore {r['dest']} --data-dir NEW_DIR")
    return 0


def _backup_stopped(dd: Path, dest: str) -> dict:
    """Back up a data dir whose node is not running: open its store here (the store's
    lock keeps a node from starting on it meanwhile)."""
    from protocol.genesis import genesis_from_json
    from .backup import BackupError, create_backup
    from .config import load_config
    from .store import Store, StoreError

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
    from .backup import restore_backup

    r = restore_backup(Path(args.src).expanduser(), Path(args.data_dir).expanduser())
    _out(args, r, f"restored {r['messages']} messages of network {r['network_name']} into {r['data_dir']}"
                  + (f" (store migrated from schema {r['migrated_from_schema']})" if r["migrated_from_schema"] is not None else "")
                  + f"\nstart it with: labelmesh run --data-dir {r['data_dir']}\n"
                  "do not run it while the node it was backed up from still runs: same node identity and accounts")
    return 0


# ------------------------------------------------------------------ completion

def cmd_completion(args) -> int:
    """A bash completion script for the verbs and flags of this parser."""
    from .cli import build_parser

    def subcommands(p):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                return a.choices
        return {}

    def options(p):
        return sorted({o for a in p._actions for o in a.option_strings if a.help != argparse.SUPPRESS})

    top = build_parser()
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


# ------------------------------------------------------------------ parser

def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """Register status, config, account, backup, restore and completion on ``sub``."""
    s = sub.add_parser("status", parents=[common],
                       help="identity, network, peers, sync, tasks, accounts of a running node (--watch refreshes)")
    s.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                   help="refresh every SECONDS (default 2) until Ctrl-C")
    s.add_argument("--iterations", type=int, help=argparse.SUPPRESS)  # bounded --watch, for tests
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("config", parents=[common], help="show the effective configuration")
    csub = s.add_subparsers(dest="config_cmd", metavar="VERB")
    csub.required = True
    c = csub.add_parser("show", parents=[common, override_parser()],
                        help="effective config (flags > LABELMESH_* > config.toml > default) and where each value came from")
    c.add_argument("-v", "--verbose", action="store_true", help="also explain each field")
    c.set_defaults(fn=cmd_config_show)

    s = sub.add_parser("account", parents=[common], help="the node's local accounts (keys are never printed "
                                                          "except by `export`)")
    asub = s.add_subparsers(dest="account_cmd", metavar="VERB")
    asub.required = True
    enc_help = ("encrypt the key with a passphrase asked on the terminal (automatic when "
                "$LABELMESH_PASSPHRASE is set, which is then the passphrase)")
    a = asub.add_parser("new", parents=[common], help="create an account with a fresh random key")
    a.add_argument("name", help="account name: 1-64 letters, digits, '_', '.', '-'")
    a.add_argument("--encrypt", action="store_true", help=enc_help)
    a.set_defaults(fn=cmd_account_new)
    a = asub.add_parser("list", parents=[common], help="names and public keys")
    a.set_defaults(fn=cmd_account_list)
    a = asub.add_parser("show", parents=[common], help="one account: public key, key file, and (if the node runs) "
                                                        "rewards and reputation")
    a.add_argument("name")
    a.set_defaults(fn=cmd_account_show)
    a = asub.add_parser("export", parents=[common], help="print (or --out FILE) the account's SECRET key, for "
                                                          "`account import` elsewhere")
    a.add_argument("name")
    a.add_argument("--out", metavar="FILE", help="write to a new file (mode 0600) instead of stdout")
    a.set_defaults(fn=cmd_account_export)
    a = asub.add_parser("import", parents=[common], help="add an account from an export (or a 64-hex seed)")
    a.add_argument("name", help="name of the account here")
    a.add_argument("file", nargs="?", help="the export file (default: read stdin)")
    a.add_argument("--encrypt", action="store_true", help=enc_help)
    a.set_defaults(fn=cmd_account_import)

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

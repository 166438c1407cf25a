"""`labelmesh` — the command-line interface of a labelmesh node.

Every verb takes ``--data-dir`` (default ``$LABELMESH_DATA_DIR`` or
``~/.labelmesh``) and ``--json`` (machine-readable output). Failures print one
line on stderr and exit non-zero; tracebacks are only for bugs.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
from pathlib import Path

EXIT_USER = 2
EXIT_UNAVAILABLE = 3


class CliError(Exception):
    def __init__(self, msg: str, code: int = EXIT_USER):
        super().__init__(msg)
        self.code = code


def default_data_dir() -> str:
    return os.environ.get("LABELMESH_DATA_DIR") or str(Path.home() / ".labelmesh")


def _out(args, obj, human: str | None = None) -> None:
    if args.json or human is None:
        print(json.dumps(obj, indent=None if args.json else 2))
    else:
        print(human)


def _client(args):
    from .config import resolve_config
    from .rpc import RpcClient

    dd = Path(args.data_dir)
    sock = dd / "node.sock"
    try:
        sock = dd / resolve_config(dd)[0].rpc_socket  # honours LABELMESH_RPC_SOCKET like `run`
    except Exception:
        pass
    if not sock.exists():
        raise CliError(f"no node is running with data dir {dd} (no {sock}); start it with `labelmesh run --data-dir {dd}`",
                       EXIT_UNAVAILABLE)
    return RpcClient(sock)


def _call(args, method: str, params: dict | None = None):
    from .rpc import RpcCallError

    try:
        with _client(args) as c:
            return c.call(method, params or {})
    except RpcCallError as e:
        raise CliError(f"{method}: {e.message} (code {e.code})") from None
    except (ConnectionError, FileNotFoundError, OSError) as e:
        raise CliError(f"cannot reach the node's RPC socket: {e}", EXIT_UNAVAILABLE) from None


# ------------------------------------------------------------------ init / run

def cmd_init(args) -> int:
    import nacl.signing

    from protocol.genesis import genesis_from_json, make_genesis
    from .config import CONFIG_FILE, NodeConfig
    from .keystore import Keystore, write_private

    dd = Path(args.data_dir)
    if (dd / CONFIG_FILE).exists() and not args.force:
        raise CliError(f"{dd} is already initialised (use --force to overwrite config and genesis; keys are kept)")
    dd.mkdir(parents=True, exist_ok=True)
    os.chmod(dd, 0o700)
    if not (dd / "node.key").exists():
        write_private(dd / "node.key", os.urandom(32).hex().encode())
    ks = Keystore(dd)
    names = {a["name"] for a in ks.list()}
    if args.account not in names:
        ks.create(args.account)
    pk = ks.public_key(args.account)
    if args.genesis:
        try:
            text = Path(args.genesis).read_text()
        except OSError as e:
            raise CliError(f"cannot read genesis file: {e}") from None
        g = genesis_from_json(text)
    else:
        import time
        g = make_genesis(args.network_name, int(time.time() * 1000), [(pk, 1)], [(pk, "", 1 << 16)], [(pk, 10**9)])
    (dd / "genesis.json").write_text(g.to_json())
    cfg = NodeConfig(listen=args.listen or ["/ip4/127.0.0.1/tcp/0"], bootstrap=args.bootstrap or [],
                     validator_account=args.account if g.validator_weight(pk) > 0 else "").validate()
    (dd / CONFIG_FILE).write_text(cfg.to_toml())
    _out(args, {"data_dir": str(dd), "network_id": g.network_id.hex(), "account": args.account,
                "public_key": pk.hex()},
         f"initialised {dd}\n  network   {g.name} {g.network_id.hex()[:16]}\n  account   {args.account} {pk.hex()}\n"
         f"start it with: labelmesh run --data-dir {dd}")
    return 0


def build_node(data_dir: Path, *, listen_override=None, cfg=None):
    """(config, Node) for a data dir; ``cfg`` is the effective config (default: the file's)."""
    from protocol.genesis import genesis_from_json
    from .config import load_config
    from .daemon import Node
    from .keystore import Keystore
    from .store import StoreError

    cfg = cfg or load_config(data_dir)
    gpath = (data_dir / cfg.genesis)
    try:
        genesis = genesis_from_json(gpath.read_text())
    except OSError as e:
        raise CliError(f"cannot read genesis {gpath}: {e}") from None
    try:
        seed = bytes.fromhex((data_dir / "node.key").read_text().strip())
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read node key {data_dir / 'node.key'}: {e}") from None

    def p2p_factory(node):
        from .p2p import GossipOutcome, P2PConfig, P2PNode, p2p_tuning_from_env

        async def validator(topic, data, peer, origin=None):
            outcome = await node.gossip_validate(topic, data, peer, origin)
            return GossipOutcome[outcome.name]

        async def on_peer_connected(peer):
            if node.sync is not None:
                node.sync.wake()  # catch up with a new peer at once

        return P2PNode(P2PConfig(seed=seed, listen=listen_override or cfg.listen, bootstrap=cfg.bootstrap,
                                 max_message_bytes=genesis.params.max_message_bytes,
                                 **p2p_tuning_from_env(os.environ)),
                       validator=validator, on_peer_connected=on_peer_connected)

    try:
        from .ratelimit import RateLimitConfig
        from .verifier import auto_processes
        return cfg, Node(data_dir, genesis, p2p_factory=p2p_factory, keystore=Keystore(data_dir),
                         rpc_socket=data_dir / cfg.rpc_socket, validator_account=cfg.validator_account,
                         metrics_listen=cfg.metrics_listen, rate_limits=RateLimitConfig.from_env(os.environ),
                         verify_processes=auto_processes())
    except StoreError as e:  # e.g. a store of a newer labelmesh, or already open
        raise CliError(str(e)) from None


def cmd_run(args) -> int:
    import trio

    from .logs import setup_logging
    from .opscli import effective_config

    dd = Path(args.data_dir)
    cfg, _ = effective_config(args)  # flags > LABELMESH_* > config.toml > defaults
    setup_logging(cfg.log_level, cfg.log_format, levels=cfg.log_levels)
    _, node = build_node(dd, cfg=cfg)

    async def main():
        async with trio.open_nursery() as nursery:
            async def on_signals():
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
                    async for s in sigs:
                        import logging
                        logging.getLogger("labelmesh.node").info("signal %s: shutting down", signal.Signals(s).name)
                        nursery.cancel_scope.cancel()
                        return
            nursery.start_soon(on_signals)
            await nursery.start(node.run)
            if node.p2p is not None:
                print(json.dumps({"event": "ready", "peer_id": node.peer_id, "listen": node.p2p.listen_addrs(),
                                  "pid": os.getpid(), "metrics": node.metrics.url}), flush=True)

    try:
        trio.run(main)
    except BaseExceptionGroup as eg:  # a service failed to start: say which, in one line, if it is not a bug
        from protocol.errors import LabelmeshError
        from .store import StoreError
        user, rest = eg.split((LabelmeshError, StoreError))
        if rest is None and user is not None:
            leaf = user
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            raise CliError(str(leaf)) from None
        raise
    return 0


# ------------------------------------------------------------------ queries

def cmd_rpc(args) -> int:
    params = {}
    if args.params:
        try:
            params = json.loads(args.params)
        except json.JSONDecodeError as e:
            raise CliError(f"PARAMS must be a JSON object: {e}") from None
        if not isinstance(params, dict):
            raise CliError("PARAMS must be a JSON object, e.g. '{\"task_id\": \"...\"}'")
    print(json.dumps(_call(args, args.method, params), indent=2))
    return 0


def _read_items(path: str) -> list:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e}") from None
    items = []
    if p.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or "text" not in rows[0]:
            raise CliError(f"{path}: a CSV item file needs a 'text' column")
        items = [{"text": r["text"]} for r in rows]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                v = json.loads(line)
            except json.JSONDecodeError as e:
                raise CliError(f"{path}:{n}: not JSON ({e}); use one JSON object or string per line") from None
            items.append(v if isinstance(v, (dict, str)) else str(v))
    if not items:
        raise CliError(f"{path}: no items")
    return items


def _read_gold(path: str) -> list:
    try:
        rows = list(csv.DictReader(Path(path).read_text().splitlines()))
    except OSError as e:
        raise CliError(f"cannot read {path}: {e}") from None
    if not rows or not {"item", "label"} <= set(rows[0]):
        raise CliError(f"{path}: gold CSV needs the header item,label")
    out = []
    for n, r in enumerate(rows, 2):
        try:
            out.append([int(r["item"]), r["label"]])
        except ValueError:
            raise CliError(f"{path}:{n}: item must be an integer index") from None
    return out


def _resolve_files(items: list, items_file: str) -> list:
    """{"file": relative path} items are relative to the items file; the node needs absolute paths."""
    base = Path(items_file).resolve().parent
    out = []
    for it in items:
        if isinstance(it, dict) and isinstance(it.get("file"), str):
            it = {**it, "file": str((base / it["file"]).resolve())}
        out.append(it)
    return out


def cmd_blob_get(args) -> int:
    import hashlib

    from .rpc import RpcCallError

    if args.sha256:
        params = {"sha256": args.sha256}
    elif args.task_id is not None and args.item is not None:
        params = {"task_id": args.task_id, "item": args.item}
    else:
        raise CliError("give TASK_ID ITEM, or --sha256 HEX")
    try:
        with _client(args) as c:
            c.timeout = max(c.timeout, 600.0)  # fetching up to max_blob_bytes from peers
            r = c.call("blob_get", params)
            h = hashlib.sha256()
            tmp = Path(args.out + ".part")
            got = 0
            with open(tmp, "wb") as f:
                while got < r["size"]:
                    data = bytes.fromhex(c.call("blob_read", {"sha256": r["sha256"], "offset": got})["data"])
                    if not data:
                        raise CliError("the node returned a short blob; retry")
                    h.update(data)
                    f.write(data)
                    got += len(data)
            if h.hexdigest() != r["sha256"]:
                tmp.unlink(missing_ok=True)
                raise CliError("the bytes read back do not match the blob's sha256; retry")
            os.replace(tmp, args.out)
    except RpcCallError as e:
        raise CliError(f"blob_get: {e.message} (code {e.code})", EXIT_UNAVAILABLE if e.code == -32004 else EXIT_USER) from None
    except OSError as e:
        raise CliError(f"cannot write {args.out}: {e}") from None
    _out(args, {**r, "out": args.out},
         f"blob {r['sha256'][:16]}… ({r['size']} bytes, {r['media_type'] or 'unknown type'}) written to {args.out}"
         + (f"; fetched from {r['peer_id']}" if r["source"] == "peer" else ""))
    return 0


def cmd_task_post(args) -> int:
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    params = {"account": args.account, "title": args.title or Path(args.file).stem, "labels": labels,
              "items": _resolve_files(_read_items(args.file), args.file), "duration_s": args.duration, "bounty": args.bounty,
              "redundancy": args.redundancy, "domain": args.domain}
    if args.gold:
        params["gold"] = _read_gold(args.gold)
    r = _call(args, "task_post", params)
    _out(args, r, f"task {r['task_id']} posted ({r.get('items')} items, deadline {r.get('deadline_ms')})")
    return 0


def cmd_label(args) -> int:
    if len(args.pairs) % 2:
        raise CliError("give ITEM LABEL pairs, e.g. `labelmesh label TASK 0 cat 1 dog`")
    pairs = []
    for i in range(0, len(args.pairs), 2):
        try:
            item = int(args.pairs[i])
        except ValueError:
            raise CliError(f"item must be an integer index, got {args.pairs[i]!r}") from None
        lab = args.pairs[i + 1]
        pairs.append([item, int(lab) if lab.isdigit() else lab])
    r = _call(args, "annotations_submit", {"account": args.account, "task_id": args.task_id, "labels": pairs})
    _out(args, r, f"batch {r['batch_id']} {r['status']} ({r['labels']} labels)")
    return 0


def cmd_consensus(args) -> int:
    r = _call(args, "consensus_get", {"task_id": args.task_id})
    lines = [f"task {r['task_id']}  {r['status']}  ({r['task_status']})",
             f"set_root    {r['set_root']}", f"result_root {r['result_root']}",
             f"{r['batches']} batches, {r['labels']} labels, agreement alpha {r['alpha_f']}",
             "item  label            confidence  votes"]
    for it in r.get("items", [])[: args.limit]:
        lines.append(f"{it['item']:>4}  {str(it['label']):<16} {it['confidence_f']:>10.3f}  {it['votes']:>5}")
    _out(args, r, "\n".join(lines))
    return 0


def cmd_rewards(args) -> int:
    params = {}
    if args.account:
        params["account"] = args.account
    if args.task:
        params["task_id"] = args.task
    r = _call(args, "rewards_get", params)
    lines = ["account                                                            reward (credits)"]
    lines += [f"{t['account']}  {t['reward']:>14,}" for t in r["totals"]]
    lines.append(f"refunded to requesters: {r['refunded']:,}; tasks not yet certified: {r['pending_tasks']}")
    _out(args, r, "\n".join(lines))
    return 0


def cmd_reputation(args) -> int:
    params = {}
    if args.account:
        params["account"] = args.account
    if args.domain is not None:
        params["domain"] = args.domain
    r = _call(args, "reputation_get", params)
    lines = [f"{'account':<64}  {'domain':<12} {'weight':>8} {'labels':>7}"]
    lines += [f"{x['account']}  {x['domain'] or '*':<12} {x['weight_f']:>8.4f} {x['labels']:>7}" for x in r["reputation"]]
    lines.append(f"from {r['certified_tasks']} certified tasks; a fresh account weighs {r['fresh_weight'] / 65536:.4f}")
    _out(args, r, "\n".join(lines))
    return 0


def cmd_export(args) -> int:
    r = _call(args, "task_export", {"task_id": args.task_id, "format": args.format})
    if args.out:
        try:
            Path(args.out).write_text(r["content"])
        except OSError as e:
            raise CliError(f"cannot write {args.out}: {e}") from None
        _out(args, {k: v for k, v in r.items() if k != "content"},
             f"wrote {r['items']} items ({r['status']}) as {r['format']} to {args.out}")
    else:
        sys.stdout.write(r["content"])
    return 0


def cmd_certificate(args) -> int:
    r = _call(args, "certificate_get", {"task_id": args.task_id})
    if r["certified"]:
        c = r["certificate"]
        human = (f"task {r['task_id']} certified in round {c['round']}\n"
                 f"set_root    {c['set_root']}\nresult_root {c['result_root']}\n"
                 f"signers     {len(c['signers'])} validators, weight {c['weight']}/{c['total_weight']}")
    else:
        f = r["finality"]
        human = f"task {r['task_id']} not certified yet (round {f['round']}, {len(f['polkas'])} polkas seen)"
    _out(args, r, human)
    return 0


# ------------------------------------------------------------------ parser

def build_parser(with_offline: bool = True) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=default_data_dir(),
                        help="node data directory (default: $LABELMESH_DATA_DIR or ~/.labelmesh)")
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")

    p = argparse.ArgumentParser(prog="labelmesh", parents=[common],
                                description="labelmesh: a peer-to-peer node for a decentralized data-annotation marketplace.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("init", parents=[common], help="create a data dir: node key, account, genesis, config")
    s.add_argument("--genesis", help="genesis JSON file of the network to join (default: a new one-node network)")
    s.add_argument("--network-name", default="localnet", help="name of the new network when --genesis is not given")
    s.add_argument("--account", default="default", help="name of the local account to create (default: default)")
    s.add_argument("--listen", action="append", help="libp2p listen multiaddr (repeatable; default /ip4/127.0.0.1/tcp/0)")
    s.add_argument("--bootstrap", action="append", help="bootstrap peer multiaddr with /p2p/<id> (repeatable)")
    s.add_argument("--force", action="store_true", help="overwrite an existing config and genesis")
    s.set_defaults(fn=cmd_init)

    from . import opscli
    s = sub.add_parser("run", parents=[common, opscli.override_parser()],
                       help="run the node daemon (SIGINT/SIGTERM stop it cleanly)")
    s.set_defaults(fn=cmd_run)

    opscli.add_parsers(sub, common)  # status, config, account, backup, restore, completion

    s = sub.add_parser("rpc", parents=[common], help="call a JSON-RPC method and print its JSON result")
    s.add_argument("method", help="method name (rpc_methods lists them)")
    s.add_argument("params", nargs="?", help="params as a JSON object")
    s.set_defaults(fn=cmd_rpc)

    s = sub.add_parser("task", parents=[common], help="task verbs")
    tsub = s.add_subparsers(dest="task_cmd", metavar="VERB")
    tsub.required = True
    t = tsub.add_parser("post", parents=[common], help="post a task whose items come from a JSON Lines or CSV file")
    t.add_argument("file", help="items: .jsonl (one string, {\"text\": ...} or {\"file\": \"img.png\"} per line; "
                   "file paths are relative to the .jsonl and become blobs) or .csv with a 'text' column")
    t.add_argument("--labels", required=True, help="comma-separated label names, e.g. pos,neg")
    t.add_argument("--title", help="task title (default: the file name)")
    t.add_argument("--domain", default="", help="label domain for reputation (e.g. sentiment)")
    t.add_argument("--duration", type=float, default=3600, help="seconds until the deadline (default 3600)")
    t.add_argument("--bounty", type=int, default=0, help="bounty in credits (default 0)")
    t.add_argument("--redundancy", type=int, default=3, help="annotations wanted per item (default 3)")
    t.add_argument("--account", default="default", help="local account that signs (default: default)")
    t.add_argument("--gold", help="hidden gold answers, CSV item,label: committed now, revealed after the deadline")
    t.set_defaults(fn=cmd_task_post)

    s = sub.add_parser("label", parents=[common], help="submit labels: labelmesh label TASK ITEM LABEL [ITEM LABEL ...]")
    s.add_argument("task_id")
    s.add_argument("pairs", nargs="+", metavar="ITEM LABEL")
    s.add_argument("--account", default="default", help="local account that signs (default: default)")
    s.set_defaults(fn=cmd_label)

    s = sub.add_parser("consensus", parents=[common], help="consensus labels, roots and agreement of a task")
    s.add_argument("task_id")
    s.add_argument("--limit", type=int, default=20, help="items to show in human output (default 20)")
    s.set_defaults(fn=cmd_consensus)

    if with_offline:  # node.offline imports numpy (~11 MB RSS): the daemon (`run`) never needs it
        from . import offline
        s = offline.add_parser(sub)
        s.set_defaults(fn=offline.run_aggregate, json=False, data_dir=default_data_dir())

    s = sub.add_parser("rewards", parents=[common], help="rewards earned in certified tasks")
    s.add_argument("--account", help="only this account (local name or hex public key)")
    s.add_argument("--task", help="only this task id")
    s.set_defaults(fn=cmd_rewards)

    s = sub.add_parser("reputation", parents=[common], help="reputation per account and domain")
    s.add_argument("--account", help="only this account (local name or hex public key)")
    s.add_argument("--domain", help="only this domain")
    s.set_defaults(fn=cmd_reputation)

    s = sub.add_parser("export", parents=[common], help="export a task's consensus dataset")
    s.add_argument("task_id")
    s.add_argument("--format", choices=["jsonl", "csv", "labelstudio"], default="jsonl")
    s.add_argument("--out", help="write to this file (default: stdout)")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("certificate", parents=[common], help="a task's finality certificate")
    s.add_argument("task_id")
    s.set_defaults(fn=cmd_certificate)

    s = sub.add_parser("blob", parents=[common], help="blob verbs (item payloads stored by content hash)")
    bsub = s.add_subparsers(dest="blob_cmd", metavar="VERB")
    bsub.required = True
    b = bsub.add_parser("get", parents=[common], help="fetch a task item's blob (from peers if needed) into a file")
    b.add_argument("task_id", nargs="?", help="task id")
    b.add_argument("item", nargs="?", type=int, help="item index in the task")
    b.add_argument("--sha256", help="fetch by content hash instead of TASK_ID ITEM")
    b.add_argument("--out", required=True, help="file to write (replaced atomically once verified)")
    b.set_defaults(fn=cmd_blob_get)

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
    from protocol.errors import LabelmeshError

    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(with_offline=not (words and words[0] == "run"))
    args = parser.parse_args(argv)
    try:
        return args.fn(args) or 0
    except CliError as e:
        print(f"labelmesh: {e}", file=sys.stderr)
        return e.code
    except LabelmeshError as e:
        print(f"labelmesh: {e}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run the canonical module's main: helper modules import ``node.cli`` and raise its
    # CliError, which would be a different class in this ``__main__`` copy.
    from node.cli import main as _main

    sys.exit(_main())

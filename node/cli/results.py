"""Verbs that read results from a running node: ``rewards``, ``reputation``, ``export``,
``certificate`` and ``blob get``."""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from protocol.reputation import ONE

from ..rpc.errors import UNAVAILABLE, RpcCallError
from .common import EXIT_UNAVAILABLE, EXIT_USER, CliError, account_names, call, client, out, resolve_task, who
from .progress import Working


def cmd_rewards(args) -> int:
    params = {}
    if args.account:
        params["account"] = args.account
    if args.task:
        params["task_id"] = resolve_task(args, args.task)
    r = call(args, "rewards_get", params)
    if args.json:
        out(args, r)
        return 0
    names = account_names(args)
    lines = [f"{'account':<64}  {'reward (credits)':>16}"]
    lines += [f"{who(names, t['account']):<64}  {t['reward']:>16,}" for t in r["totals"]]
    if not r["totals"]:
        lines.append("(no rewards yet)")
    lines.append(f"refunded to requesters: {r['refunded']:,}; tasks not yet certified: {r['pending_tasks']}")
    out(args, r, "\n".join(lines))
    return 0


def cmd_reputation(args) -> int:
    params = {}
    if args.account:
        params["account"] = args.account
    if args.domain is not None:
        params["domain"] = args.domain
    r = call(args, "reputation_get", params)
    if args.json:
        out(args, r)
        return 0
    names = account_names(args)
    lines = [f"{'account':<64}  {'domain':<12} {'weight':>8} {'labels':>7}"]
    lines += [f"{who(names, x['account']):<64}  {x['domain'] or '*':<12} {x['weight_f']:>8.4f} {x['labels']:>7}"
              for x in r["reputation"]]
    lines.append(f"from {r['certified_tasks']} certified tasks; a fresh account weighs {r['fresh_weight'] / ONE:.4f}")
    out(args, r, "\n".join(lines))
    return 0


def labeling_config_path(out: str) -> Path:
    """Where `export --format labelstudio --out FILE` writes the labeling config: next to FILE."""
    p = Path(out)
    return p.with_name(p.stem + ".label_config.xml")


def cmd_export(args) -> int:
    tid = resolve_task(args, args.task_id)
    params = {"task_id": tid, "format": args.format}
    if args.blob_url is not None:
        params["blob_url"] = args.blob_url
    with Working(args, "exporting"):
        r = call(args, "task_export", params)
    if not args.out:
        sys.stdout.write(r["content"])
        return 0
    written = [args.out]
    try:
        Path(args.out).write_text(r["content"])
        if r.get("labeling_config"):
            cfg = labeling_config_path(args.out)
            cfg.write_text(r["labeling_config"])
            written.append(str(cfg))
    except OSError as e:
        raise CliError(f"cannot write {e.filename or args.out}: {e.strerror or e}") from None
    meta = {k: v for k, v in r.items() if k not in ("content", "labeling_config")}
    human = f"wrote {r['items']} items ({r['status']}) as {r['format']} to {args.out}"
    if len(written) > 1:
        meta["labeling_config_file"] = written[1]
        human += (f"\nLabel Studio: create a project with the labeling config {written[1]}, then import {args.out}"
                  " (annotations: one per annotator, predictions: the consensus)")
        if '"sha256"' in r["content"] and args.blob_url is None:
            human += (f"\nblob items are served by Label Studio's local files: start it with "
                      f"LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT={r.get('blob_root')} "
                      "(or --blob-url URL_PREFIX for a server of your own)")
    out(args, meta, human)
    return 0


def cmd_certificate(args) -> int:
    r = call(args, "certificate_get", {"task_id": resolve_task(args, args.task_id)})
    if r["certified"]:
        c = r["certificate"]
        human = (f"task {r['task_id']} certified in round {c['round']}\n"
                 f"set_root    {c['set_root']}\nresult_root {c['result_root']}\n"
                 f"signers     {len(c['signers'])} validators, weight {c['weight']}/{c['total_weight']}")
    else:
        f = r["finality"]
        human = f"task {r['task_id']} not certified yet (round {f['round']}, {len(f['polkas'])} polkas seen)"
    out(args, r, human)
    return 0


def cmd_blob_get(args) -> int:
    if args.sha256:
        params = {"sha256": args.sha256}
    elif args.task_id is not None and args.item is not None:
        params = {"task_id": resolve_task(args, args.task_id), "item": args.item}
    else:
        raise CliError("give TASK_ID ITEM, or --sha256 HEX")
    try:
        with client(args) as c:
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
        raise CliError(f"blob_get: {e.message} (code {e.code})", EXIT_UNAVAILABLE if e.code == UNAVAILABLE else EXIT_USER) from None
    except OSError as e:
        raise CliError(f"cannot write {args.out}: {e}") from None
    out(args, {**r, "out": args.out},
         f"blob {r['sha256'][:16]}… ({r['size']} bytes, {r['media_type'] or 'unknown type'}) written to {args.out}"
         + (f"; fetched from {r['peer_id']}" if r["source"] == "peer" else ""))
    return 0


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """Register rewards, reputation, export, certificate and blob on ``sub``."""
    s = sub.add_parser("rewards", parents=[common], help="rewards earned in certified tasks")
    s.add_argument("--account", help="only this account (local name or hex public key)")
    s.add_argument("--task", help="only this task (id or any unique prefix)")
    s.set_defaults(fn=cmd_rewards)

    s = sub.add_parser("reputation", parents=[common], help="reputation per account and domain")
    s.add_argument("--account", help="only this account (local name or hex public key)")
    s.add_argument("--domain", help="only this domain")
    s.set_defaults(fn=cmd_reputation)

    s = sub.add_parser("export", parents=[common], help="export a task's consensus dataset")
    s.add_argument("task_id", help="task id or any unique prefix of it")
    s.add_argument("--format", choices=["jsonl", "csv", "labelstudio"], default="jsonl")
    s.add_argument("--out", help="write to this file (default: stdout); labelstudio also writes the labeling "
                                 "config next to it, FILE.label_config.xml")
    s.add_argument("--blob-url", metavar="PREFIX", help="labelstudio: URL prefix of blob items, followed by "
                   "<2 hex digits>/<sha256> (default /data/local-files/?d=, Label Studio's local files)")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("certificate", parents=[common], help="a task's finality certificate")
    s.add_argument("task_id", help="task id or any unique prefix of it")
    s.set_defaults(fn=cmd_certificate)

    s = sub.add_parser("blob", parents=[common], help="blob verbs (item payloads stored by content hash)")
    bsub = s.add_subparsers(dest="blob_cmd", metavar="VERB")
    bsub.required = True
    b = bsub.add_parser("get", parents=[common], help="fetch a task item's blob (from peers if needed) into a file")
    b.add_argument("task_id", nargs="?", help="task id or any unique prefix of it")
    b.add_argument("item", nargs="?", type=int, help="item index in the task")
    b.add_argument("--sha256", help="fetch by content hash instead of TASK_ID ITEM")
    b.add_argument("--out", required=True, help="file to write (replaced atomically once verified)")
    b.set_defaults(fn=cmd_blob_get)


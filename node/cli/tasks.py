"""Verbs that post and read through a running node: ``rpc``, ``task post``, ``label``,
``consensus``."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from .common import CliError, call, out


def cmd_rpc(args) -> int:
    params = {}
    if args.params:
        try:
            params = json.loads(args.params)
        except json.JSONDecodeError as e:
            raise CliError(f"PARAMS must be a JSON object: {e}") from None
        if not isinstance(params, dict):
            raise CliError("PARAMS must be a JSON object, e.g. '{\"task_id\": \"...\"}'")
    print(json.dumps(call(args, args.method, params), indent=2))
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


def cmd_task_post(args) -> int:
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    params = {"account": args.account, "title": args.title or Path(args.file).stem, "labels": labels,
              "items": _resolve_files(_read_items(args.file), args.file), "duration_s": args.duration, "bounty": args.bounty,
              "redundancy": args.redundancy, "domain": args.domain}
    if args.gold:
        params["gold"] = _read_gold(args.gold)
    r = call(args, "task_post", params)
    out(args, r, f"task {r['task_id']} posted ({r.get('items')} items, deadline {r.get('deadline_ms')})")
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
    r = call(args, "annotations_submit", {"account": args.account, "task_id": args.task_id, "labels": pairs})
    out(args, r, f"batch {r['batch_id']} {r['status']} ({r['labels']} labels)")
    return 0


def cmd_consensus(args) -> int:
    r = call(args, "consensus_get", {"task_id": args.task_id})
    lines = [f"task {r['task_id']}  {r['status']}  ({r['task_status']})",
             f"set_root    {r['set_root']}", f"result_root {r['result_root']}",
             f"{r['batches']} batches, {r['labels']} labels, agreement alpha {r['alpha_f']}",
             "item  label            confidence  votes"]
    for it in r.get("items", [])[: args.limit]:
        lines.append(f"{it['item']:>4}  {str(it['label']):<16} {it['confidence_f']:>10.3f}  {it['votes']:>5}")
    out(args, r, "\n".join(lines))
    return 0


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """Register rpc, task, label and consensus on ``sub``."""
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


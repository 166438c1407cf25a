"""Verbs that post and read through a running node: ``rpc``, ``task post | list | show |
items``, ``label``, ``consensus``. Task ids may be given as any unique prefix (as git does)."""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from ..rpc.errors import RpcCallError
from .common import (
    EXIT_UNAVAILABLE, CliError, account_names, call, client, fmt_deadline, fmt_share, fmt_time, out, resolve_task, who,
)
from .labelstudio import looks_like_labelstudio, read_labelstudio
from .progress import Progress, Working


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


#: files copied into the node's blob store per RPC call while posting (progress in between)
IMPORT_CHUNK = 16


def _import_blobs(args, items: list) -> list:
    """Copy the {"file": path} items into the node's blob store a few at a time (RPC
    blob_import), with progress on a terminal; the items then name their blobs by hash."""
    where = [k for k, it in enumerate(items) if isinstance(it, dict) and "file" in it]
    if not where:
        return items
    items = list(items)
    with Progress(args, "copying files into the node's blob store", len(where)) as p:
        for start in range(0, len(where), IMPORT_CHUNK):
            chunk = where[start:start + IMPORT_CHUNK]
            blobs = call(args, "blob_import", {"files": [items[k] for k in chunk]})["blobs"]
            for k, b in zip(chunk, blobs):
                items[k] = b
            p.advance(len(chunk))
    return items


def cmd_task_post(args) -> int:
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    ls = None
    if looks_like_labelstudio(args.file):
        ls = read_labelstudio(args.file)
        unknown = sorted({lab for _, _, lab in ls.annotations} - set(labels))
        if unknown:
            raise CliError(f"{args.file}: annotations use labels that --labels lacks: {', '.join(unknown[:10])}")
        items = _import_blobs(args, ls.items)
    else:
        items = _import_blobs(args, _resolve_files(_read_items(args.file), args.file))
    params = {"account": args.account, "title": args.title or Path(args.file).stem, "labels": labels,
              "items": items, "duration_s": args.duration, "bounty": args.bounty,
              "redundancy": args.redundancy, "domain": args.domain, "allow_duplicate": args.allow_duplicate}
    if args.gold:
        params["gold"] = _read_gold(args.gold)
    try:
        with client(args) as c, Working(args, f"posting {len(items):,} items"):
            r = c.call("task_post", params)
    except RpcCallError as e:
        if e.data and e.data.get("duplicate_of"):
            d = e.data
            raise CliError(f"these items and labels were already posted by {args.account} as task "
                           f"{d['duplicate_of'][:12]} ({d['title']!r}, {d['status']}, posted {fmt_time(d['created_at'])}); "
                           "post again with --allow-duplicate to make a second task") from None
        raise CliError(f"task_post: {e.message} (code {e.code})") from None
    except (ConnectionError, OSError) as e:
        raise CliError(f"cannot reach the node's RPC socket: {e}", EXIT_UNAVAILABLE) from None
    tid = r["task_id"]
    if ls is not None and ls.annotations:
        r["imported"] = _import_annotations(args, tid, ls)
    if args.quiet and not args.json:
        print(tid)
        return 0
    out(args, r, f"task {tid} posted: {r.get('items')} items, labels {', '.join(labels)}\n"
                 f"  deadline {fmt_deadline(r['deadline_ms'], r.get('time_ms'))}\n"
                 f"  short id {tid[:12]} (any unique prefix works); label with: "
                 f"labelmesh label {tid[:12]} 0 {labels[0] if labels else 'LABEL'}")
    return 0


def _import_annotations(args, tid: str, ls) -> dict:
    """Submit a Label Studio export's annotations as labels of the local accounts named like
    their annotators (one batch each); the others cannot be signed here and are listed."""
    mine = set(account_names(args).values())
    by: dict[str, dict[int, str]] = {}
    for item, who_, label in ls.annotations:
        by.setdefault(who_, {})[item] = label
    done, skipped = {}, sorted(a for a in by if a not in mine)
    for name in sorted(a for a in by if a in mine):
        pairs = [[i, lab] for i, lab in sorted(by[name].items())]
        call(args, "annotations_submit", {"account": name, "task_id": tid, "labels": pairs})
        done[name] = len(pairs)
    if not args.json:
        if done:
            print(f"imported the labels of {', '.join(f'{k} ({v})' for k, v in done.items())}", file=sys.stderr)
        if skipped:
            print(f"not imported: the labels of {len(skipped)} annotators without a local account here "
                  f"({', '.join(skipped[:5])}{' …' if len(skipped) > 5 else ''}); only their own keys can sign them",
                  file=sys.stderr)
    return {"accounts": done, "skipped": skipped}


def _label_value(text: str):
    return int(text) if text.isdigit() else text


def cmd_label(args) -> int:
    if len(args.pairs) % 2:
        raise CliError("give ITEM LABEL pairs, e.g. `labelmesh label TASK 0 cat 1 dog`")
    pairs = []
    for i in range(0, len(args.pairs), 2):
        try:
            item = int(args.pairs[i])
        except ValueError:
            raise CliError(f"item must be an integer index, got {args.pairs[i]!r}") from None
        pairs.append([item, _label_value(args.pairs[i + 1])])
    if not 0 <= args.wait <= 600:
        raise CliError("--wait takes 0..600 seconds")
    if not 0 < args.timeout <= 3600:
        raise CliError("--timeout must be more than 0 and at most 3600 seconds")
    tid = resolve_task(args, args.task_id, wait=args.wait)
    full = _items_at_redundancy(args, tid, [p[0] for p in pairs])
    # created_at chosen here, once: a retry after a timeout signs the same bytes (the same
    # batch id), so the node answers "duplicate" instead of storing a second batch
    created_at = args.created_at if args.created_at is not None else int(time.time() * 1000)
    params = {"account": args.account, "task_id": tid, "labels": pairs, "created_at": created_at}
    r = call_with_retries(args, "annotations_submit", params)
    note = ""
    if full:
        shown = ", ".join(map(str, full[:10])) + (" …" if len(full) > 10 else "")
        note = (f"\nnote: item{'s' if len(full) > 1 else ''} {shown} already had the votes the task asks for "
                f"(redundancy); your labels count all the same, but `labelmesh task items {tid[:12]} --todo` "
                "lists the items that still need votes")
        if not args.json:
            print(note.strip(), file=sys.stderr)
    status_note = STATUS_NOTES.get(r["status"], "")
    out(args, r, f"batch {r['batch_id']} {r['status']} ({r['labels']} labels, --created-at {created_at})"
        + (f"\n  {status_note}" if status_note else ""))
    return 0


def _items_at_redundancy(args, tid: str, items: list[int]) -> list[int]:
    """Which of ``items`` already had ``redundancy`` annotators before these labels."""
    if not items:
        return []
    lo, hi = min(items), max(items)
    if hi - lo >= 500 or lo < 0:
        return []  # a wide batch: not worth a page per 500 items just for a note
    try:
        r = call(args, "task_items", {"task_id": tid, "offset": lo, "limit": hi - lo + 1})
    except CliError:
        return []  # an older node without task_items: no note
    want = set(items)
    return [it["item"] for it in r["items"] if it["item"] in want and it["annotators"] >= r["redundancy"]]


#: ``labelmesh label`` sends its batch again this many times when the node does not answer
#: (timeout, connection closed): safe, since the retry is the same batch.
LABEL_TRIES = 3


def call_with_retries(args, method: str, params: dict):
    """``call``, sent again (the same request) when the node did not answer in time or
    closed the connection; other failures are not retried."""
    for attempt in range(1, LABEL_TRIES + 1):
        try:
            with client(args, args.timeout) as c:
                return c.call(method, params)
        except RpcCallError as e:
            raise CliError(f"{method}: {e.message} (code {e.code})") from None
        except (TimeoutError, ConnectionError) as e:
            if attempt == LABEL_TRIES:
                raise CliError(f"no answer from the node after {LABEL_TRIES} tries ({e}); the batch may or may not "
                               f"be stored: run the same command again with --created-at {params.get('created_at')} to find out",
                               EXIT_UNAVAILABLE) from None
            print(f"labelmesh: no answer ({e or type(e).__name__}); sending the same batch again "
                  f"({attempt + 1}/{LABEL_TRIES})", file=sys.stderr)
        except OSError as e:
            raise CliError(f"cannot reach the node's RPC socket: {e}", EXIT_UNAVAILABLE) from None


#: What ``label`` adds to a status that needs saying (docs/rpc.md, annotations_submit).
STATUS_NOTES = {
    "duplicate": "this very batch was stored already (a retry): nothing new",
    "accepted_overlapping": "stored; this account labelled some of these items before: the labels are kept, "
                            "but this batch may be dropped if an earlier one carries the same labels",
    "redundant": "not stored: batches of this account with smaller ids carry all these labels (they are kept)",
}


def cmd_consensus(args) -> int:
    tid = resolve_task(args, args.task_id)
    r = call(args, "consensus_get", {"task_id": tid, "limit": args.limit if not args.json else 10_000})
    if args.json:
        out(args, r)
        return 0
    names = account_names(args)
    lines = [f"task {r['task_id']}  {r['status']}  ({r['task_status']})",
             f"set_root    {r['set_root']}", f"result_root {r['result_root']}",
             f"{r['batches']} batches, {r['labels']} labels from {len(r['annotators'])} annotators; "
             f"agreement (Krippendorff alpha) {r['alpha_f']:.3f}", "",
             f"{'item':>5}  {'label':<16} {'confidence':>10}  {'agreement':>9}  {'votes':>5}"]
    for it in r.get("items", [])[: args.limit]:
        label = it["label"] if it["label"] is not None else "-"
        note = ""
        if it["votes"] == 0:
            note = "  no votes yet"
        elif it["label"] is None:
            note = "  undecided"
        elif it["confidence"] * 2 < 65536:
            note = "  weak: the only support is votes of little weight (docs/consensus.md, the support rule)"
        elif it["agreement"] * 2 <= 65536 and it["votes"] > 1:
            note = "  split vote: decided by the annotators' weights"
        lines.append(f"{it['item']:>5}  {label:<16} {fmt_share(it['confidence']):>10}  "
                     f"{fmt_share(it['agreement']):>9}  {it['votes']:>5}{note}")
    shown = min(args.limit, len(r.get("items", [])))
    total = len(r.get("items", []))
    if total > shown:
        lines.append(f"… {total - shown} more items (--limit N, or `labelmesh export`)")
    if r["annotators"]:
        lines += ["", f"{'annotator':<20} {'labels':>7} {'accuracy':>9} {'reward':>12}"]
        for a in sorted(r["annotators"], key=lambda a: (-a["accuracy"], a["account"])):
            lines.append(f"{_short(names, a['account']):<20} {a['labels']:>7} {fmt_share(a['accuracy']):>9} "
                         f"{a['reward']:>12,}")
    eq = r.get("equivocations") or []
    if eq:
        lines += ["", f"equivocations ({len(eq)}: two different labels for one item; those votes count for nothing):"]
        lines += [f"  {_short(names, e['account'])} on item {e['item']}" for e in eq[:20]]
        if len(eq) > 20:
            lines.append(f"  … {len(eq) - 20} more (--json lists them all)")
    else:
        lines += ["", "equivocations: none"]
    out(args, r, "\n".join(lines))
    return 0


def _short(names: dict, account: str) -> str:
    """A local account's name, else the first 16 hex digits of its key."""
    return names.get(account) or account[:16] + "…"


# ------------------------------------------------------------------ browsing tasks


def cmd_task_list(args) -> int:
    if not 0 < args.limit <= 10_000:
        raise CliError("--limit takes 1..10000")
    r = call(args, "tasks_list", {"limit": args.limit})
    if args.json:
        out(args, r)
        return 0
    if not r["tasks"]:
        print("no tasks on this node yet; post one with `labelmesh task post ITEMS.jsonl --labels a,b`")
        return 0
    lines = [f"{'task':<12}  {'status':<9} {'items':>6} {'bounty':>10}  {'deadline':<44} title"]
    for t in r["tasks"]:
        lines.append(f"{t['task_id'][:12]}  {t['status']:<9} {t['items']:>6,} {t['bounty']:>10,}  "
                     f"{fmt_deadline(t['deadline_ms'], r.get('time_ms')):<44} {t['title']}")
    if r["total"] > len(r["tasks"]):
        lines.append(f"… {r['total'] - len(r['tasks'])} older tasks (--limit N)")
    print("\n".join(lines))
    return 0


def _default_account(args, names: dict) -> str | None:
    """--account if given, else the local account 'default' if there is one."""
    if args.account:
        return args.account
    return "default" if "default" in names.values() else None


def _item_text(data: dict, width: int = 40) -> str:
    if data.get("kind") == "text":
        t = " ".join(data["text"].split())
        return t if len(t) <= width else t[: width - 1] + "…"
    return f"[{data.get('media_type') or data.get('kind')}, {data.get('size', 0):,} bytes]"


def cmd_task_show(args) -> int:
    if not 0 < args.limit <= 500:
        raise CliError("--limit takes 1..500")
    tid = resolve_task(args, args.task_id)
    names = account_names(args)
    acct = _default_account(args, names)
    params = {"task_id": tid, "limit": args.limit, "offset": args.offset}
    if acct:
        params["account"] = acct
    items = call(args, "task_items", params)
    cons = call(args, "consensus_get", {"task_id": tid, "offset": args.offset, "limit": args.limit})
    listed = call(args, "tasks_list", {"prefix": tid, "limit": 1})
    task, now = listed["tasks"][0], listed.get("time_ms")
    if args.json:
        out(args, {"task": task, "items": items, "consensus": cons})
        return 0
    red = items["redundancy"]
    lines = [f"task       {tid}",
             f"title      {task['title']}",
             f"requester  {who(names, task['requester'])}",
             f"status     {task['status']}, {cons['status']} result"
             + (f", {cons['batches']} batches, {cons['labels']} labels" if cons["batches"] else ", no labels yet"),
             f"deadline   {fmt_deadline(task['deadline_ms'], now)}",
             f"labels     {', '.join(task['labels'])}" + (f"   (domain {task['domain']})" if task["domain"] else ""),
             f"items      {task['items']:,}, {red} votes wanted per item (redundancy); "
             f"bounty {task['bounty']:,} credits" + ("; has hidden gold" if task["has_gold"] else "")]
    if acct:
        lines.append(f"you        {acct}: labelled {items['labelled']:,} items, {items['items_left']:,} left")
    cons_by_item = {c["item"]: c for c in cons.get("items", [])}
    lines += ["", f"{'item':>5}  {'votes':>7}  {'consensus':<22} " + (f"{'yours':<12} " if acct else "") + "item"]
    for it in items["items"]:
        c = cons_by_item.get(it["item"])
        label = "-" if c is None or c["label"] is None else f"{c['label']} {fmt_share(c['confidence'])}"
        votes = f"{it['annotators']}/{red}"
        mine = (f"{it['mine'] or '-':<12} " if acct else "")
        lines.append(f"{it['item']:>5}  {votes:>7}  {label:<22} {mine}{_item_text(it['data'])}")
    if items["next_offset"] is not None:
        lines.append(f"… items {items['next_offset']}..{items['total'] - 1} not shown (--offset {items['next_offset']})")
    print("\n".join(lines))
    return 0


def cmd_task_items(args) -> int:
    if not 0 < args.limit <= 10_000:
        raise CliError("--limit takes 1..10000")
    if args.todo and not args.account:
        raise CliError("--todo needs --account A: the items that account has not labelled yet")
    tid = resolve_task(args, args.task_id)
    params = {"task_id": tid, "limit": min(args.limit, 500)}
    if args.account:
        params["account"] = args.account
    if args.todo:
        params["todo"] = True
        params["needed"] = not args.all
    rows, offset, head = [], 0, None
    while len(rows) < args.limit:
        r = call(args, "task_items", {**params, "offset": offset})
        head = head or r
        rows += r["items"][: args.limit - len(rows)]
        if r["next_offset"] is None:
            break
        offset = r["next_offset"]
    if args.json:
        out(args, {k: v for k, v in head.items() if k not in ("items", "next_offset")} | {"items": rows})
        return 0
    red = head["redundancy"]
    what = ("items " + args.account + " has not labelled" + ("" if args.all else ", still short of votes")
            if args.todo else "items")
    lines = [f"{what} of task {tid[:12]} ({head['title']}, {head['status']}, {red} votes wanted per item):"]
    if not rows:
        lines.append("  none" + ("" if args.all or not args.todo else
                                 " (every item has the votes it asks for; --all lists every item you have not labelled)"))
    for it in rows:
        mine = f"  yours: {it['mine']}" if it.get("mine") else ""
        lines.append(f"{it['item']:>6}  votes {it['annotators']}/{red}  {_item_text(it['data'], 60)}{mine}")
    if len(rows) == args.limit:
        lines.append(f"(first {args.limit}; --limit N for more)")
    print("\n".join(lines))
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
                   "file paths are relative to the .jsonl and become blobs), .csv with a 'text' column, or a Label "
                   "Studio JSON export (.json: its tasks, and its annotations as labels of the local accounts "
                   "named like their annotators)")
    t.add_argument("--labels", required=True, help="comma-separated label names, e.g. pos,neg")
    t.add_argument("--title", help="task title (default: the file name)")
    t.add_argument("--domain", default="", help="label domain for reputation (e.g. sentiment)")
    t.add_argument("--duration", type=float, default=3600, help="seconds until the deadline (default 3600)")
    t.add_argument("--bounty", type=int, default=0, help="bounty in credits (default 0)")
    t.add_argument("--redundancy", type=int, default=3,
                   help="votes wanted per item (default 3): annotators are guided to items short of it")
    t.add_argument("--account", default="default", help="local account that signs (default: default)")
    t.add_argument("--gold", help="hidden gold answers, CSV item,label: committed now, revealed after the deadline")
    t.add_argument("--allow-duplicate", action="store_true",
                   help="post even if this account already posted the same items and labels")
    t.add_argument("-q", "--quiet", action="store_true", help="print only the task id (for TASK=$(...))")
    t.set_defaults(fn=cmd_task_post)

    t = tsub.add_parser("list", parents=[common], help="the tasks this node knows, newest first")
    t.add_argument("--limit", type=int, default=50, help="tasks to list (default 50)")
    t.set_defaults(fn=cmd_task_list)

    t = tsub.add_parser("show", parents=[common], help="a task: deadline, labels, and per item its votes against "
                                                       "the redundancy, the consensus and your label")
    t.add_argument("task_id", help="task id or any unique prefix of it")
    t.add_argument("--account", help="whose labels to show (default: the account 'default' if there is one)")
    t.add_argument("--limit", type=int, default=20, help="items to show (1..500, default 20)")
    t.add_argument("--offset", type=int, default=0, help="first item to show (default 0)")
    t.set_defaults(fn=cmd_task_show)

    t = tsub.add_parser("items", parents=[common], help="a task's items; with --todo --account A, those A has not "
                                                        "labelled that still need votes")
    t.add_argument("task_id", help="task id or any unique prefix of it")
    t.add_argument("--account", help="local account name or public key")
    t.add_argument("--todo", action="store_true", help="only items the account has not labelled yet")
    t.add_argument("--all", action="store_true",
                   help="with --todo: also items that already have the votes the task asks for")
    t.add_argument("--limit", type=int, default=50, help="items to list (default 50)")
    t.set_defaults(fn=cmd_task_items)

    s = sub.add_parser("label", parents=[common], help="submit labels: labelmesh label TASK ITEM LABEL [ITEM LABEL ...]")
    s.add_argument("task_id", help="task id or any unique prefix of it")
    s.add_argument("pairs", nargs="+", metavar="ITEM LABEL")
    s.add_argument("--account", default="default", help="local account that signs (default: default)")
    s.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                   help="wait this long for a task this node has not received yet (default 10; 0 = not at all)")
    s.add_argument("--created-at", type=int, metavar="MS",
                   help="the batch's timestamp, ms since the epoch (default: now); the same labels with the same "
                        "--created-at are the same batch, so repeating a command that timed out is safe")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the node's answer (default 60); "
                   f"unanswered, the same batch is sent again, {LABEL_TRIES} tries in all")
    s.set_defaults(fn=cmd_label)

    s = sub.add_parser("consensus", parents=[common], help="consensus labels, roots and agreement of a task, "
                                                           "per-annotator accuracy, equivocations")
    s.add_argument("task_id", help="task id or any unique prefix of it")
    s.add_argument("--limit", type=int, default=20, help="items to show in human output (default 20)")
    s.set_defaults(fn=cmd_consensus)


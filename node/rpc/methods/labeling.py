"""RPC methods for people who label and the pages that serve them (node/web/): the items of
a task a page at a time with what an account already labelled, the open tasks an account
can still work on, storing an uploaded blob, and the URL of the node's web UI.

How it works
------------
``LabelIndex`` keeps, per task, which items each annotator labelled (and with what) and how
many annotators labelled each item. It is built from the task's stored batches the first time
a task is asked about and then brought up to date incrementally: the store lists a task's
batches in arrival order, so only the batches past the last one read are decoded. It is a
view for people (what is left for me), never an input to consensus: the tally reads the set
itself. At most ``INDEX_TASKS`` tasks are indexed at once (least recently asked dropped).
"""
from __future__ import annotations

from collections import OrderedDict

import trio

from protocol.keep import compute_max_kept_batches
from protocol.messages import ITEM_BLOB, ITEM_BYTES, ITEM_TEXT, KIND_BATCH, decode_message

from ..errors import INVALID_PARAMS, NOT_FOUND, STORE_FULL, UNAVAILABLE, RpcError
from ..params import account_param, get_param, hex_param, task_id_param
from .tasks import task_summary

#: task_items pages hold at most this many items (default DEFAULT_ITEMS_PAGE).
MAX_ITEMS_PAGE = 500
DEFAULT_ITEMS_PAGE = 50
#: worklist returns at most this many tasks per call.
MAX_WORKLIST = 200
#: tasks indexed at once (LabelIndex); about 100 bytes per (annotator, item) label held.
INDEX_TASKS = 64
#: new batches of a task decoded in a worker thread from this many on.
INDEX_THREAD_MIN_BATCHES = 200
#: blob_put takes at most this many bytes per call (hex doubles it: 16 MiB request line).
MAX_BLOB_PUT_BYTES = 7 << 20
#: inline text items longer than this are cut in task_items (``truncated`` says so).
MAX_ITEM_TEXT = 20_000


class _TaskLabels:
    __slots__ = ("seen", "dropped", "by_annotator", "annotators_per_item", "batches_by_annotator")

    def __init__(self, n_items: int, dropped: int = 0):
        self.seen = 0  # batches of the task read so far (arrival order)
        self.dropped = dropped  # the node's count of dropped messages when this was built
        self.by_annotator: dict[bytes, dict[int, int]] = {}  # annotator -> item -> label (-1: two different)
        self.annotators_per_item = [0] * n_items
        self.batches_by_annotator: dict[bytes, int] = {}

    def add(self, annotator: bytes, labels) -> None:
        self.batches_by_annotator[annotator] = self.batches_by_annotator.get(annotator, 0) + 1
        mine = self.by_annotator.setdefault(annotator, {})
        n = len(self.annotators_per_item)
        for item, label in labels:
            if not 0 <= item < n:
                continue
            old = mine.get(item)
            if old is None:
                mine[item] = label
                self.annotators_per_item[item] += 1
            elif old != label:
                mine[item] = -1  # equivocated: the tally counts neither label


class LabelIndex:
    """Who labelled what, per task (see the module docstring). Event-loop thread only."""

    def __init__(self, node):
        self.node = node
        self._tasks: OrderedDict[bytes, _TaskLabels] = OrderedDict()
        self._lock = trio.Lock()

    async def get(self, tid: bytes) -> _TaskLabels:
        async with self._lock:  # one reader at a time: updates are incremental
            st = self._tasks.get(tid)
            dropped = self.node.counters.dropped
            if st is None or st.dropped != dropped:  # new, or the keep rule deleted batches since: read again
                st = self._tasks[tid] = _TaskLabels(len(self.node.tasks[tid].items), dropped)
                while len(self._tasks) > INDEX_TASKS:
                    self._tasks.popitem(last=False)
            self._tasks.move_to_end(tid)
            ids = self.node.store.task_message_ids(tid, KIND_BATCH)
            new = ids[st.seen:]
            if new:
                if len(new) >= INDEX_THREAD_MIN_BATCHES:
                    rows = await trio.to_thread.run_sync(self._read, new)
                else:
                    rows = self._read(new)
                for annotator, labels in rows:
                    st.add(annotator, labels)
                st.seen = len(ids)
            return st

    def _read(self, ids: list[bytes]) -> list[tuple[bytes, tuple]]:
        out = []
        for start in range(0, len(ids), 256):
            chunk = ids[start:start + 256]
            for raw in self.node.store.get_many(chunk):
                b = decode_message(raw, self.node.params).body
                out.append((b.annotator, b.labels))
        return out


def label_index(node) -> LabelIndex:
    idx = getattr(node, "label_index", None)
    if idx is None:
        idx = node.label_index = LabelIndex(node)
    return idx


def _item_view(it) -> dict:
    """An item for a page: text as text (cut at MAX_ITEM_TEXT), blobs and inline bytes by
    media type and size (the web UI serves their bytes at /blob/TASK/ITEM)."""
    if it.item_type == ITEM_TEXT:
        text = it.text
        return {"kind": "text", "text": text[:MAX_ITEM_TEXT], "truncated": len(text) > MAX_ITEM_TEXT}
    if it.item_type == ITEM_BYTES:
        return {"kind": "bytes", "media_type": it.media_type, "size": len(it.payload)}
    return {"kind": "blob", "media_type": it.media_type, "size": it.size, "sha256": it.digest.hex()}


async def task_items(node, params):
    """Items of a task a page at a time, with how many annotators labelled each and, given an
    'account', its own label: {task_id, offset?, limit? (1..500), account?, todo?: bool,
    needed?: bool}. 'todo' leaves out the items the account labelled, 'needed' those that
    already have the task's redundancy in annotators."""
    tid = task_id_param(node, params)
    task = node.tasks[tid]
    offset = get_param(params, "offset", int, 0)
    limit = get_param(params, "limit", int, DEFAULT_ITEMS_PAGE)
    if offset < 0 or not 0 < limit <= MAX_ITEMS_PAGE:
        raise RpcError(INVALID_PARAMS, f"limit must be 1..{MAX_ITEMS_PAGE} and offset >= 0")
    todo = get_param(params, "todo", bool, False)
    needed = get_param(params, "needed", bool, False)
    who = account_param(node, params)
    if todo and who is None:
        raise RpcError(INVALID_PARAMS, "param 'todo' needs an 'account'")
    st = await label_index(node).get(tid)
    mine = st.by_annotator.get(who, {}) if who is not None else {}
    names = task.schema.labels
    out, i, n = [], offset, len(task.items)
    while i < n and len(out) < limit:
        if not (todo and i in mine) and not (needed and st.annotators_per_item[i] >= task.redundancy):
            lab = mine.get(i)
            out.append({"item": i, "data": _item_view(task.items[i]), "annotators": st.annotators_per_item[i],
                        "mine": None if lab is None else (names[lab] if 0 <= lab < len(names) else "(two labels)")})
        i += 1
    result = {"task_id": tid.hex(), "title": task.title, "domain": task.schema.domain, "bounty": task.bounty,
              "total": n, "labels": list(names), "redundancy": task.redundancy,
              "status": node.task_status(tid), "deadline_ms": task.deadline, "items": out,
              "next_offset": i if i < n else None}
    if who is not None:
        result.update(account=who.hex(), labelled=len(mine), items_left=n - len(mine),
                      batches_used=st.batches_by_annotator.get(who, 0),
                      batches_cap=compute_max_kept_batches(n))
    return result


async def worklist(node, params):
    """Open tasks an 'account' (name or hex) can label, newest first, with the items it has
    not labelled yet: {account, limit? (1..200, default 50), offset?}."""
    who = account_param(node, params)
    if who is None:
        raise RpcError(INVALID_PARAMS, "missing param 'account'")
    limit = get_param(params, "limit", int, 50)
    offset = get_param(params, "offset", int, 0)
    if offset < 0 or not 0 < limit <= MAX_WORKLIST:
        raise RpcError(INVALID_PARAMS, f"limit must be 1..{MAX_WORKLIST} and offset >= 0")
    now = node.clock()
    open_tasks = sorted(((tid, t) for tid, t in node.tasks.items() if now <= t.deadline),
                        key=lambda kv: (-kv[1].created_at, kv[0]))
    rows = []
    for tid, t in open_tasks[offset:offset + limit]:
        st = await label_index(node).get(tid)
        mine = st.by_annotator.get(who, {})
        rows.append({**task_summary(node, tid, t), "labelled": len(mine), "items_left": len(t.items) - len(mine),
                     "batches_used": st.batches_by_annotator.get(who, 0),
                     "batches_cap": compute_max_kept_batches(len(t.items))})
    return {"account": who.hex(), "time_ms": now, "tasks": rows, "total": len(open_tasks)}


def item_bytes_source(node, tid: bytes, item: int):
    """(kind, media_type, size, digest or payload) of a task's item for serving its bytes;
    RpcError for an unknown item or a text item."""
    task = node.tasks[tid]
    if not 0 <= item < len(task.items):
        raise RpcError(NOT_FOUND, f"item {item} out of range: task has {len(task.items)} items")
    it = task.items[item]
    if it.item_type == ITEM_BLOB:
        return "blob", it.media_type, it.size, it.digest
    if it.item_type == ITEM_BYTES:
        return "bytes", it.media_type, len(it.payload), it.payload
    raise RpcError(INVALID_PARAMS, f"item {item} is text, not bytes: task_items shows it")


async def store_blob(node, chunks, media_type: str) -> dict:
    """Write the byte ``chunks`` (an async iterable) into the blob store, refusing more than
    the network's max_blob_bytes: {sha256, size, media_type}, usable as a task_post item."""
    from ...storage.blobstore import BlobInputError
    from ...storage.errors import StoreFullError

    cap = node.params.max_blob_bytes
    store = node.blobs.store
    try:
        inc = await trio.to_thread.run_sync(store.begin)
        try:
            async for chunk in chunks:
                if inc.size + len(chunk) > cap:
                    raise BlobInputError(f"blob over this network's max_blob_bytes ({cap} bytes)")
                if chunk:
                    await trio.to_thread.run_sync(inc.write, chunk)
            if inc.size == 0:
                raise BlobInputError("empty blob")
            digest = await trio.to_thread.run_sync(inc.finish, None)
        except BaseException:
            inc.abort()
            raise
    except BlobInputError as e:
        raise RpcError(INVALID_PARAMS, str(e)) from None
    except StoreFullError as e:
        raise RpcError(STORE_FULL, f"{e}. Free disk space; the node resumes by itself.") from None
    return {"sha256": digest.hex(), "size": inc.size, "media_type": media_type or "application/octet-stream"}


async def blob_put(node, params):
    """Store bytes as a blob on this node: {data: hex (<= 7 MiB), media_type?} ->
    {sha256, size, media_type}, to use as a task_post item (the node then serves it to peers)."""
    data = hex_param(params, "data", None)
    if len(data) > MAX_BLOB_PUT_BYTES:
        raise RpcError(INVALID_PARAMS, f"param 'data' is {len(data)} bytes; at most {MAX_BLOB_PUT_BYTES} per call "
                                       "(bigger files: task_post with a {\"file\": path} item)")
    media_type = get_param(params, "media_type", str, "application/octet-stream")

    async def one():
        yield data

    return await store_blob(node, one(), media_type)


async def ui_url(node, params):
    """The URL of this node's web UI with its access token (only over this owner-only socket):
    {url, login_url, listen, event_clients, refused: {host, token, csrf}}. -32004 when the node
    serves no web UI (start it with --http)."""
    web = getattr(node, "web", None)
    if web is None or web.url is None:
        raise RpcError(UNAVAILABLE, "this node serves no web UI: start it with `labelmesh run --http 127.0.0.1:8080` "
                                    "or set http_listen in config.toml")
    return {"url": web.url, "login_url": web.login_url, "listen": web.listen, "event_clients": web.event_clients,
            "refused": dict(web.guard.refused)}


METHODS = [task_items, worklist, blob_put, ui_url]

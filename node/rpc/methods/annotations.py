"""RPC methods of annotations: submit (signed here or pre-signed), list."""
from __future__ import annotations

import trio

from protocol.messages import KIND_BATCH, AnnotationBatch, decode_message, sign_message

from ..errors import INVALID_PARAMS, RpcError
from ..params import get_param, page_param, signing_key_param, task_id_param
from .common import ingest_many_or_raise, ingest_or_raise, raw_messages_param


#: How long annotations_submit waits for a known task's escrow to reach this node before it
#: refuses the labels ("task not funded yet"): the escrow is certified within a second of the
#: task_post that returned on the requester's node, but other nodes learn of it a moment
#: later (docs/ledger.md).
FUNDING_WAIT_S = 5.0


async def await_funding(node, task_ids) -> None:
    """Wait (at most FUNDING_WAIT_S) until every known task of ``task_ids`` is open for
    labels here; what is still not funded then is refused by the ingest pipeline."""
    waiting = [t for t in set(task_ids) if t in node.tasks and not node.is_open_for_labels(t)]
    if not waiting:
        return
    with trio.move_on_after(FUNDING_WAIT_S):
        while not all(node.is_open_for_labels(t) for t in waiting):
            await trio.sleep(0.02)


async def annotations_submit(node, params):
    """Submit labels: signed here by a local 'account' (with 'created_at' for idempotent retries),
    or pre-signed envelopes in 'raw'. Acknowledged only once durably stored; then gossiped."""
    if "raw" in params:
        single, datas, msgs = raw_messages_param(
            node, params, KIND_BATCH, "annotations_submit takes annotation batches; use task_post for tasks")
        out = []
        await await_funding(node, [m.body.task_id for m in msgs])
        for (mid, status), m in zip(await ingest_many_or_raise(node, datas, msgs), msgs):
            out.append({"batch_id": mid.hex(), "status": status, "labels": len(m.body.labels)})
        return out[0] if single else {"results": out}
    sk = signing_key_param(node, params)
    tid = task_id_param(node, params)
    task = node.tasks[tid]
    pairs = get_param(params, "labels", list)
    parsed = {}
    for p in pairs:
        if not (isinstance(p, list) and len(p) == 2 and isinstance(p[0], int)):
            raise RpcError(INVALID_PARAMS, "each label must be [item_index, label] (label as index or name)")
        lab = p[1]
        if isinstance(lab, str):
            if lab not in task.schema.labels:
                raise RpcError(INVALID_PARAMS, f"unknown label {lab!r}; the task's labels are {list(task.schema.labels)}")
            lab = task.schema.labels.index(lab)
        if not isinstance(lab, int) or isinstance(lab, bool):
            raise RpcError(INVALID_PARAMS, "label must be an index or a label name")
        if p[0] in parsed and parsed[p[0]] != lab:
            raise RpcError(INVALID_PARAMS, f"item {p[0]} labelled twice with different labels in one batch")
        parsed[p[0]] = lab
    if not parsed:
        raise RpcError(INVALID_PARAMS, "param 'labels' is empty")
    # The same account, task, labels and created_at sign the same bytes, hence the same
    # batch id: a client that retries after a timeout with the created_at it chose the first
    # time gets "duplicate", never a second batch (docs/rpc.md).
    created_at = get_param(params, "created_at", int, None)
    if created_at is None:
        created_at = node.clock()
    elif not 0 <= created_at < 1 << 63:
        raise RpcError(INVALID_PARAMS, "param 'created_at' must be milliseconds since the epoch (0..2^63-1)")
    batch = AnnotationBatch(annotator=bytes(sk.verify_key), task_id=tid, created_at=created_at,
                            labels=tuple(sorted(parsed.items())))
    msg = sign_message(batch, sk, node.network_id)
    await await_funding(node, [tid])
    mid, status = await ingest_or_raise(node, msg.raw)
    return {"batch_id": mid.hex(), "status": status, "labels": len(batch.labels), "created_at": created_at}


async def annotations_list(node, params):
    """Annotation batches of a task in arrival order: [{batch_id, annotator, created_at, labels}]."""
    tid = task_id_param(node, params)
    limit, offset = page_param(params)
    ids = node.store.task_message_ids(tid, KIND_BATCH)
    page = ids[offset: offset + limit]
    if len(page) >= LIST_THREAD_MIN_BATCHES:  # ~40 us per batch to read, decode and format
        out = await trio.to_thread.run_sync(_batches_json, node, page)
    else:
        out = _batches_json(node, page)
    end = offset + len(out)
    return {"task_id": tid.hex(), "total": len(ids), "batches": out,
            "next_offset": end if end < len(ids) else None}


#: annotations_list reads and formats a page of at least this many batches in a worker thread.
LIST_THREAD_MIN_BATCHES = 1_000
#: A page of annotations_list ends after the batch that brings it to this many labels (a
#: page of 10,000 batches of up to 100,000 labels each would be a response of gigabytes);
#: ``next_offset`` says where the next page starts.
MAX_PAGE_LABELS = 1_000_000


def _batches_json(node, page: list[bytes]) -> list[dict]:
    """annotations_list's rows for ``page`` (ids), up to MAX_PAGE_LABELS labels and at
    least one batch (safe in a worker thread: store reads are, the rest is pure)."""
    out, labels = [], 0
    for start in range(0, len(page), 256):  # read a few at a time: a batch may be ~1 MB
        chunk = page[start: start + 256]
        for mid, raw in zip(chunk, node.store.get_many(chunk)):
            if labels >= MAX_PAGE_LABELS:
                return out
            b = decode_message(raw, node.params).body
            out.append({"batch_id": mid.hex(), "annotator": b.annotator.hex(), "created_at": b.created_at,
                        "labels": [list(x) for x in b.labels]})
            labels += len(b.labels)
    return out




METHODS = [annotations_submit, annotations_list]

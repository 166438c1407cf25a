"""The JSON-RPC methods of a node. Each takes the Node and a params object and
returns a JSON-able result or raises RpcError with a message that says what to fix.

Conventions: ids, keys and raw messages are lowercase hex strings; times are
integer milliseconds since the Unix epoch; fixed-point values (confidence,
agreement, accuracy) are also given as floats for people (``*_f`` fields are
derived from the exact integers, never the other way round).

Reference (``labelmesh rpc rpc_methods`` prints this list):

node_info {}                         identity, network, peers, message counts, pid
peers_list {}                        connected peers
sync_status {}                       anti-entropy sync state per peer
rpc_methods {}                       method names with one-line docs
task_post {account, title, labels, items, [domain], [duration_s | deadline_ms],
           [bounty], [redundancy], [nonce]}  or  {raw: hex envelope}
                                     sign (with a local account) and publish a task
task_get {task_id}                   the task announcement, decoded
tasks_list {[limit], [offset]}       {"tasks": [{task_id, title, status, ...}]}
annotations_submit {account, task_id, labels: [[item, label], ...]}  or  {raw: hex | [hex, ...]}
                                     store durably (acknowledged = on disk) and gossip
annotations_list {task_id, [limit], [offset]}
consensus_get {task_id, [items: bool], [limit], [offset]}
                                     per item label/confidence/votes, set_root, result_root
certificate_get {task_id}            finality certificate (hex) and round state
gold_reveal {task_id} | {raw}        reveal a task's hidden gold after its deadline
rewards_get {[account], [task_id]}   rewards from certified tasks, per task and totals
reputation_get {[account], [domain]} reputation per (account, domain) and the resulting weight
task_export {task_id, [format]}      consensus dataset: jsonl | csv | labelstudio
account_list {}                      local accounts (public keys only)
messages_arrival {ids: [hex, ...]}   when this node stored each message (ms), for benchmarks
backup_create {dest}                 consistent hot backup of the node (store, config, genesis, keys) into dest
blob_get {task_id, item} | {sha256}  make sure a blob is stored here (fetched from peers if needed)
blob_read {sha256, [offset], [length]}  a chunk (<= 1 MiB, hex) of a locally stored blob
"""
from __future__ import annotations

import logging
import os
import secrets
from typing import Any

import trio

from protocol.messages import (
    ITEM_BLOB, ITEM_BYTES, ITEM_TEXT, KIND_BATCH, KIND_GOLD, KIND_NAMES, SCHEMA_SINGLE_CHOICE,
    AnnotationBatch, Item, LabelSchema, Outcome, TaskAnnouncement, compute_gold_commitment, decode_message,
    sign_message,
)
from protocol.errors import DecodeError
ONE = 1 << 16  # = protocol.tally.ONE (tests/test_rpc.py checks); not imported: protocol.tally loads numpy

from .errors import KeystoreError
from .metrics import store_summary, task_state_counts
from .rpc import APP_ERROR, INVALID_PARAMS, NOT_FOUND, REJECTED, STORE_FULL, RpcError

MAX_RAW_PER_CALL = 1000
MAX_LIST = 10_000
VERSION = "0.1.0"


# ---------------------------------------------------------------- param helpers

def _get(params: dict, name: str, typ, default: Any = ..., *, where: str = "") -> Any:
    if name not in params:
        if default is ...:
            raise RpcError(INVALID_PARAMS, f"missing param {name!r}{where}")
        return default
    v = params[name]
    if typ is int and (not isinstance(v, int) or isinstance(v, bool)):
        raise RpcError(INVALID_PARAMS, f"param {name!r} must be an integer")
    if typ is not int and not isinstance(v, typ):
        tname = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise RpcError(INVALID_PARAMS, f"param {name!r} must be of type {tname}")
    return v


def _hex(params: dict, name: str, length: int | None = 32) -> bytes:
    v = _get(params, name, str)
    try:
        b = bytes.fromhex(v)
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"param {name!r} must be a hex string") from None
    if length is not None and len(b) != length:
        raise RpcError(INVALID_PARAMS, f"param {name!r} must be {length} bytes ({2 * length} hex characters)")
    return b


def _task_id(node, params) -> bytes:
    tid = _hex(params, "task_id")
    if tid not in node.tasks:
        raise RpcError(NOT_FOUND, f"unknown task {tid.hex()}: not received by this node (check tasks_list)")
    return tid


def _page(params) -> tuple[int, int]:
    limit = _get(params, "limit", int, 1000)
    offset = _get(params, "offset", int, 0)
    if not 0 < limit <= MAX_LIST or offset < 0:
        raise RpcError(INVALID_PARAMS, f"limit must be 1..{MAX_LIST} and offset >= 0")
    return limit, offset


def _signing_key(node, params):
    name = _get(params, "account", str)
    if node.keystore is None:
        raise RpcError(NOT_FOUND, "this node has no keystore; submit pre-signed messages with 'raw'")
    try:
        return node.keystore.signing_key(name)
    except KeystoreError as e:
        raise RpcError(NOT_FOUND, str(e)) from None


def _store_full(e: Exception) -> RpcError:
    """The error of an RPC write refused because the store is full (logged: the operator
    must free disk space)."""
    logging.getLogger("labelmesh.rpc").error("refused an RPC write, store full: %s", e)
    return RpcError(STORE_FULL, f"store is full: {e}. Free disk space; the node resumes by itself.")


async def _ingest_or_raise(node, raw: bytes) -> tuple[bytes, str]:
    return (await _ingest_many_or_raise(node, [raw]))[0]


async def _ingest_many_or_raise(node, raws: list[bytes], decoded=None) -> list[tuple[bytes, str]]:
    """Ingest ``raws`` in ONE pipeline run (one group commit for all of them, not one
    fsync each); (id, "accepted" | "duplicate") per message, or RpcError for the first
    message that was rejected or ignored (the valid ones are stored all the same)."""
    from .store import StoreFullError

    try:
        results = await node.ingest_many(raws, "rpc", publish=True, decoded=decoded)
    except StoreFullError as e:
        raise _store_full(e) from None
    out = []
    for v, mid in results:
        if v.ok:
            out.append((mid, "accepted"))
        elif v.outcome is Outcome.IGNORE and v.reason == "duplicate":
            out.append((mid, "duplicate"))
        else:
            raise RpcError(REJECTED, f"message {'rejected' if v.outcome is Outcome.REJECT else 'ignored'}: {v.reason}", {"outcome": v.outcome.value})
    return out


def _fx(v: int) -> float:
    return round(v / ONE, 4)


# ---------------------------------------------------------------- methods

async def node_info(node, params):
    """Identity, network, listen addresses, peers and message counts of this node."""
    c = node.counters
    peers = node.p2p.peers() if node.p2p else []
    return {
        "version": VERSION,
        "pid": os.getpid(),
        "peer_id": node.peer_id,
        "network_id": node.network_id.hex(),
        "network_name": node.genesis.name,
        "listen_addrs": node.p2p.listen_addrs() if node.p2p else [],
        "peer_count": len(peers),
        "data_dir": str(node.data_dir),
        "time_ms": node.clock(),
        "uptime_s": (node.clock() - node.started_at) // 1000,
        "tasks": len(node.tasks),
        "messages": {
            "stored": node.store.count(),
            "by_kind": {KIND_NAMES.get(k, str(k)): n for k, n in node.store.count_by_kind().items()},
            "accepted": c.accepted, "rejected": c.rejected, "ignored": c.ignored,
            "duplicates": c.duplicates, "published": c.published,
            "published_envelopes": c.published_envelopes,
            "orphans": len(node._orphans),
            # hostile-peer defences (node/ratelimit.py, the per-annotator cap, p2p offender bans)
            "rate_limited": c.rate_limited, "over_batch_cap": c.over_batch_cap,
            "votes_not_stored": c.votes_not_stored,
            "offenders_banned": (node.p2p.stats().get("offenders_banned", 0)
                                 if node.p2p is not None and hasattr(node.p2p, "stats") else 0),
        },
        "gossip": (node.p2p.stats() if node.p2p is not None and hasattr(node.p2p, "stats") else {}),
        "sync": _sync_summary(node),
        "blobs": node.blobs.status() if hasattr(node, "blobs") else None,
        "tasks_by_state": task_state_counts(node),
        "store": store_summary(node),
        "metrics_url": node.metrics.url if hasattr(node, "metrics") else None,
    }


def _sync_summary(node) -> dict:
    if node.sync is None:
        return {"peers": 0}
    st = node.sync.status()["peers"]
    last = [p["last_sync_ms"] for p in st if p["last_sync_ms"]]
    return {"peers": len(st), "synced_peers": len(last), "last_sync_ms": max(last) if last else None,
            "lag_tasks": max((p["lag_tasks"] for p in st), default=0),
            "fetched": sum(p["fetched"] for p in st), "served": sum(p["served"] for p in st)}


async def sync_status(node, params):
    """Anti-entropy sync per peer: last sync, messages fetched/served, lag (tasks that differed), errors."""
    if node.sync is None:
        return {"protocol": None, "peers": []}
    return node.sync.status()


async def peers_list(node, params):
    """Connected peers: [{peer_id, addrs}]."""
    return {"peers": node.p2p.peers() if node.p2p else []}


async def rpc_methods(node, params):
    """Names and one-line descriptions of every RPC method."""
    return {"methods": {name: (fn.__doc__ or "").strip().split("\n")[0] for name, fn in sorted(METHODS.items())}}


def _parse_items(raw_items) -> tuple[Item, ...]:
    if not isinstance(raw_items, list) or not raw_items:
        raise RpcError(INVALID_PARAMS, "param 'items' must be a non-empty list")
    out = []
    for k, it in enumerate(raw_items):
        if isinstance(it, str):
            out.append(Item(ITEM_TEXT, text=it))
        elif isinstance(it, dict) and isinstance(it.get("text"), str):
            out.append(Item(ITEM_TEXT, text=it["text"]))
        elif isinstance(it, dict) and isinstance(it.get("sha256"), str):
            try:
                digest = bytes.fromhex(it["sha256"])
                size = int(it["size"])
            except (ValueError, KeyError, TypeError):
                raise RpcError(INVALID_PARAMS, f"item {k}: blob items need hex 'sha256' and integer 'size'") from None
            if len(digest) != 32:
                raise RpcError(INVALID_PARAMS, f"item {k}: sha256 must be 32 bytes")
            out.append(Item(ITEM_BLOB, digest=digest, size=size, media_type=str(it.get("media_type", "application/octet-stream"))))
        elif isinstance(it, dict) and isinstance(it.get("hex"), str):
            try:
                payload = bytes.fromhex(it["hex"])
            except ValueError:
                raise RpcError(INVALID_PARAMS, f"item {k}: 'hex' must be hex") from None
            out.append(Item(ITEM_BYTES, payload=payload, media_type=str(it.get("media_type", "application/octet-stream"))))
        else:
            raise RpcError(INVALID_PARAMS, f"item {k}: expected a string or an object with 'text', 'hex', 'sha256' or 'file'")
    return tuple(out)


async def _import_files(node, items):
    """{"file": "/abs/path"} items -> blob items, after copying the file into the blob store (node/blobs.py)."""
    from .blobs import BlobInputError
    from .store import StoreFullError

    try:
        return await node.blobs.import_items(items)
    except BlobInputError as e:
        raise RpcError(INVALID_PARAMS, str(e)) from None
    except StoreFullError as e:
        logging.getLogger("labelmesh.rpc").error("cannot store a task_post file: %s", e)
        raise RpcError(STORE_FULL, str(e)) from None


async def task_post(node, params):
    """Sign a task announcement with a local account (or take a pre-signed 'raw'), store it and gossip it."""
    if "raw" in params:
        mid, status = await _ingest_or_raise(node, _hex(params, "raw", None))
        return {"task_id": mid.hex(), "status": status}
    sk = _signing_key(node, params)
    labels = _get(params, "labels", list)
    if not all(isinstance(x, str) for x in labels):
        raise RpcError(INVALID_PARAMS, "param 'labels' must be a list of strings")
    now = node.clock()
    gold = params.get("gold")
    commitment = salt = None
    if gold is not None:
        if not isinstance(gold, list) or not gold or not all(
                isinstance(g, list) and len(g) == 2 and isinstance(g[0], int) for g in gold):
            raise RpcError(INVALID_PARAMS, "param 'gold' must be a list of [item_index, label] pairs")
        gold_pairs = {}
        for i, lab in gold:
            if isinstance(lab, str):
                if lab not in labels:
                    raise RpcError(INVALID_PARAMS, f"gold label {lab!r} is not one of {labels}")
                lab = labels.index(lab)
            if not isinstance(lab, int) or isinstance(lab, bool) or not 0 <= lab < len(labels):
                raise RpcError(INVALID_PARAMS, "gold labels must be label names or indexes")
            gold_pairs[i] = lab
        gold = sorted(gold_pairs.items())
        salt = secrets.token_bytes(32)
        commitment = compute_gold_commitment(salt, gold)
    if "deadline_ms" in params:
        deadline = _get(params, "deadline_ms", int)
    else:
        dur = _get(params, "duration_s", (int, float), 3600)
        deadline = now + int(dur * 1000)
    task = TaskAnnouncement(
        requester=bytes(sk.verify_key), nonce=_get(params, "nonce", int, secrets.randbits(63)),
        created_at=now, deadline=deadline, title=_get(params, "title", str, ""),
        schema=LabelSchema(SCHEMA_SINGLE_CHOICE, _get(params, "domain", str, ""), tuple(labels)),
        items=_parse_items(await _import_files(node, params.get("items"))), redundancy=_get(params, "redundancy", int, 3),
        bounty=_get(params, "bounty", int, 0), gold_commitment=commitment, reward_rule=0)
    if gold is not None and any(i >= len(task.items) for i, _ in gold):
        raise RpcError(INVALID_PARAMS, f"gold item index out of range (the task has {len(task.items)} items)")
    try:
        msg = sign_message(task, sk, node.network_id)
    except Exception as e:
        raise RpcError(INVALID_PARAMS, f"cannot encode task: {e}") from None
    if gold is not None:
        # The secret is on disk before the commitment is published: the node can always reveal.
        from .store import StoreFullError

        try:
            await node.remember_gold(msg.compute_id(node.network_id), params["account"], salt, gold)
        except StoreFullError as e:
            raise _store_full(e) from None
    try:
        mid, status = await _ingest_or_raise(node, msg.raw)
    except RpcError:
        if gold is not None:  # refused, so never stored nor published: its secret is no use
            await node.forget_gold([msg.compute_id(node.network_id)])
        raise
    return {"task_id": mid.hex(), "status": status, "items": len(task.items), "deadline_ms": deadline}


def _task_summary(node, tid: bytes, t: TaskAnnouncement) -> dict:
    return {"task_id": tid.hex(), "title": t.title, "requester": t.requester.hex(),
            "created_at": t.created_at, "deadline_ms": t.deadline, "items": len(t.items),
            "labels": list(t.schema.labels), "domain": t.schema.domain, "bounty": t.bounty,
            "redundancy": t.redundancy, "status": node.task_status(tid),
            "has_gold": t.gold_commitment is not None}


async def task_get(node, params):
    """A task announcement, decoded, with its items."""
    tid = _task_id(node, params)
    t = node.tasks[tid]
    d = _task_summary(node, tid, t)
    d["items"] = [_item_json(it) for it in t.items]
    d["batches"] = len(node.store.task_message_ids(tid, KIND_BATCH))
    return d


def _item_json(it: Item) -> dict:
    if it.item_type == ITEM_TEXT:
        return {"text": it.text}
    if it.item_type == ITEM_BYTES:
        return {"hex": it.payload.hex(), "media_type": it.media_type}
    return {"sha256": it.digest.hex(), "size": it.size, "media_type": it.media_type}


async def tasks_list(node, params):
    """Known tasks, newest first: {"tasks": [{task_id, title, status, items, deadline_ms, ...}]}."""
    limit, offset = _page(params)
    ordered = sorted(node.tasks.items(), key=lambda kv: (-kv[1].created_at, kv[0]))
    return {"tasks": [_task_summary(node, tid, t) for tid, t in ordered[offset: offset + limit]],
            "total": len(ordered)}


async def annotations_submit(node, params):
    """Submit labels: signed here by a local 'account', or pre-signed envelopes in 'raw'.
    Acknowledged only once durably stored; then gossiped."""
    if "raw" in params:
        raws = params["raw"]
        single = isinstance(raws, str)
        if single:
            raws = [raws]
        if not isinstance(raws, list) or not all(isinstance(r, str) for r in raws):
            raise RpcError(INVALID_PARAMS, "param 'raw' must be a hex string or a list of them")
        if len(raws) > MAX_RAW_PER_CALL:
            raise RpcError(INVALID_PARAMS, f"at most {MAX_RAW_PER_CALL} raw messages per call")
        out = []
        datas, msgs = [], []
        for r in raws:
            try:
                data = bytes.fromhex(r)
            except ValueError:
                raise RpcError(INVALID_PARAMS, "param 'raw' must be hex") from None
            try:
                decoded = decode_message(data, node.params)
            except DecodeError as e:
                raise RpcError(REJECTED, f"message rejected: decode: {e}") from None
            if decoded.kind != KIND_BATCH:
                raise RpcError(INVALID_PARAMS, "annotations_submit takes annotation batches; use task_post for tasks")
            datas.append(data)
            msgs.append(decoded)
        for (mid, status), m in zip(await _ingest_many_or_raise(node, datas, msgs), msgs):
            out.append({"batch_id": mid.hex(), "status": status, "labels": len(m.body.labels)})
        return out[0] if single else {"results": out}
    sk = _signing_key(node, params)
    tid = _task_id(node, params)
    task = node.tasks[tid]
    pairs = _get(params, "labels", list)
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
    batch = AnnotationBatch(annotator=bytes(sk.verify_key), task_id=tid, created_at=node.clock(),
                            labels=tuple(sorted(parsed.items())))
    msg = sign_message(batch, sk, node.network_id)
    mid, status = await _ingest_or_raise(node, msg.raw)
    return {"batch_id": mid.hex(), "status": status, "labels": len(batch.labels)}


async def annotations_list(node, params):
    """Annotation batches of a task in arrival order: [{batch_id, annotator, created_at, labels}]."""
    tid = _task_id(node, params)
    limit, offset = _page(params)
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


async def _current_result(node, tid: bytes):
    """(certificate or None, certified result or None, the result to show: the certified
    one if this node holds its whole set, else the provisional one), aggregated off the
    event loop if the task is big."""
    if not await node.finality.prepare_certified_result(tid):
        await node.prepare_result(tid)
    cert, cres = node.finality.certified_result(tid)  # cached now
    return cert, cres, (cres if cres is not None else node.task_result(tid))


async def consensus_get(node, params):
    """Consensus of a task over the annotation set this node holds (provisional until certified):
    set_root, result_root, per-item label/confidence/agreement/votes, per-annotator accuracy and reward."""
    tid = _task_id(node, params)
    cert, cres, res = await _current_result(node, tid)
    status = "certified" if cres is not None else ("certified-fetching" if cert is not None else "provisional")
    task = node.tasks[tid]
    names = task.schema.labels
    out = {
        "task_id": tid.hex(), "status": status, "task_status": node.task_status(tid),
        "certificate": _cert_json(node, cert),
        "set_root": res.set_root.hex(), "result_root": res.result_root.hex(),
        "batches": len(res.batch_ids) - len(set(res.batch_ids) & set(node.store.task_message_ids(tid, KIND_GOLD))),
        "pinned": len(res.batch_ids), "gold_items": res.gold_items, "labels": sum(res.votes), "alpha": res.alpha, "alpha_f": _fx(res.alpha),
        "refund": res.refund, "bounty": task.bounty,
        "annotators": [{"account": a.account.hex(), "labels": a.labels, "accuracy": a.accuracy,
                        "accuracy_f": _fx(a.accuracy), "reward": a.reward} for a in res.annotators],
        "equivocations": [{"account": a.hex(), "item": i} for a, i in res.equivocations],
    }
    if _get(params, "items", bool, True):
        limit, offset = _page({"limit": params.get("limit", MAX_LIST), "offset": params.get("offset", 0)})
        out["items"] = [
            {"item": i, "label": (names[l] if l >= 0 else None), "label_index": l,
             "confidence": res.confidence[i], "confidence_f": _fx(res.confidence[i]),
             "agreement": res.agreement[i], "agreement_f": _fx(res.agreement[i]), "votes": res.votes[i]}
            for i, l in list(enumerate(res.label))[offset: offset + limit]]
    return out


def _cert_json(node, cert) -> dict | None:
    if cert is None:
        return None
    weights = dict(node.genesis.validators)
    return {"round": cert.round, "set_root": cert.set_root.hex(), "result_root": cert.result_root.hex(),
            "signers": [m.body.validator.hex() for m in cert.attestations],
            "weight": sum(weights.get(m.body.validator, 0) for m in cert.attestations),
            "total_weight": node.genesis.total_validator_weight}


async def certificate_get(node, params):
    """The finality certificate of a task (if any), encoded (hex) and summarised, plus the finality state."""
    from protocol.finality import encode_certificate

    tid = _task_id(node, params)
    fin = node.finality.machine(tid)
    cert = fin.certificate
    return {"task_id": tid.hex(), "certified": cert is not None, "certificate": _cert_json(node, cert),
            "encoded": encode_certificate(cert).hex() if cert is not None else None,
            "finality": fin.status()}


async def gold_reveal(node, params):
    """Reveal a task's hidden gold now (after its deadline): from the secret this node kept
    at task_post, or a pre-signed GoldReveal in 'raw'. Nodes also reveal automatically."""
    if "raw" in params:
        mid, status = await _ingest_or_raise(node, _hex(params, "raw", None))
        return {"reveal_id": mid.hex(), "status": status}
    tid = _task_id(node, params)
    if node.clock() < node.tasks[tid].deadline:
        raise RpcError(REJECTED, "gold can only be revealed after the task's deadline")
    v, mid = await node.reveal_gold(tid)
    if not v.ok and v.reason != "duplicate":
        raise RpcError(REJECTED, f"gold reveal refused: {v.reason}")
    return {"reveal_id": mid.hex() if mid else None, "status": "accepted" if v.ok else "duplicate"}


def _account_filter(node, params) -> bytes | None:
    """'account' may be a local account name or a 64-hex public key."""
    if "account" not in params:
        return None
    v = _get(params, "account", str)
    if len(v) == 64:
        try:
            return bytes.fromhex(v)
        except ValueError:
            pass
    if node.keystore is not None:
        try:
            return node.keystore.public_key(v)
        except KeystoreError as e:
            raise RpcError(NOT_FOUND, str(e)) from None
    raise RpcError(NOT_FOUND, f"unknown account {v!r}")


async def rewards_get(node, params):
    """Rewards from certified tasks: per account per task and totals ({account?: name|hex, task_id?}).
    Uncertified tasks pay nothing yet; they are counted in 'pending_tasks' (so is a certified
    task whose certified result this node cannot reproduce yet: batches still being fetched)."""
    who = _account_filter(node, params)
    only = _hex(params, "task_id") if "task_id" in params else None
    rows, totals, refunds, pending = [], {}, 0, 0
    for tid, t in sorted(node.tasks.items(), key=lambda kv: (kv[1].deadline, kv[0])):
        if only is not None and tid != only:
            continue
        paid = node.certified_rewards(tid)
        if paid is None:
            pending += 1
            continue
        refund, annotators = paid
        refunds += refund
        for account, reward, labels, accuracy in annotators:
            if who is not None and account != who:
                continue
            rows.append({"task_id": tid.hex(), "account": account.hex(), "reward": reward, "labels": labels,
                         "accuracy": accuracy, "accuracy_f": _fx(accuracy)})
            totals[account.hex()] = totals.get(account.hex(), 0) + reward
    return {"rewards": rows, "totals": [{"account": k, "reward": v} for k, v in
                                        sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))],
            "refunded": refunds, "pending_tasks": pending}


async def reputation_get(node, params):
    """Reputation per (account, domain) from every certified task known now, with the
    weight a new task would give ({account?: name|hex, domain?})."""
    from protocol.reputation import compute_earned, compute_weight

    who = _account_filter(node, params)
    dom = _get(params, "domain", str, None)
    outcomes = [o for o in (node.task_outcome(t) for t in sorted(node.tasks) if node.finality.is_certified(t))
                if o is not None]
    earned = compute_earned(outcomes)
    keys = set(earned) | {(a, d) for a, d, _ in node.genesis.reputation}
    labels = {}
    for o in outcomes:
        for a in o.annotators:
            labels[(a.account, o.domain)] = labels.get((a.account, o.domain), 0) + a.labels
    rows = []
    for a, d in sorted(keys):
        if (who is not None and a != who) or (dom is not None and d != dom):
            continue
        w = compute_weight(a, d, earned, node.genesis.reputation, node.params)
        rows.append({"account": a.hex(), "domain": d, "earned": earned.get((a, d), 0),
                     "earned_f": _fx(earned.get((a, d), 0)), "weight": w, "weight_f": _fx(w),
                     "labels": labels.get((a, d), 0)})
    rows.sort(key=lambda r: (-r["weight"], r["account"], r["domain"]))
    return {"reputation": rows, "certified_tasks": len(outcomes), "fresh_weight": node.params.fresh_weight,
            "lag_ms": node.params.reputation_lag_ms}


async def task_export(node, params):
    """The consensus dataset of a task as 'jsonl', 'csv' or 'labelstudio' (Label Studio JSON import)
    text: item, label, confidence, agreement, votes (certified result if there is one)."""
    tid = _task_id(node, params)
    fmt = _get(params, "format", str, "jsonl")
    if fmt not in ("jsonl", "csv", "labelstudio"):
        raise RpcError(INVALID_PARAMS, "format must be jsonl, csv or labelstudio")
    _, cres, res = await _current_result(node, tid)
    status = "certified" if cres is not None else "provisional"
    task = node.tasks[tid]
    if len(task.items) >= EXPORT_THREAD_MIN_ITEMS:  # ~4 us per item per format: off the event loop
        content = await trio.to_thread.run_sync(_export_content, task, res, tid, status, fmt)
    else:
        content = _export_content(task, res, tid, status, fmt)
    return {"task_id": tid.hex(), "format": fmt, "status": status, "result_root": res.result_root.hex(),
            "items": len(task.items), "content": content}


#: task_export formats tasks of at least this many items in a worker thread.
EXPORT_THREAD_MIN_ITEMS = 5_000


def _export_content(task, res, tid: bytes, status: str, fmt: str) -> str:
    """task_export's text (pure: runs in a worker thread for big tasks)."""
    import csv as _csv
    import io
    import json as _json

    names = task.schema.labels
    rows = []
    for i, it in enumerate(task.items):
        l = res.label[i]
        rows.append({"item": i, "data": _item_json(it), "label": names[l] if l >= 0 else None,
                     "confidence": round(res.confidence[i] / ONE, 6), "agreement": round(res.agreement[i] / ONE, 6),
                     "votes": res.votes[i]})
    if fmt == "jsonl":
        return "".join(_json.dumps(r) + "\n" for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = _csv.writer(buf, lineterminator="\n")
        w.writerow(["item", "text", "label", "confidence", "agreement", "votes"])
        for r in rows:
            w.writerow([r["item"], r["data"].get("text", r["data"].get("sha256", "")), r["label"] or "",
                        r["confidence"], r["agreement"], r["votes"]])
        return buf.getvalue()
    ls = []
    for r in rows:
        entry = {"id": r["item"], "data": {"text": r["data"].get("text", "")} if "text" in r["data"] else r["data"],
                 "meta": {"labelmesh_task": tid.hex(), "status": status, "votes": r["votes"],
                          "agreement": r["agreement"]}}
        if r["label"] is not None:
            entry["predictions"] = [{"model_version": f"labelmesh-{status}", "score": r["confidence"],
                                     "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                                 "value": {"choices": [r["label"]]}}]}]
        ls.append(entry)
    # One Label Studio task per line: json's C encoder per entry (indent= would use the
    # pure-Python encoder, ~10x slower: 5 s for 100,000 items).
    return "[\n" + ",\n".join(_json.dumps(e) for e in ls) + "\n]\n"


async def backup_create(node, params):
    """Consistent hot backup into 'dest' (an absolute path to a new or empty directory): a
    compacted LMDB copy of the store taken in one read snapshot while the node keeps running,
    plus config, genesis and keys, and a manifest. The copy is a data dir: `labelmesh run`
    starts from it, `labelmesh restore` copies it to a new place."""
    import trio

    from .backup import BackupError, create_backup
    from .store import StoreError

    dest = _get(params, "dest", str)
    if not os.path.isabs(dest):
        raise RpcError(INVALID_PARAMS, "param 'dest' must be an absolute path (the node's working directory is not yours)")
    try:
        return await trio.to_thread.run_sync(create_backup, node, dest)
    except (BackupError, StoreError) as e:
        raise RpcError(APP_ERROR, str(e)) from None
    except OSError as e:
        raise RpcError(APP_ERROR, f"cannot write the backup into {dest}: {e.strerror or e}") from None


async def account_list(node, params):
    """The node's local accounts: [{name, public_key}] (never the keys)."""
    return {"accounts": node.keystore.list() if node.keystore else []}


async def messages_arrival(node, params):
    """When this node stored each of 'ids' (clock ms; null if not stored since start or too long
    ago -- the newest 200,000 are kept): {"arrival_ms": [...]} in the order of 'ids'."""
    ids = _get(params, "ids", list)
    if len(ids) > MAX_LIST or not all(isinstance(i, str) for i in ids):
        raise RpcError(INVALID_PARAMS, f"param 'ids' must be a list of at most {MAX_LIST} hex ids")
    try:
        keys = [bytes.fromhex(i) for i in ids]
    except ValueError:
        raise RpcError(INVALID_PARAMS, "param 'ids' must hold hex ids") from None
    got = node.arrival_ms.get
    return {"arrival_ms": [got(k) for k in keys]}


METHODS = {f.__name__: f for f in [
    node_info, peers_list, sync_status, rpc_methods, task_post, task_get, tasks_list, annotations_submit,
    annotations_list, consensus_get, certificate_get, gold_reveal, rewards_get, reputation_get, task_export,
    account_list, backup_create, messages_arrival,
]}


def _register_blob_methods() -> None:
    from .blobs import RPC_METHODS as _blob_methods  # defined in node/blobs.py, which imports this module
    METHODS.update({f.__name__: f for f in _blob_methods})


_register_blob_methods()

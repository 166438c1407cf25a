"""Anti-entropy sync: range-based set reconciliation over sorted message ids.

How it works
------------
Every message belongs to one task (a task announcement to itself). Per task a
node keeps the sorted list of the ids it holds. The puller A asks a peer B:

1. ``SUMMARY(cursor, limit)`` -> B's tasks with ``(task_id, count, fingerprint)``,
   a page at a time. A compares with its own fingerprints; equal tasks are done.
2. For each differing task, ``RANGE(task_id, lo, hi)`` -> if B holds at most
   ``LEAF_IDS`` ids in [lo, hi) it returns them; otherwise it splits them into
   ``FANOUT`` sub-ranges of equal count and returns ``(lo_i, hi_i, count_i, fp_i)``
   for each. A compares each fingerprint with its own over the same bounds and
   recurses only where they differ (like Negentropy / range-based set
   reconciliation: cost grows with the difference, not with the set).
3. ``GET(ids)`` -> the raw messages, at most ``MAX_GET_IDS`` per request and a
   bounded number of bytes per response (the rest is asked for again).

Sync is pull-only and symmetric: B pulls from A on its own schedule. Every
fetched message goes through the same validation as gossip. All frames are
canonical msgpack arrays decoded with explicit limits; this module is pure
(no I/O) and the node (``node/services/sync.py``) moves the bytes.

fingerprint(ids) = sha256("labelmesh/fp/v1" || (sum of ids as 256-bit big-endian
integers mod 2^256) || count as u64)[:16]. Sums are order-independent and can be
updated incrementally; an adversary who forges a collision can only hide
messages from us that it could withhold anyway, and other peers still sync.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from .codec import pack, sha256, unpack
from .errors import DecodeError

REQ_SUMMARY = 0
REQ_RANGE = 1
REQ_GET = 2
REQ_CERTIFIED = 3

RESP_IDS = 0
RESP_SPLIT = 1

LEAF_IDS = 128          # a range with at most this many ids is answered with the ids
FANOUT = 16             # sub-ranges per split
MAX_SUMMARY_TASKS = 1024
MAX_GET_IDS = 1024
MAX_CERTIFIED_TASKS = 64  # tasks per CERTIFIED request
MAX_CERTIFIED_BIN = 8 << 20  # a certificate or a result's bytes in a CERTIFIED answer (protocol/replica.py)
MAX_RESPONSE_BYTES = 8 << 20
MAX_REQUEST_BYTES = 64 << 10
FP_TAG = b"labelmesh/fp/v1\x00"
MOD = 1 << 256
ID_LEN = 32


class SyncProtocolError(DecodeError):
    """A sync frame is malformed or over a limit (the peer is misbehaving)."""


def id_int(i: bytes) -> int:
    return int.from_bytes(i, "big")


def fingerprint_from_sum(total: int, count: int) -> bytes:
    return sha256(FP_TAG + (total % MOD).to_bytes(32, "big") + count.to_bytes(8, "big"))[:16]


def compute_fingerprint(ids) -> bytes:
    total = 0
    n = 0
    for i in ids:
        total += id_int(i)
        n += 1
    return fingerprint_from_sum(total, n)


def range_slice(sorted_ids: list[bytes], lo: bytes, hi: bytes | None) -> tuple[int, int]:
    a = bisect.bisect_left(sorted_ids, lo)
    b = len(sorted_ids) if hi is None else bisect.bisect_left(sorted_ids, hi)
    return a, max(a, b)


# ------------------------------------------------------------------ frames


def encode_summary_request(cursor: bytes, limit: int) -> bytes:
    return pack([REQ_SUMMARY, cursor, limit])


def encode_range_request(task_id: bytes, lo: bytes, hi: bytes | None) -> bytes:
    return pack([REQ_RANGE, task_id, lo, hi])


def encode_get_request(ids) -> bytes:
    return pack([REQ_GET, list(ids)])


def encode_certified_request(task_ids) -> bytes:
    return pack([REQ_CERTIFIED, list(task_ids)])


@dataclass(frozen=True)
class Request:
    kind: int
    cursor: bytes = b""
    limit: int = 0
    task_id: bytes = b""
    lo: bytes = b""
    hi: bytes | None = None
    ids: tuple[bytes, ...] = ()


def _need(c: bool, what: str) -> None:
    if not c:
        raise SyncProtocolError(what)


def _is_bound(v, allow_none: bool) -> bool:
    if v is None:
        return allow_none
    return type(v) is bytes and len(v) <= ID_LEN


def decode_request(data: bytes) -> Request:
    """Decode a sync request; raise SyncProtocolError if malformed or over a limit."""
    try:
        f = unpack(data, max_bytes=MAX_REQUEST_BYTES, max_array=MAX_GET_IDS, max_bin=ID_LEN, max_str=0)
    except DecodeError as e:
        raise SyncProtocolError(f"sync request: {e}") from None
    _need(type(f) is list and len(f) >= 2 and type(f[0]) is int, "sync request must be [kind, ...]")
    if f[0] == REQ_SUMMARY:
        _need(len(f) == 3 and _is_bound(f[1], False) and type(f[2]) is int and 1 <= f[2] <= MAX_SUMMARY_TASKS,
              f"summary request must be [0, cursor, limit 1..{MAX_SUMMARY_TASKS}]")
        return Request(REQ_SUMMARY, cursor=f[1], limit=f[2])
    if f[0] == REQ_RANGE:
        _need(len(f) == 4 and type(f[1]) is bytes and len(f[1]) == ID_LEN and _is_bound(f[2], False)
              and _is_bound(f[3], True), "range request must be [1, task_id, lo, hi|nil]")
        return Request(REQ_RANGE, task_id=f[1], lo=f[2], hi=f[3])
    if f[0] == REQ_GET:
        _need(len(f) == 2 and type(f[1]) is list and 1 <= len(f[1]) <= MAX_GET_IDS
              and all(type(i) is bytes and len(i) == ID_LEN for i in f[1]),
              f"get request must be [2, [id, ...]] with 1..{MAX_GET_IDS} 32-byte ids")
        return Request(REQ_GET, ids=tuple(f[1]))
    if f[0] == REQ_CERTIFIED:
        _need(len(f) == 2 and type(f[1]) is list and 1 <= len(f[1]) <= MAX_CERTIFIED_TASKS
              and all(type(i) is bytes and len(i) == ID_LEN for i in f[1]),
              f"certified request must be [3, [task_id, ...]] with 1..{MAX_CERTIFIED_TASKS} 32-byte ids")
        return Request(REQ_CERTIFIED, ids=tuple(f[1]))
    raise SyncProtocolError(f"unknown sync request kind {f[0]}")


def encode_summary_response(rows: list[tuple[bytes, int, bytes]], next_cursor: bytes | None) -> bytes:
    return pack([[[t, c, fp] for t, c, fp in rows], next_cursor])


def decode_summary_response(data: bytes) -> tuple[list[tuple[bytes, int, bytes]], bytes | None]:
    try:
        f = unpack(data, max_bytes=MAX_RESPONSE_BYTES, max_array=MAX_SUMMARY_TASKS, max_bin=ID_LEN, max_str=0)
    except DecodeError as e:
        raise SyncProtocolError(f"summary response: {e}") from None
    _need(type(f) is list and len(f) == 2 and type(f[0]) is list and _is_bound(f[1], True),
          "summary response must be [[row...], next_cursor|nil]")
    rows = []
    for r in f[0]:
        _need(type(r) is list and len(r) == 3 and type(r[0]) is bytes and len(r[0]) == ID_LEN
              and type(r[1]) is int and r[1] >= 0 and type(r[2]) is bytes and len(r[2]) == 16,
              "summary row must be [task_id, count, fingerprint16]")
        rows.append((r[0], r[1], r[2]))
    return rows, f[1]


def encode_range_response(sorted_ids: list[bytes], lo: bytes, hi: bytes | None) -> bytes:
    """B's answer to RANGE(lo, hi) over its sorted ids: the ids, or FANOUT fingerprinted splits."""
    a, b = range_slice(sorted_ids, lo, hi)
    n = b - a
    if n <= LEAF_IDS:
        return pack([RESP_IDS, sorted_ids[a:b]])
    parts = []
    step = -(-n // FANOUT)
    start = a
    while start < b:
        end = min(b, start + step)
        sub_lo = lo if start == a else sorted_ids[start]
        sub_hi = hi if end == b else sorted_ids[end]
        parts.append([sub_lo, sub_hi, end - start, compute_fingerprint(sorted_ids[start:end])])
        start = end
    return pack([RESP_SPLIT, parts])


def decode_range_response(data: bytes):
    """-> ("ids", [ids]) or ("split", [(lo, hi, count, fp)])."""
    try:
        f = unpack(data, max_bytes=MAX_RESPONSE_BYTES, max_array=max(LEAF_IDS, FANOUT), max_bin=ID_LEN, max_str=0)
    except DecodeError as e:
        raise SyncProtocolError(f"range response: {e}") from None
    _need(type(f) is list and len(f) == 2 and type(f[0]) is int and type(f[1]) is list,
          "range response must be [mode, list]")  # type(): False == 0 must not pass as mode 0
    if f[0] == RESP_IDS:
        _need(all(type(i) is bytes and len(i) == ID_LEN for i in f[1]), "range ids must be 32 bytes")
        _need(all(f[1][k] < f[1][k + 1] for k in range(len(f[1]) - 1)), "range ids must be sorted")
        return "ids", list(f[1])
    if f[0] == RESP_SPLIT:
        out = []
        for p in f[1]:
            _need(type(p) is list and len(p) == 4 and _is_bound(p[0], False) and _is_bound(p[1], True)
                  and type(p[2]) is int and p[2] >= 0 and type(p[3]) is bytes and len(p[3]) == 16,
                  "split must be [lo, hi|nil, count, fp16]")
            out.append((p[0], p[1], p[2], p[3]))
        _need(len(out) >= 1, "empty split")
        return "split", out
    raise SyncProtocolError(f"unknown range response mode {f[0]}")


def encode_get_response(raws: list[bytes]) -> bytes:
    return pack(raws)


def decode_get_response(data: bytes, max_message_bytes: int) -> list[bytes]:
    try:
        f = unpack(data, max_bytes=MAX_RESPONSE_BYTES, max_array=MAX_GET_IDS, max_bin=max_message_bytes, max_str=0)
    except DecodeError as e:
        raise SyncProtocolError(f"get response: {e}") from None
    _need(type(f) is list and all(type(x) is bytes for x in f), "get response must be [raw, ...]")
    return f


def encode_certified_response(rows: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """CERTIFIED answer: ``[[task_id, certificate, R], ...]`` for the asked tasks the
    responder can prove (protocol/replica.py), a prefix that fits MAX_RESPONSE_BYTES."""
    return pack([[t, c, r] for t, c, r in rows])


def decode_certified_response(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    try:
        f = unpack(data, max_bytes=MAX_RESPONSE_BYTES, max_array=MAX_CERTIFIED_TASKS, max_bin=MAX_CERTIFIED_BIN,
                   max_str=0)
    except DecodeError as e:
        raise SyncProtocolError(f"certified response: {e}") from None
    _need(type(f) is list and all(type(r) is list and len(r) == 3 and type(r[0]) is bytes and len(r[0]) == ID_LEN
                                  and type(r[1]) is bytes and type(r[2]) is bytes for r in f),
          "certified response must be [[task_id, certificate, result], ...]")
    return [(r[0], r[1], r[2]) for r in f]


def select_get_response(raws_by_id: list[bytes | None], budget: int = MAX_RESPONSE_BYTES - 1024) -> list[bytes]:
    """The prefix of the held messages that fits ``budget`` bytes (at least one if any)."""
    out, used = [], 0
    for r in raws_by_id:
        if r is None:
            continue
        if out and used + len(r) + 8 > budget:
            break
        out.append(r)
        used += len(r) + 8
    return out


def compare_split(local_sorted: list[bytes], parts) -> list[tuple[bytes, bytes | None]]:
    """Sub-ranges of a peer's split whose fingerprint differs from ours (to recurse into)."""
    todo = []
    for lo, hi, count, fp in parts:
        a, b = range_slice(local_sorted, lo, hi)
        if b - a != count or compute_fingerprint(local_sorted[a:b]) != fp:
            if count > 0:
                todo.append((lo, hi))
    return todo

"""The on-disk layout of the store: named databases, key encodings, reserved meta keys
and the record type (see ``node/storage/store.py`` for the table of key layouts).  Pure:
no lmdb here, so migrations and tests can share the names."""
from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import msgpack

from .errors import BadInputError

SCHEMA_VERSION = 1
"""On-disk layout version this code reads and writes (``meta["schema_version"]``)."""

ID_LEN = 32          # bytes in a msg_id / task_id
SEQ_LEN = 8          # bytes in an encoded seq
MAX_SEQ = (1 << 64) - 1
MAX_DBS = 16         # named databases the environment can hold (6 used; room to grow)
DATA_FILE = "data.mdb"

META_SCHEMA_VERSION = "schema_version"
META_NEXT_SEQ = "next_seq"
META_KIND_COUNTS = "kind_counts"
RESERVED_META_KEYS = frozenset({META_SCHEMA_VERSION, META_NEXT_SEQ, META_KIND_COUNTS})

DB_NAMES = ("msgs", "arrival", "by_task", "by_kind", "meta", "derived")


class Record(NamedTuple):
    """One message as the store keeps it.

    msg_id:  32-byte content hash of the signed message.
    kind:    message kind, 0..255 (the protocol's message type tag).
    task_id: 32-byte id of the task the message belongs to; a task announcement uses its
             own msg_id.
    raw:     the signed message bytes, exactly as received.
    """

    msg_id: bytes
    kind: int
    task_id: bytes
    raw: bytes


def check_id(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != ID_LEN:
        got = f"{len(value)} bytes" if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise BadInputError(f"{what} must be {ID_LEN} bytes, got {got}")
    return value


def check_kind(kind: object) -> int:
    if not isinstance(kind, int) or isinstance(kind, bool) or not 0 <= kind <= 255:
        raise BadInputError(f"kind must be an int in 0..255, got {kind!r}")
    return kind


def check_record(record: object) -> Record:
    if not isinstance(record, Record):
        raise BadInputError(f"expected a store.Record, got {type(record).__name__}")
    check_id(record.msg_id, "Record.msg_id")
    check_id(record.task_id, "Record.task_id")
    check_kind(record.kind)
    if not isinstance(record.raw, bytes):
        raise BadInputError(f"Record.raw must be bytes, got {type(record.raw).__name__}")
    return record


def check_records(records: Iterable[object]) -> list[Record]:
    """Check a batch; the fast path costs a few type tests per record."""
    recs = list(records)
    for r in recs:
        if type(r) is not Record:
            check_record(r)
            continue
        msg_id, kind, task_id, raw = r
        if not (
            type(msg_id) is bytes and len(msg_id) == ID_LEN and type(task_id) is bytes
            and len(task_id) == ID_LEN and type(kind) is int and 0 <= kind <= 255 and type(raw) is bytes
        ):
            check_record(r)  # raises with a precise message (or accepts a subclass)
    return recs  # type: ignore[return-value]


KIND_BYTES = [bytes((k,)) for k in range(256)]


def seq_bytes(seq: int) -> bytes:
    return seq.to_bytes(SEQ_LEN, "big")


def unpack_counts(raw: bytes | None) -> dict[int, int]:
    if not raw:
        return {}
    return msgpack.unpackb(raw, strict_map_key=False)

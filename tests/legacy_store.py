"""A store in an old layout, as an older labelmesh wrote it, so that migration tests can
prove each step (tests/test_migration.py). Test-only: the node never writes old layouts."""
from __future__ import annotations

import os
from collections.abc import Sequence

import lmdb

from node.storage.errors import BadInputError, StoreError
from node.storage.layout import (
    DATA_FILE, KIND_BYTES, MAX_DBS, META_NEXT_SEQ, META_SCHEMA_VERSION, Record, check_records, seq_bytes,
)


def write_legacy_store(path: str | os.PathLike[str], version: int, records: Sequence[Record]) -> None:
    """Write a NEW store at ``path`` in the old layout ``version`` holding ``records``
    (arrival order = list order), as an older labelmesh would have.  For migration tests."""
    if version != 0:
        raise BadInputError(f"no writer for legacy schema version {version}; known: 0")
    recs = check_records(records)
    path = os.fspath(path)
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.path.exists(os.path.join(path, DATA_FILE)):
        raise StoreError(f"{path} already holds a store")
    env = lmdb.open(path, subdir=True, map_size=64 << 20, max_dbs=MAX_DBS, sync=True, metasync=True)
    try:
        with env.begin(write=True) as txn:
            dbs = {n: env.open_db(n.encode(), txn=txn, create=True)
                   for n in ("msgs", "arrival", "by_task", "meta", "derived")}
            seq = 1
            for r in recs:
                if not txn.put(r.msg_id, r.raw, overwrite=False, db=dbs["msgs"]):
                    continue
                s = seq_bytes(seq)
                txn.put(s, r.msg_id, db=dbs["arrival"])
                txn.put(r.task_id + KIND_BYTES[r.kind] + s, r.msg_id, db=dbs["by_task"])
                seq += 1
            txn.put(META_SCHEMA_VERSION.encode(), b"0", db=dbs["meta"])
            txn.put(META_NEXT_SEQ.encode(), seq_bytes(seq), db=dbs["meta"])
    finally:
        env.close()

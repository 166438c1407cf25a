"""Schema versions and migrations of the store (see ``node/storage/store.py``).

``MIGRATIONS[v](env, txn, meta_db)`` turns layout v into v+1 inside the one write
transaction that opens the store, so a migration that fails leaves the store as it was.

    0  pre-release layout: no ``by_kind`` index, no ``kind_counts`` meta entry
    1  current: ``by_kind`` and ``kind_counts`` (built from ``by_task`` by 0 -> 1)
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from .errors import StoreVersionError
from .layout import ID_LEN, META_KIND_COUNTS, SCHEMA_VERSION


def check_version(path: str, raw_version: bytes) -> int:
    """The store's schema version, if this code can read it (maybe after migrating)."""
    try:
        version = int(raw_version.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise StoreVersionError(
            f"store at {path} has an unreadable schema version record {raw_version!r:.40}; it is damaged "
            "or not a labelmesh store -- restore a backup or use another directory"
        ) from None
    if version != SCHEMA_VERSION and not (0 <= version < SCHEMA_VERSION and all(
            v in MIGRATIONS for v in range(version, SCHEMA_VERSION))):
        newer = version > SCHEMA_VERSION
        raise StoreVersionError(
            f"store at {path} has schema version {version}, but this labelmesh only understands "
            f"version {SCHEMA_VERSION}"
            + ("; it was written by a newer labelmesh: upgrade labelmesh" if newer else "; it is not a store this labelmesh can read")
            + ", or use another data directory"
        )
    return version


def migrate_0_to_1(env: Any, txn: Any, meta: Any) -> None:
    """0 -> 1: build the ``by_kind`` index and the ``kind_counts`` entry from ``by_task``
    (whose keys carry kind and seq)."""
    by_task = env.open_db(b"by_task", txn=txn, create=False)
    by_kind = env.open_db(b"by_kind", txn=txn, create=True)
    counts: dict[int, int] = {}
    entries = []
    with txn.cursor(db=by_task) as cur:
        for key, msg_id in cur:
            kind_and_seq = key[ID_LEN:]
            entries.append((kind_and_seq, msg_id))
            counts[key[ID_LEN]] = counts.get(key[ID_LEN], 0) + 1
    entries.sort()
    with txn.cursor(db=by_kind) as cur:
        cur.putmulti(entries, append=True)
    txn.put(META_KIND_COUNTS.encode(), msgpack.packb(counts), db=meta)


MIGRATIONS: dict[int, Callable[[Any, Any, Any], None]] = {0: migrate_0_to_1}
"""``MIGRATIONS[v](env, txn, meta_db)`` turns layout v into v+1 inside ``txn``."""

"""Durable message store of the node, on LMDB.  The only module that imports lmdb.

How it works
------------
The node's durable state is a set of signed messages.  Each one is written as a
``Record(msg_id, kind, task_id, raw)``; writing an id that is already stored is a no-op, so
every write is idempotent and replaying gossip or sync is harmless.  The set only grows,
except that ``delete_messages`` removes what the keep rule drops (node/core/keep.py: batches
that another batch of the same annotator makes redundant, extra gold reveals).  Each newly stored
message gets the next value of a local arrival counter ``seq`` (1, 2, 3, ...; 0 means
"nothing yet"), assigned in the order the records were handed to ``put_records`` and never
reused.  ``seq`` is local bookkeeping, not part of any message: two nodes number the same
message differently.

Key layouts (integers are unsigned big-endian, so byte order == numeric order)::

    db        key                                 value        why this key
    --------  ----------------------------------  -----------  ------------------------------
    msgs      msg_id (32)                         raw bytes    lookup by hash; random keys
    arrival   seq (8)                             msg_id (32)  "everything since seq N"; keys
                                                               only ever grow (MDB_APPEND)
    by_task   task_id (32) | kind (1) | seq (8)   msg_id (32)  per-task scans, by kind;
                                                               ascending within a task
    by_kind   kind (1) | seq (8)                  msg_id (32)  per-kind scans
    meta      utf-8 str                           bytes        see below
    derived   bytes (1..511)                      bytes        what is derived from messages:
                                                               settlements of certified tasks
                                                               (key b"settled/" + task id,
                                                               node/core/replica.py)

Reserved ``meta`` keys, written only by this module (``put_meta`` refuses them):

    schema_version  ASCII decimal, currently b"1"; written when the store is created
    next_seq        8-byte big-endian; the seq the next new message gets
    kind_counts     msgpack map {kind: number of messages of that kind}

Schema versions and migrations
------------------------------
``SCHEMA_VERSION`` is the layout this code reads and writes.  Opening a store written
with an older version runs ``MIGRATIONS[v]`` (v -> v+1) for each step up to the current
version, all inside the one write transaction that opens the store: a migration that
fails (or a crash during it) leaves the store exactly as it was.  A store with a newer
version (or an older one with no migration path) is refused with a StoreVersionError.

    0  pre-release layout: no ``by_kind`` index, no ``kind_counts`` meta entry
    1  current: ``by_kind`` and ``kind_counts`` (built from ``by_task`` by 0 -> 1)

The migrations live in ``node/storage/migrations.py``; ``tests/legacy_store.py`` writes a
store in an old layout, so tests can prove each step.

Random 32-byte ids make ``msgs`` inserts the expensive part (each dirties a random page),
while the index tables get time-ordered keys and stay cheap (see LIMITS.md).  A batch
inserts its ``msgs`` entries in sorted id order and its index entries in key order (the
cursor walks forward instead of jumping), all in one write transaction.

Transactions and threads
------------------------
* Writes (``put_records``, ``put_derived``, ``delete_derived``, ``put_meta``) are
  synchronous, one write transaction each, serialized by a lock (LMDB allows one write
  transaction at a time).  The environment is opened ``sync=True, metasync=True``: when a
  write returns, it is on disk and survives ``kill -9`` and power loss.  Each commit costs
  an fsync, so group many records into one call -- from async code use ``StoreWriter``,
  which does exactly that in a worker thread.
* Reads open a short read-only transaction per call and copy values out, so they never
  hold a snapshot across calls.  They are safe from any thread, concurrent with a write in
  another thread (LMDB MVCC), and fast enough to call directly on the trio event loop
  (microseconds for point lookups).  Large scans (``iter_since`` with a big ``limit``, the
  messages of a huge task) can be pushed to ``trio.to_thread.run_sync`` if they matter.
* The map size grows on demand: when a write transaction hits ``MDB_MAP_FULL`` it is
  aborted, the map is doubled (up to ``max_map_size``) and the whole transaction is retried.
  Re-mapping requires that no transaction is open in the process, so read transactions
  hold a shared "map gate" and the resize holds it exclusively for the instant it takes.
  A waiting resize holds back new reads only until the reads in flight finish (so reads
  can pause for about as long as the longest concurrent read); it waits for a ``copy_to``
  in progress without holding anyone back.
* Out of space: when the map cannot grow further, or the filesystem is full, a write raises
  ``StoreFullError``.  The failed transaction was aborted, so nothing of it is stored; the
  store stays readable, and writes succeed again once space is freed or the limit raised
  (``set_max_map_size``), without reopening.  (LMDB reports a short write on a full disk
  as EIO; an EIO with almost no free space left, or at RLIMIT_FSIZE, counts as full.)
* One process, one ``Store`` object per directory: an exclusive ``flock`` on
  ``store.lock`` in the directory enforces it (the in-memory arrival counter relies on it).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import resource
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import lmdb
import msgpack

from .errors import BadInputError, StoreError, StoreFullError, StoreVersionError
from .fs import OUT_OF_SPACE_ERRNOS, fsync_dir
from .layout import (
    DATA_FILE, DB_NAMES, KIND_BYTES, MAX_DBS, MAX_SEQ, META_KIND_COUNTS, META_NEXT_SEQ,
    META_SCHEMA_VERSION, RESERVED_META_KEYS, SCHEMA_VERSION, SEQ_LEN, Record, check_id, check_kind,
    check_records, seq_bytes, unpack_counts,
)
from .migrations import MIGRATIONS, check_version

_MAX_READERS = 126   # concurrent read transactions (LMDB default)
_LOCK_FILE = "store.lock"
_OS_PAGE = 4096
_LOW_DISK_BYTES = 16 << 20   # an I/O error with less free space than this means "disk full"

T = TypeVar("T")
log = logging.getLogger("labelmesh.store")


# --------------------------------------------------------------------------- map gate


class _MapGate:
    """Shared/exclusive gate between read transactions (shared) and re-mapping or closing
    the environment (exclusive).  Writer-preferring: once a resize waits, new reads wait
    behind it, so a steady stream of reads cannot starve it; the wait is as long as the
    reads already in flight (microseconds).  ``copy_to`` is the one long reader: a resize
    first waits for it on ``Store._copy_lock`` *without* announcing itself, so reads go on
    during a backup."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._exclusive = False
        self._waiting = 0  # exclusive acquirers waiting

    def acquire_shared(self) -> None:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._readers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True

    def release_exclusive(self) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()


class _ReadTxn:
    """``with _ReadTxn(store) as txn``: a short read transaction under the shared gate;
    lmdb errors come out as StoreError."""

    __slots__ = ("_store", "_txn")

    def __init__(self, store: Store) -> None:
        self._store = store
        self._txn: Any = None

    def __enter__(self) -> Any:
        store = self._store
        store._gate.acquire_shared()
        try:
            env = store._env
            if env is None:
                raise StoreError(f"store at {store.path} is closed; open a new Store")
            self._txn = env.begin()
        except BaseException as exc:
            store._gate.release_shared()
            if isinstance(exc, lmdb.Error):
                raise store._translate(exc, "start a read") from exc
            raise
        return self._txn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            self._txn.abort()
        finally:
            self._store._gate.release_shared()
        if isinstance(exc, lmdb.Error):
            raise self._store._translate(exc, "read") from exc
        return False


# --------------------------------------------------------------------------- store


class Store:
    """The node's LMDB store.  See the module docstring for layouts and threading.

    ``path`` is a directory (created with mode 0700 if missing) holding ``data.mdb``,
    ``lock.mdb`` and ``store.lock``.  The map starts at ``initial_map_size`` bytes (or the
    size of the existing data, if larger) and doubles on demand up to ``max_map_size``.
    The data file only takes the disk space the data needs, not the map size.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        initial_map_size: int = 64 << 20,
        max_map_size: int = 1 << 40,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        for name, value in (("initial_map_size", initial_map_size), ("max_map_size", max_map_size)):
            if not isinstance(value, int) or value < 16 * _OS_PAGE:
                raise BadInputError(f"{name} must be an int of at least {16 * _OS_PAGE} bytes, got {value!r}")
        if initial_map_size > max_map_size:
            raise BadInputError(
                f"initial_map_size ({initial_map_size}) is larger than max_map_size ({max_map_size}); "
                "raise max_map_size or lower initial_map_size"
            )
        self._max_map_size = max_map_size
        self._write_lock = threading.Lock()
        self._gate = _MapGate()
        self._copy_lock = threading.Lock()  # held by copy_to; lock order: write, copy, gate
        self._env: Any = None
        self._lock_fd: int | None = None
        self._next_seq = 1

        created = self._make_dir()
        self._lock_fd = self._take_dir_lock()
        try:
            try:
                self._env = lmdb.open(
                    self.path,
                    subdir=True,
                    map_size=_round_up(initial_map_size),
                    max_dbs=MAX_DBS,
                    max_readers=_MAX_READERS,
                    sync=True,
                    metasync=True,
                    map_async=False,
                    writemap=False,
                    lock=True,
                    readahead=False,
                    mode=0o600,
                    create=True,
                )
            except lmdb.Error as exc:
                raise self._translate(exc, "open") from exc
            self._open_databases()
            if created:
                fsync_dir(self.path)
        except BaseException:
            self._release()
            raise

    # ----------------------------------------------------------------- lifecycle

    def _make_dir(self) -> bool:
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            if not os.path.isdir(self.path):
                raise StoreError(f"{self.path} exists and is not a directory; pass a directory for the store")
            return False
        except OSError as exc:
            if exc.errno in OUT_OF_SPACE_ERRNOS:
                raise StoreFullError(f"cannot create store directory {self.path}: {exc.strerror}; free disk space") from exc
            raise StoreError(f"cannot create store directory {self.path}: {exc.strerror}") from exc
        os.chmod(self.path, 0o700)  # mkdir's mode is filtered by the umask
        return True

    def _take_dir_lock(self) -> int:
        lock_path = os.path.join(self.path, _LOCK_FILE)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open {lock_path}: {exc.strerror}; check the directory's permissions") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"store at {self.path} is already open (another node process, or another Store "
                "in this process); stop it or use a different data directory"
            ) from None
        return fd

    def _open_databases(self) -> None:
        """Open (or create) the named databases and check the schema version, in one write
        transaction: a store we refuse is left exactly as it was."""

        def body(txn: Any) -> tuple[dict[str, Any], int]:
            env = self._env
            meta = env.open_db(b"meta", txn=txn, create=True)
            raw_version = txn.get(META_SCHEMA_VERSION.encode(), db=meta)
            if raw_version is None:
                ours = {n.encode() for n in DB_NAMES}
                foreign = [k for k, _ in txn.cursor() if k not in ours]
                others = [n for n in DB_NAMES if n != "meta" and txn.get(n.encode()) is not None]
                if foreign or others:
                    raise StoreVersionError(
                        f"{self.path} holds an LMDB environment without a labelmesh schema version "
                        "(not a labelmesh store, or damaged); use an empty directory or restore a backup"
                    )
                dbs = {n: env.open_db(n.encode(), txn=txn, create=True) for n in DB_NAMES}
                txn.put(META_SCHEMA_VERSION.encode(), str(SCHEMA_VERSION).encode(), db=meta)
                txn.put(META_NEXT_SEQ.encode(), seq_bytes(1), db=meta)
                txn.put(META_KIND_COUNTS.encode(), msgpack.packb({}), db=meta)
            else:
                version = check_version(self.path, raw_version)
                if version < SCHEMA_VERSION:
                    for step in range(version, SCHEMA_VERSION):
                        MIGRATIONS[step](env, txn, meta)
                    txn.put(META_SCHEMA_VERSION.encode(), str(SCHEMA_VERSION).encode(), db=meta)
                    self.migrated_from = version
                try:
                    dbs = {n: env.open_db(n.encode(), txn=txn, create=False) for n in DB_NAMES}
                except lmdb.NotFoundError as exc:
                    raise StoreError(
                        f"store at {self.path} is damaged: a named database is missing ({exc}); restore a backup"
                    ) from exc
            next_seq = int.from_bytes(txn.get(META_NEXT_SEQ.encode(), seq_bytes(1), db=meta), "big")
            with txn.cursor(db=dbs["arrival"]) as cur:
                if cur.last():
                    next_seq = max(next_seq, int.from_bytes(cur.key(), "big") + 1)
            return dbs, next_seq

        self.migrated_from: int | None = None
        dbs, self._next_seq = self._write(body)
        if self.migrated_from is not None:
            log.info("store migrated from schema version %d to %d", self.migrated_from, SCHEMA_VERSION,
                     extra={"path": self.path})
        self._msgs = dbs["msgs"]
        self._arrival = dbs["arrival"]
        self._by_task = dbs["by_task"]
        self._by_kind = dbs["by_kind"]
        self._meta = dbs["meta"]
        self._derived = dbs["derived"]

    def close(self) -> None:
        """Close the store.  Waits for a write in progress and for open reads; idempotent."""
        with self._write_lock:
            self._gate.acquire_exclusive()
            try:
                self._release()
            finally:
                self._gate.release_exclusive()

    def _release(self) -> None:
        env, self._env = self._env, None
        if env is not None:
            env.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # also drops the flock

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._env is None

    def set_max_map_size(self, max_map_size: int) -> None:
        """Change how far the map may grow.  Takes effect for the next write: after a
        ``StoreFullError`` caused by the limit, raising it lets writes resume."""
        if not isinstance(max_map_size, int) or max_map_size < 16 * _OS_PAGE:
            raise BadInputError(f"max_map_size must be an int of at least {16 * _OS_PAGE} bytes, got {max_map_size!r}")
        self._max_map_size = max_map_size

    # ----------------------------------------------------------------- write machinery

    def _write(self, body: Callable[[Any], T]) -> T:
        """Run ``body(txn)`` in one write transaction and commit it.  On MDB_MAP_FULL the
        transaction is aborted, the map grown and ``body`` run again from scratch, so
        ``body`` must not change anything outside the transaction."""
        with self._write_lock:
            while True:
                env = self._env
                if env is None:
                    raise StoreError(f"store at {self.path} is closed; open a new Store")
                try:
                    with env.begin(write=True) as txn:
                        return body(txn)
                except lmdb.MapFullError:
                    self._grow_map()
                except lmdb.Error as exc:
                    raise self._translate(exc, "write") from exc

    def _grow_map(self) -> None:
        current = self._env.info()["map_size"]
        limit = self._max_map_size - self._max_map_size % _OS_PAGE
        if current >= limit:
            raise StoreFullError(
                f"store at {self.path} is full: the map is {current} bytes and max_map_size is "
                f"{self._max_map_size}; raise the limit (Store.set_max_map_size / config) -- "
                "nothing of this write was stored"
            )
        new_size = min(limit, _round_up(current * 2))
        with self._copy_lock:  # let a backup in progress finish first (see _MapGate)
            self._gate.acquire_exclusive()
            try:
                self._env.set_mapsize(new_size)
            finally:
                self._gate.release_exclusive()

    def _translate(self, exc: lmdb.Error, doing: str) -> StoreError:
        """Turn an lmdb error into a StoreError that says what to do."""
        if isinstance(exc, lmdb.MapFullError) or self._is_out_of_space(exc):
            return StoreFullError(
                f"cannot {doing} store at {self.path}: the filesystem is full or a file size "
                f"limit was hit ({exc}); free disk space and retry -- nothing of this write was stored"
            )
        if isinstance(exc, lmdb.TxnFullError):
            return StoreError(f"cannot {doing} store at {self.path}: too much data for one transaction ({exc}); write smaller batches")
        if isinstance(exc, lmdb.BadValsizeError):
            return BadInputError(f"cannot {doing} store at {self.path}: a key or value has a size LMDB refuses ({exc})")
        if isinstance(exc, (lmdb.InvalidError, lmdb.VersionMismatchError, lmdb.CorruptedError)):
            return StoreError(f"cannot {doing} store at {self.path}: it is not a readable LMDB store ({exc}); restore a backup or use another directory")
        if isinstance(exc, lmdb.PanicError):
            return StoreError(f"cannot {doing} store at {self.path}: LMDB needs the store reopened after a failed disk write ({exc}); restart the node")
        if isinstance(exc, lmdb.ReadersFullError):
            return StoreError(f"cannot {doing} store at {self.path}: too many concurrent readers ({exc}); reduce reader threads")
        return StoreError(f"cannot {doing} store at {self.path}: {exc}")

    def _is_out_of_space(self, exc: lmdb.Error) -> bool:
        code = getattr(exc, "code", None)
        if code is None and len(exc.args) >= 2 and isinstance(exc.args[1], int):
            code = exc.args[1]
        if code in OUT_OF_SPACE_ERRNOS:
            return True
        if code != errno.EIO:
            return False
        # LMDB turns a short write ("filesystem full?") into EIO.  Call it out-of-space when
        # the filesystem has (almost) nothing left, or the data file reached RLIMIT_FSIZE.
        try:
            st = os.statvfs(self.path)
            if st.f_bavail * st.f_frsize < _LOW_DISK_BYTES:
                return True
            soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            if soft != resource.RLIM_INFINITY:
                size = os.path.getsize(os.path.join(self.path, DATA_FILE))
                return size + (1 << 20) >= soft
        except OSError:
            pass
        return False

    # ----------------------------------------------------------------- writes

    def put_records(self, records: Sequence[Record]) -> list[bool]:
        """Store ``records`` in ONE write transaction, durable when this returns.

        Returns one flag per record: True where the message was newly stored, False where
        its id was already stored (before, or earlier in this same call -- the first
        occurrence wins).  Duplicates are no-ops.  All or nothing: on any error nothing of
        the call is stored.  Raises BadInputError (before touching the store),
        StoreFullError (no room), StoreError.
        """
        return self.put_checked(check_records(records))

    def put_checked(self, recs: list[Record]) -> list[bool]:
        """put_records for records already checked by ``layout.check_records`` (the group
        commit of StoreWriter, which checks each caller's records as they come)."""
        if not recs:
            return []
        first: dict[bytes, int] = {}  # msg_id -> index of its first occurrence, in call order
        for i, r in enumerate(recs):
            first.setdefault(r[0], i)
        ids_sorted = sorted(first)

        def body(txn: Any) -> tuple[list[bool], int]:
            put = txn.put
            msgs = self._msgs
            new_ids: set[bytes] = set()
            for msg_id in ids_sorted:  # sorted: neighbouring random keys share pages
                if put(msg_id, recs[first[msg_id]][3], overwrite=False, db=msgs):
                    new_ids.add(msg_id)
            flags = [False] * len(recs)
            seq = self._next_seq
            if not new_ids:
                return flags, seq
            arrival: list[tuple[bytes, bytes]] = []
            by_task: list[tuple[bytes, bytes]] = []
            by_kind: list[tuple[bytes, bytes]] = []
            kind_delta: dict[int, int] = {}
            for msg_id, i in first.items():  # call order: seq follows arrival
                if msg_id in new_ids:
                    flags[i] = True
                    _, kind, task_id, _raw = recs[i]
                    s = seq.to_bytes(SEQ_LEN, "big")
                    seq += 1
                    k = KIND_BYTES[kind]
                    arrival.append((s, msg_id))
                    by_task.append((task_id + k + s, msg_id))
                    by_kind.append((k + s, msg_id))
                    kind_delta[kind] = kind_delta.get(kind, 0) + 1
            if seq - 1 > MAX_SEQ:
                raise StoreError(f"store at {self.path} has run out of arrival numbers")
            by_task.sort()
            by_kind.sort()
            with txn.cursor(db=self._arrival) as cur:
                _consumed, added = cur.putmulti(arrival, append=True)  # seq only grows: append
            if added != len(arrival):
                raise StoreError(f"store at {self.path} is damaged: arrival numbers are out of order; restore a backup")
            with txn.cursor(db=self._by_task) as cur:
                cur.putmulti(by_task)
            with txn.cursor(db=self._by_kind) as cur:
                cur.putmulti(by_kind)
            counts = unpack_counts(txn.get(META_KIND_COUNTS.encode(), db=self._meta))
            for kind, n in kind_delta.items():
                counts[kind] = counts.get(kind, 0) + n
            put(META_KIND_COUNTS.encode(), msgpack.packb(counts), db=self._meta)
            put(META_NEXT_SEQ.encode(), seq_bytes(seq), db=self._meta)
            return flags, seq

        flags, next_seq = self._write(body)
        self._next_seq = next_seq  # only after the commit succeeded
        return flags

    def delete_messages(self, doomed: Sequence[tuple[bytes, int, bytes]]) -> int:
        """Remove messages ``(task_id, kind, msg_id)`` from the set in ONE write transaction,
        durable when this returns (the batches and gold reveals the keep rule drops,
        node/core/keep.py).  Ids not stored are skipped.  Returns how many were removed.
        Costs one scan of each (task, kind) index range named (there is no id -> seq index)."""
        wanted: dict[tuple[bytes, int], set[bytes]] = {}
        for task_id, kind, msg_id in doomed:
            wanted.setdefault((check_id(task_id, "task_id"), check_kind(kind)), set()).add(check_id(msg_id, "msg_id"))
        if not wanted:
            return 0

        def body(txn: Any) -> int:
            removed = 0
            counts = unpack_counts(txn.get(META_KIND_COUNTS.encode(), db=self._meta))
            for (task_id, kind), ids in sorted(wanted.items()):
                prefix = task_id + KIND_BYTES[kind]
                found: list[tuple[bytes, bytes]] = []  # (by_task key, msg_id)
                with txn.cursor(db=self._by_task) as cur:
                    ok = cur.set_range(prefix)
                    while ok and len(found) < len(ids):
                        key, value = cur.item()
                        if not key.startswith(prefix):
                            break
                        if value in ids:
                            found.append((key, value))
                        ok = cur.next()
                for key, msg_id in found:
                    seq = key[-SEQ_LEN:]
                    txn.delete(msg_id, db=self._msgs)
                    txn.delete(seq, db=self._arrival)
                    txn.delete(key, db=self._by_task)
                    txn.delete(KIND_BYTES[kind] + seq, db=self._by_kind)
                counts[kind] = counts.get(kind, 0) - len(found)
                if counts[kind] <= 0:
                    del counts[kind]
                removed += len(found)
            txn.put(META_KIND_COUNTS.encode(), msgpack.packb(counts), db=self._meta)
            return removed

        return self._write(body)

    def put_derived(self, key: bytes, value: bytes) -> None:
        """Set a cache entry (overwrites).  Durable when it returns."""
        key = self._check_derived_key(key)
        if not isinstance(value, bytes):
            raise BadInputError(f"derived value must be bytes, got {type(value).__name__}")
        self._write(lambda txn: txn.put(key, value, db=self._derived))

    def put_derived_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Set several cache entries in one write transaction (durable when it returns)."""
        pairs = [(self._check_derived_key(k), v) for k, v in items]
        if not all(isinstance(v, bytes) for _, v in pairs):
            raise BadInputError("derived values must be bytes")

        def body(txn: Any) -> None:
            for k, v in pairs:
                txn.put(k, v, db=self._derived)
        self._write(body)

    def get_derived(self, key: bytes) -> bytes | None:
        key = self._check_derived_key(key)
        with _ReadTxn(self) as txn:
            return txn.get(key, db=self._derived)

    def derived_items(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """(key, value) of every derived entry whose key starts with ``prefix``, in key
        order; one snapshot."""
        if not isinstance(prefix, bytes) or not prefix:
            raise BadInputError("derived_items needs a non-empty bytes prefix")
        out = []
        with _ReadTxn(self) as txn, txn.cursor(db=self._derived) as cur:
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    out.append((bytes(k), bytes(v)))
        return out

    def delete_derived(self, key: bytes) -> bool:
        """Remove a cache entry; True if it existed."""
        key = self._check_derived_key(key)
        return self._write(lambda txn: txn.delete(key, db=self._derived))

    def put_meta(self, key: str, value: bytes) -> None:
        """Set a local bookkeeping entry (overwrites).  The store's own keys
        (schema_version, next_seq, kind_counts) are read-only."""
        raw_key = self._check_meta_key(key)
        if key in RESERVED_META_KEYS:
            raise BadInputError(f"meta key {key!r} is maintained by the store itself; pick another key")
        if not isinstance(value, bytes):
            raise BadInputError(f"meta value must be bytes, got {type(value).__name__}")
        self._write(lambda txn: txn.put(raw_key, value, db=self._meta))

    def get_meta(self, key: str) -> bytes | None:
        raw_key = self._check_meta_key(key)
        with _ReadTxn(self) as txn:
            return txn.get(raw_key, db=self._meta)

    def _put_reserved_meta(self, key: str, value: bytes) -> None:
        """Overwrite one of the store's own meta keys.  For schema migrations and tests only."""
        raw_key = self._check_meta_key(key)
        self._write(lambda txn: txn.put(raw_key, value, db=self._meta))

    def _check_derived_key(self, key: object) -> bytes:
        if not isinstance(key, bytes) or not 1 <= len(key) <= 511:
            raise BadInputError(f"derived key must be 1..511 bytes, got {key!r:.80}")
        return key

    def _check_meta_key(self, key: object) -> bytes:
        if not isinstance(key, str):
            raise BadInputError(f"meta key must be a str, got {type(key).__name__}")
        raw = key.encode()
        if not 1 <= len(raw) <= 511:
            raise BadInputError(f"meta key must be 1..511 bytes of UTF-8, got {len(raw)}")
        return raw

    # ----------------------------------------------------------------- reads

    def has(self, msg_id: bytes) -> bool:
        with _ReadTxn(self) as txn, txn.cursor(db=self._msgs) as cur:
            return cur.set_key(msg_id) if msg_id else False

    def has_many(self, ids: Iterable[bytes]) -> list[bool]:
        with _ReadTxn(self) as txn, txn.cursor(db=self._msgs) as cur:
            return [bool(i) and cur.set_key(i) for i in ids]

    def get(self, msg_id: bytes) -> bytes | None:
        """The raw bytes of a stored message, or None."""
        if not msg_id:
            return None
        with _ReadTxn(self) as txn:
            return txn.get(msg_id, db=self._msgs)

    def get_many(self, ids: Iterable[bytes]) -> list[bytes | None]:
        with _ReadTxn(self) as txn:
            get, msgs = txn.get, self._msgs
            return [get(i, db=msgs) if i else None for i in ids]

    def task_message_ids(self, task_id: bytes, kind: int | None = None) -> list[bytes]:
        """Ids of a task's messages (of one kind, or all), in arrival order."""
        with _ReadTxn(self) as txn:
            return [msg_id for _seq, msg_id in self._task_entries(txn, task_id, kind)]

    def task_messages(self, task_id: bytes, kind: int | None = None) -> list[bytes]:
        """Raw bytes of a task's messages (of one kind, or all), in arrival order; one
        snapshot."""
        with _ReadTxn(self) as txn:
            get, msgs = txn.get, self._msgs
            return [self._must(get(msg_id, db=msgs), msg_id) for _s, msg_id in self._task_entries(txn, task_id, kind)]

    def _task_entries(self, txn: Any, task_id: bytes, kind: int | None) -> list[tuple[bytes, bytes]]:
        check_id(task_id, "task_id")
        prefix = task_id if kind is None else task_id + bytes((check_kind(kind),))
        out = []
        with txn.cursor(db=self._by_task) as cur:
            if cur.set_range(prefix):
                for key, msg_id in cur:
                    if not key.startswith(prefix):
                        break
                    out.append((key[-SEQ_LEN:], msg_id))
        if kind is None:
            out.sort()  # one ascending run per kind: merge them into arrival order
        return out

    def kind_message_ids(self, kind: int) -> list[bytes]:
        """Ids of all messages of one kind, in arrival order."""
        prefix = bytes((check_kind(kind),))
        out = []
        with _ReadTxn(self) as txn, txn.cursor(db=self._by_kind) as cur:
            if cur.set_range(prefix):
                for key, msg_id in cur:
                    if key[:1] != prefix:
                        break
                    out.append(msg_id)
        return out

    def iter_since(self, seq: int, limit: int) -> list[tuple[int, bytes, bytes]]:
        """Up to ``limit`` messages that arrived after ``seq``, as (seq, msg_id, raw) in
        arrival order.  Page through everything with ``seq = result[-1][0]``."""
        if not isinstance(seq, int) or not isinstance(limit, int) or limit < 0:
            raise BadInputError(f"iter_since needs int seq and int limit >= 0, got {seq!r}, {limit!r}")
        start = max(seq, 0) + 1
        if limit == 0 or start > MAX_SEQ:
            return []
        out = []
        with _ReadTxn(self) as txn, txn.cursor(db=self._arrival) as cur:
            get, msgs = txn.get, self._msgs
            if cur.set_range(seq_bytes(start)):
                for key, msg_id in cur:
                    out.append((int.from_bytes(key, "big"), msg_id, self._must(get(msg_id, db=msgs), msg_id)))
                    if len(out) >= limit:
                        break
        return out

    def count(self) -> int:
        """Number of stored messages."""
        with _ReadTxn(self) as txn:
            return txn.stat(self._msgs)["entries"]

    def count_by_kind(self) -> dict[int, int]:
        """{kind: number of stored messages of that kind}, kinds ascending."""
        with _ReadTxn(self) as txn:
            counts = unpack_counts(txn.get(META_KIND_COUNTS.encode(), db=self._meta))
        return {k: counts[k] for k in sorted(counts) if counts[k]}

    def last_seq(self) -> int:
        """Arrival number of the newest stored message; 0 when empty."""
        if self._env is None:
            raise StoreError(f"store at {self.path} is closed; open a new Store")
        return self._next_seq - 1

    def stats(self) -> dict[str, Any]:
        """Sizes and counts, for status output and metrics."""
        with _ReadTxn(self) as txn:
            info = self._env.info()
            page = self._env.stat()["psize"]
            entries = {name: txn.stat(getattr(self, "_" + name))["entries"] for name in DB_NAMES}
        try:
            file_bytes = os.path.getsize(os.path.join(self.path, DATA_FILE))
        except OSError:
            file_bytes = 0
        return {
            "path": self.path,
            "map_size": info["map_size"],
            "max_map_size": self._max_map_size,
            "used_bytes": (info["last_pgno"] + 1) * page,
            "file_bytes": file_bytes,
            "page_size": page,
            "entries": entries,
            "last_seq": self._next_seq - 1,
            "readers": info["num_readers"],
            "max_readers": info["max_readers"],
        }

    def copy_to(self, dest_dir: str | os.PathLike[str], compact: bool = True) -> None:
        """Write a consistent copy of the store (one read snapshot) into ``dest_dir``,
        which is created (0700) if missing and must not already hold a store.  Safe while
        the node runs: writes continue meanwhile (only map growth waits for the copy).
        ``compact`` drops free pages.  The copy opens with ``Store(dest_dir)``."""
        dest = os.path.abspath(os.fspath(dest_dir))
        try:
            os.makedirs(dest, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create backup directory {dest}: {exc.strerror}") from exc
        target = os.path.join(dest, DATA_FILE)
        if os.path.exists(target):
            raise StoreError(f"{dest} already contains a store; copy into an empty directory")
        with self._copy_lock:
            self._copy(dest, target, compact)
        fsync_dir(dest)

    def _copy(self, dest: str, target: str, compact: bool) -> None:
        self._gate.acquire_shared()
        try:
            if self._env is None:
                raise StoreError(f"store at {self.path} is closed; open a new Store")
            self._env.copy(dest, compact=compact)
        except lmdb.Error as exc:
            try:
                os.unlink(target)
            except OSError:
                pass
            err = self._translate(exc, "copy")
            if isinstance(err, StoreFullError):
                err = StoreFullError(f"cannot copy store to {dest}: no room there ({exc}); free space or pick another place")
            raise err from exc
        finally:
            self._gate.release_shared()

    def _must(self, raw: bytes | None, msg_id: bytes) -> bytes:
        if raw is None:
            raise StoreError(
                f"store at {self.path} is damaged: index entry for {msg_id.hex()} has no message; restore a backup"
            )
        return raw


def _round_up(n: int) -> int:
    return -(-n // _OS_PAGE) * _OS_PAGE

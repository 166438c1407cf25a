"""Group commit: the async front end of ``Store.put_records`` (see StoreWriter)."""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

from .errors import BadInputError, StoreError
from .layout import Record, check_records
from .store import Store

T = TypeVar("T")


class _Request:
    __slots__ = ("records", "flags", "error", "done")

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.flags: list[bool] | None = None
        self.error: BaseException | None = None
        self.done = trio.Event()


class StoreWriter:
    """Async group-commit front end for ``Store.put_records``.

    Many tasks call ``await writer.put(records)``; one worker (``run``) takes everything
    queued, merges it into ONE ``put_records`` call -- one write transaction, one fsync --
    run in a worker thread (at most one at a time: LMDB allows one writer), then wakes each
    caller with its own slice of the flags, or with the error.  While a group commits, the
    next one accumulates, so commits stay few under load and a lone put waits for one
    commit only.

    Backpressure: at most ``max_pending_records`` records wait in the queue; further puts
    block (first come, first served) until the worker takes a group.  A single put larger
    than the bound is admitted when the queue is empty.  A group holds at most
    ``max_group_records`` records (whole requests; one larger request forms its own group).

    Start it with ``await nursery.start(writer.run)``.  Cancelling ``put`` while it waits
    for its group does not withdraw the records: they may still be stored (harmless: the
    a write of an id already stored is a no-op).  When ``run`` exits, queued puts fail with StoreError and
    new puts are refused.

    Counters (for tests and metrics): ``commits`` (successful put_records calls, i.e.
    write transactions), ``failed_commits``, ``puts`` (put calls that returned flags),
    ``records_written`` (records in successful groups, duplicates included).  ``on_commit``,
    if set, is called as ``on_commit(records, seconds)`` after each successful group commit
    (seconds from handing the group to the writer thread to its durable commit).
    """

    def __init__(self, store: Store, *, max_pending_records: int = 50_000, max_group_records: int = 10_000) -> None:
        if max_pending_records < 1 or max_group_records < 1:
            raise BadInputError("max_pending_records and max_group_records must be >= 1")
        self._store = store
        self._max_pending = max_pending_records
        self._max_group = max_group_records
        self._queue: deque[_Request] = deque()
        self._queued_records = 0
        self._admission = trio.Lock()           # FIFO fairness among blocked puts
        self._space = trio.lowlevel.ParkingLot()  # head-of-line put waits here for room
        self._work = trio.lowlevel.ParkingLot()   # the worker waits here for requests
        self._limiter = trio.CapacityLimiter(1)   # one writer thread
        self._running = False
        self._stopped = False
        self.commits = 0
        self.failed_commits = 0
        self.puts = 0
        self.records_written = 0
        self.on_commit: Callable[[int, float], None] | None = None

    @property
    def queued_records(self) -> int:
        """Records waiting for the worker (not counting the group being committed)."""
        return self._queued_records

    async def put(self, records: Sequence[Record]) -> list[bool]:
        """Store ``records``; returns after the group holding them is durable.  Flags as in
        ``Store.put_records`` (True = newly stored; a duplicate of a record put
        concurrently by another caller is False for whichever comes second)."""
        recs = check_records(records)  # a bad record fails only its caller
        await self._ensure_running()
        if not recs:
            await trio.lowlevel.checkpoint()
            return []
        request = _Request(recs)
        async with self._admission:
            await self._ensure_running()  # the worker may have stopped while we queued for the lock
            while self._queued_records and self._queued_records + len(recs) > self._max_pending:
                await self._space.park()
                await self._ensure_running()
            self._queue.append(request)
            self._queued_records += len(recs)
            self._work.unpark_all()
        await request.done.wait()
        if request.error is not None:
            err = request.error
            if isinstance(err, StoreError):
                raise type(err)(str(err)) from err  # one exception object per waiter
            raise StoreError(f"group commit failed: {err!r}") from err
        self.puts += 1
        assert request.flags is not None
        return request.flags

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run another synchronous store write (``put_derived``, ``put_meta``, ...) in the
        writer thread, so it neither blocks the event loop on its fsync nor contends with
        group commits."""
        await self._ensure_running()
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def _ensure_running(self) -> None:
        if self._stopped:
            # The writer stops when the node's nursery is cancelled; a caller in that
            # nursery gets its Cancelled here (a clean shutdown), not a StoreError.
            await trio.lowlevel.checkpoint()
            raise StoreError("the store writer has stopped (node shutting down); the records were not stored")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The worker.  Runs until cancelled; start with ``nursery.start(writer.run)``."""
        if self._running or self._stopped:
            raise RuntimeError("StoreWriter.run can be started only once")
        self._running = True
        try:
            task_status.started()
            while True:
                while not self._queue:
                    await self._work.park()
                group = self._take_group()
                self._space.unpark_all()
                await self._commit(group)
        finally:
            self._running = False
            self._stopped = True
            err = StoreError("the store writer stopped before these records were written; they were not stored")
            while self._queue:
                request = self._queue.popleft()
                request.error = err
                request.done.set()
            self._queued_records = 0
            self._space.unpark_all()

    def _take_group(self) -> list[_Request]:
        group = [self._queue.popleft()]
        size = len(group[0].records)
        while self._queue and size + len(self._queue[0].records) <= self._max_group:
            request = self._queue.popleft()
            group.append(request)
            size += len(request.records)
        self._queued_records -= size
        return group

    async def _commit(self, group: list[_Request]) -> None:
        records = [r for request in group for r in request.records]
        started = time.perf_counter()
        try:
            # abandon_on_cancel=False (the default): once the thread runs, a cancelled
            # worker still waits for the commit, so every caller learns the real outcome.
            flags = await trio.to_thread.run_sync(self._store.put_checked, records, limiter=self._limiter)
        except Exception as exc:
            self.failed_commits += 1
            for request in group:
                request.error = exc
                request.done.set()
        except BaseException:  # cancelled before the thread started: nothing was written
            for request in group:
                request.error = StoreError("the store writer stopped before these records were written; they were not stored")
                request.done.set()
            raise
        else:
            self.commits += 1
            self.records_written += len(records)
            if self.on_commit is not None:
                self.on_commit(len(records), time.perf_counter() - started)
            at = 0
            for request in group:
                request.flags = flags[at : at + len(request.records)]
                at += len(request.records)
                request.done.set()

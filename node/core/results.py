"""Results of tasks: consensus labels, rewards and reputation are never stored as truth,
they are pure functions of the stored set (``protocol.tally``, ``protocol.reputation``),
computed on demand, cached by (set root, reputation snapshot), big ones in a worker
thread. A mixin of NodeCore (uses its store, tasks, params, finality and metrics)."""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import trio

from protocol.codec import sha256
from protocol.messages import KIND_BATCH, KIND_GOLD, TaskAnnouncement, compute_set_root
from protocol.reputation import AnnotatorOutcome, TaskOutcome, compute_earned, compute_weight

if TYPE_CHECKING:  # protocol.tally loads numpy (~11 MB RSS): imported when a result is first computed
    from protocol.tally import TaskResult

#: Task results kept in memory (ResultCache), counted in items: a result holds 4 tuples of
#: Python ints per item (~90 bytes), so about 100 MB at most.  It used to be 1,024 results
#: of any size (up to 1,024 x 100,000 items), cleared all at once when full.
RESULT_CACHE_ITEMS = 1_000_000
#: NodeCore.prepare_result reads and aggregates a task's set in a worker thread from this many
#: messages on (with the usual 100 labels per batch, ~0.1 s of work with gold; below it the
#: thread hop costs more than it saves)
RESULT_THREAD_MIN_MESSAGES = 200


class ResultCache:
    """Least-recently-used task results by (set root, reputation snapshot), bounded by the
    total number of items they hold (the newest result is kept whatever its size).  Used
    on the event-loop thread only."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._entries: OrderedDict[bytes, TaskResult] = OrderedDict()
        self._items = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> TaskResult | None:
        res = self._entries.get(key)
        if res is not None:
            self._entries.move_to_end(key)
        return res

    def put(self, key: bytes, res: TaskResult) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._items -= len(old.label) + 1
        self._entries[key] = res
        self._items += len(res.label) + 1
        while self._items > self.max_items and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._items -= len(evicted.label) + 1

    def clear(self) -> None:
        self._entries.clear()
        self._items = 0


class Results:
    """Results, rewards and reputation of the node's tasks."""

    def clear_result_cache(self) -> None:
        """Forget every computed result (benchmarks measure the computation itself)."""
        self._result_cache.clear()

    def _init_results(self) -> None:
        self._result_cache = ResultCache(RESULT_CACHE_ITEMS)
        #: prepare_result aggregates sets of at least this many messages in a worker thread
        self.result_thread_min_messages = RESULT_THREAD_MIN_MESSAGES
        self._result_limiter = trio.CapacityLimiter(1)
        self._outcomes: dict = {}  # task id -> TaskOutcome of a certified task (task_outcome)
        self._rewards: dict = {}  # task id -> rewards of a certified task (certified_rewards)
        self._earned: dict[bytes, dict] = {}  # snapshot digest -> earned reputation (reputation_snapshot)

    def task_outcome(self, task_id: bytes):
        """The certified outcome of a task for reputation, or None if not certified (or
        its certified result cannot be reproduced here yet)."""
        t = self.tasks.get(task_id)
        return self._certified_summary(self._outcomes, task_id, lambda res: TaskOutcome(
            task_id=task_id, deadline=t.deadline, domain=t.schema.domain, n_classes=len(t.schema.labels),
            annotators=tuple(AnnotatorOutcome(a.account, a.labels, a.score, a.equivocations, a.trust)
                             for a in res.annotators)))

    def _certified_summary(self, cache: dict, task_id: bytes, summarise):
        """``summarise(result)`` of the result over a task's certified set, kept in
        ``cache`` per task; None (not kept) unless this node holds the whole set and gets
        the certificate's result_root (not certified, fetching, or a different reputation
        snapshot here)."""
        hit = cache.get(task_id)
        if hit is None:
            cert, res = self.finality.certified_result(task_id)
            if cert is None or res is None or res.result_root != cert.result_root:
                return None
            hit = cache[task_id] = summarise(res)
        return hit

    def certified_rewards(self, task_id: bytes):
        """(refund, ((account, reward, labels, accuracy), ...)) of a certified task whose
        certified result this node reproduces, else None.  Kept per task (small), so
        rewards_get over many certified tasks does not need their full results again."""
        return self._certified_summary(self._rewards, task_id, lambda res: (
            res.refund, tuple((a.account, a.reward, a.labels, a.accuracy) for a in res.annotators)))

    def reputation_snapshot(self, created_at: int) -> tuple[dict, bytes]:
        """Earned reputation for a task created at ``created_at`` and a digest of the
        certified tasks it was computed from (for cache keys)."""
        lag = self.params.reputation_lag_ms
        outcomes = []
        for tid, t in sorted(self.tasks.items()):
            if t.deadline <= created_at - lag and self.finality.is_certified(tid):
                o = self.task_outcome(tid)
                if o is not None:
                    outcomes.append(o)
        digest = sha256(b"".join(o.task_id for o in outcomes))
        # compute_earned is linear in all certified (task, annotator) pairs (~0.16 s at 5,000
        # tasks x 20 annotators) and is asked for on every result lookup and finality tick;
        # the same certified set gives the same snapshot, so keep the last few.
        earned = self._earned.get(digest)
        if earned is None:
            earned = compute_earned(outcomes)
            if len(self._earned) >= 16:
                self._earned.pop(next(iter(self._earned)))
            self._earned[digest] = earned
        return earned, digest

    def weight_fn(self, task: TaskAnnouncement):
        """(weight_of(account) -> fixed point, snapshot digest) for ``task``."""
        earned, digest = self.reputation_snapshot(task.created_at)
        domain = task.schema.domain
        return (lambda a: compute_weight(a, domain, earned, self.genesis.reputation, self.params)), digest

    # ------------------------------------------------------------------ results

    def task_result(self, task_id: bytes) -> TaskResult:
        """Provisional result over every batch (and gold reveal) this node holds for the task."""
        return self.compute_result(task_id, None)

    def compute_result(self, task_id: bytes, ids) -> TaskResult:
        """Result over exactly the pinned message ids ``ids`` (batches and at most one
        gold reveal; None: all held). Cached by (set root, reputation snapshot).

        Runs the aggregation on the calling (event-loop) thread when it is not cached;
        the finality service and the RPC methods call :meth:`prepare_result` first, so a
        big task's aggregation runs in a worker thread and this finds it cached."""
        key, cached, job = self._result_job(task_id, ids)
        if cached is not None:
            return cached
        res = self._run_result_job(job)
        self._result_cache.put(key, res)
        return res

    async def prepare_result(self, task_id: bytes, ids=None) -> TaskResult:
        """:meth:`compute_result`, with the reading, decoding and aggregation of a set of
        at least ``result_thread_min_messages`` messages in a worker thread (one at a
        time), so the event loop (gossip, sync, RPC) keeps running meanwhile.  A
        max-size task with gold takes seconds (BENCHMARKS.md); small sets stay on the
        loop, where a thread hop would cost more than it saves."""
        key, cached, job = self._result_job(task_id, ids)
        if cached is not None:
            return cached
        if len(job[2]) < self.result_thread_min_messages:
            res = self._run_result_job(job)
        else:
            async with self._result_limiter:
                cached = self._result_cache.get(key)  # computed while we waited for the limiter
                if cached is not None:
                    return cached
                res = await trio.to_thread.run_sync(self._run_result_job, job)
        self._result_cache.put(key, res)  # on the loop thread: the cache is not thread-safe
        return res

    def _result_job(self, task_id: bytes, ids):
        """(cache key, cached result or None, job for _run_result_job or None) for the
        result over ``ids``: the set and the reputation snapshot are fixed here, on the
        loop thread; reading and decoding the messages is left to the job."""
        ids = list(self.task_pinnable_ids(task_id) if ids is None else ids)
        task = self.tasks[task_id]
        weight_of, snap = self.weight_fn(task)
        key = compute_set_root(task_id, ids) + snap
        cached = self._result_cache.get(key)
        if cached is not None:
            return key, cached, None
        return key, None, (task_id, task, ids, weight_of)

    def _run_result_job(self, job) -> TaskResult:
        """Read the set's messages and compute one result (safe in a worker thread: store
        reads are, and the rest is pure)."""
        from protocol.tally import compute_task_result

        task_id, task, ids, weight_of = job
        started = time.perf_counter()
        batches, golds = {}, []
        for mid, m in self._decode_ids(ids):
            if m.kind == KIND_BATCH:
                batches[mid] = m.body
            elif m.kind == KIND_GOLD:
                golds.append((mid, m.body))
        # Every valid reveal of a task carries the same answers (they match one
        # commitment); pin the smallest id so the set is canonical.
        gold_id, gold = min(golds, key=lambda g: g[0]) if golds else (None, None)
        res = compute_task_result(task_id, task, batches, gold, weight_of, self.params, gold_id=gold_id)
        self.metrics.observe_consensus(time.perf_counter() - started)
        return res

"""The node's side of the keep rule (``protocol/keep.py``): which batches and gold reveals
of a task it stores, checked as each arrives.

For batches the rule is one vote per (annotator, item): a batch is kept while it owns a
counted label of its annotator. ``BatchKeeper`` holds, per task, the ``AnnotatorVotes``
of every annotator, built from the store the first time a task gets a batch after the
node started (the held batches in ascending id order), and answers for each new batch:
kept (``ACCEPT``, or ``KEPT_OVERLAPPING`` when its annotator already labelled one of its
items here), or surplus (``SURPLUS``), and which held batches it displaces (the node
deletes those, unless finality still needs them: ``FinalityService.protected_batch_ids``).

For gold reveals of a task (all with the same answers: they differ only in their
``created_at``) the rule is to keep the one with the smallest id, the one a result pins
(PROTOCOL.md 10.5).

Memory: about 60 bytes per (annotator, item) labelled (62 MB for 1,000,000). The state of the least recently
used tasks is dropped past ``max_entries`` entries (and rebuilt from the store when such a
task gets a batch again); the newest task's is kept whatever its size.
"""
from __future__ import annotations

from collections import OrderedDict

from protocol.keep import AnnotatorVotes
from protocol.messages import ACCEPT, KIND_BATCH, KIND_GOLD, AnnotationBatch, Verdict, decode_message, ignore

from .verdicts import KEPT_OVERLAPPING, SURPLUS

#: (annotator, item) entries held in memory over all tasks, about 60 bytes each.
MAX_ENTRIES = 1_000_000

#: A gold reveal with a larger id than one held (the same answers signed again).
GOLD_SURPLUS = ignore("not stored: a gold reveal of this task with a smaller id is held (the one a result pins)")


class _TaskVotes:
    __slots__ = ("annotators", "entries")

    def __init__(self) -> None:
        self.annotators: dict[bytes, AnnotatorVotes] = {}
        self.entries = 0


class BatchKeeper:
    def __init__(self, store, params, max_entries: int = MAX_ENTRIES):
        self.store = store
        self.params = params
        self.max_entries = max_entries
        self._tasks: OrderedDict[bytes, _TaskVotes] = OrderedDict()
        self._entries = 0

    def check_batch(self, mid: bytes, batch: AnnotationBatch) -> tuple[Verdict, list[bytes]]:
        """Count a valid batch that is not stored yet: (ACCEPT | KEPT_OVERLAPPING | SURPLUS,
        the held batches it displaces). The count is taken at once, so call this only for
        a batch that will be stored if kept (``forget`` undoes a failed write)."""
        tv = self._task(batch.task_id)
        votes = tv.annotators.get(batch.annotator)
        if votes is not None and votes.owns(mid):  # counted already (written concurrently)
            return ACCEPT, []  # the store says duplicate
        overlapping = votes is not None and votes.overlaps(batch.labels)
        kept, displaced = self._add(tv, mid, batch)
        if not kept:
            return SURPLUS, []
        return (KEPT_OVERLAPPING if overlapping else ACCEPT), displaced

    def kept_batch_ids(self, task_id: bytes) -> set[bytes]:
        """The held batches of a task that the rule keeps (owners of a counted label)."""
        out: set[bytes] = set()
        for votes in self._task(task_id).annotators.values():
            out |= votes.kept_ids()
        return out

    def check_gold(self, mid: bytes, task_id: bytes, pending: dict) -> tuple[Verdict, list[bytes]]:
        """The reveal with the smallest id is kept: (ACCEPT or GOLD_SURPLUS, held reveals it
        displaces). ``pending``: task -> smallest reveal id admitted earlier in the same write."""
        held = self.store.task_message_ids(task_id, KIND_GOLD) + ([pending[task_id]] if task_id in pending else [])
        if min(held, default=mid) < mid:
            return GOLD_SURPLUS, []
        pending[task_id] = mid
        return ACCEPT, [g for g in held if g > mid]  # stored, or admitted earlier in this write

    def forget(self) -> None:
        """Drop every task's state (after a failed write: it counted batches not stored)."""
        self._tasks.clear()
        self._entries = 0

    def _task(self, task_id: bytes) -> _TaskVotes:
        tv = self._tasks.get(task_id)
        if tv is not None:
            self._tasks.move_to_end(task_id)
            return tv
        tv = self._tasks[task_id] = _TaskVotes()
        ids = sorted(self.store.task_message_ids(task_id, KIND_BATCH))  # ascending: nothing displaced
        for start in range(0, len(ids), 1024):
            chunk = ids[start:start + 1024]
            for mid, raw in zip(chunk, self.store.get_many(chunk)):
                if raw is not None:
                    self._add(tv, mid, decode_message(raw, self.params).body)
        return tv

    def _add(self, tv: _TaskVotes, mid: bytes, b: AnnotationBatch) -> tuple[bool, list[bytes]]:
        votes = tv.annotators.get(b.annotator)
        if votes is None:
            votes = tv.annotators[b.annotator] = AnnotatorVotes()
        before = votes.items_labelled()
        out = votes.add_batch(mid, b.labels)
        self._grow(tv, votes.items_labelled() - before)
        return out

    def _grow(self, tv: _TaskVotes, n: int) -> None:
        tv.entries += n
        self._entries += n
        while self._entries > self.max_entries and len(self._tasks) > 1:
            _, old = self._tasks.popitem(last=False)
            self._entries -= old.entries

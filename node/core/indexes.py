"""In-memory indexes of the node's store, rebuilt from it at start."""
from __future__ import annotations

from sortedcontainers import SortedList

from protocol.sync import fingerprint_from_sum


class TaskIndex:
    """Per task: the sorted ids of the messages we hold and their fingerprint sum
    (what anti-entropy sync compares). Kept in memory, rebuilt from the store at start."""

    def __init__(self):
        self.task_ids = SortedList()
        self.ids: dict[bytes, SortedList] = {}
        self.sums: dict[bytes, int] = {}

    def add_task(self, task_id: bytes) -> None:
        if task_id not in self.ids:
            self.task_ids.add(task_id)
            self.ids[task_id] = SortedList()
            self.sums[task_id] = 0

    def add(self, task_id: bytes, mid: bytes) -> None:
        lst = self.ids.get(task_id)
        if lst is None:
            self.add_task(task_id)
            lst = self.ids[task_id]
        if mid in lst:
            return
        lst.add(mid)
        self.sums[task_id] = (self.sums[task_id] + int.from_bytes(mid, "big")) % (1 << 256)

    def remove(self, task_id: bytes, mid: bytes) -> None:
        lst = self.ids.get(task_id)
        if lst is None or mid not in lst:
            return
        lst.remove(mid)
        self.sums[task_id] = (self.sums[task_id] - int.from_bytes(mid, "big")) % (1 << 256)

    def fingerprint(self, task_id: bytes) -> tuple[int, bytes]:
        lst = self.ids.get(task_id)
        if lst is None:
            return 0, fingerprint_from_sum(0, 0)
        return len(lst), fingerprint_from_sum(self.sums[task_id], len(lst))

"""Which annotation batches a node keeps: one vote per (annotator, item), sans-IO.

How it works
------------
The tally (PROTOCOL.md 10.1) reads, for annotator A and item i, only the *set* of
distinct labels A gave i across all of A's batches of the task: one label is a vote,
two or more are an equivocation (none counts). A batch that adds nothing to those sets
is **surplus**, and nodes do not keep it (PROTOCOL.md 6.3):

* the **counted labels** of (A, i) are the two smallest label indexes A gave i in the
  set: two are enough to show an equivocation, a third changes nothing;
* the **owner** of a counted label (i, l) is the batch with the smallest id among A's
  batches that carry (i, l);
* a batch is **kept** iff it owns at least one counted label; otherwise it is surplus.

What follows (``tests/test_keep.py`` checks each on random sets and arrival orders):

1. *Nothing that counts is dropped.* Over the kept batches every (A, i) has the same
   label set as over the whole set if A gave i one label, and at least two labels if
   A gave i two or more; so the vote table, and with it every label, confidence,
   reward and equivocation, is the same (only ``set_root`` differs).
2. *Bounded.* At most two batches per item are kept per annotator and task: at most
   ``2 * items`` batches, however many the annotator signs.
3. *A function of the set, monotone in what it drops.* Whether a batch is kept depends
   only on the set, not on the order in which it was learned. A batch that is surplus
   in a set stays surplus in every bigger set (more batches only bring smaller ids or
   smaller labels), so a node may refuse a surplus batch for good, and nodes that hold
   different parts of a set end with the kept part of their union.
4. *Honest annotators are never touched.* If no two of A's batches label the same
   item, each batch owns all its labels and is kept, whatever else happens.

A kept batch stops being kept only when its annotator signs, for each of its labels,
the same label for the same item in a batch with a smaller id, or two smaller labels
for that item. Only the annotator's own key can do that.

``compute_kept_batches`` is the definition over a whole set; ``AnnotatorVotes`` keeps it
up to date one batch at a time for one (task, annotator), reporting the batches that
stop being kept (the node deletes those).
"""
from __future__ import annotations

from collections.abc import Iterable

from .messages import AnnotationBatch, MessageId

#: An item's counted labels: ((label, owner id),) or ((l1, owner1), (l2, owner2)) with l1 < l2.
_Counted = tuple[tuple[int, bytes], ...]


class AnnotatorVotes:
    """The counted labels of one annotator in one task and the batches that own them.

    ``add_batch`` takes the annotator's batches one at a time, in any order (each id
    once); after any sequence of calls, the batches with ``owns(id)`` are exactly
    ``compute_kept_batches`` of the batches added so far. Memory: one entry per item
    the annotator labelled and one per batch that owns something."""

    __slots__ = ("_items", "_owned")

    def __init__(self) -> None:
        self._items: dict[int, _Counted] = {}
        self._owned: dict[bytes, int] = {}  # batch id -> counted labels it owns (> 0)

    def add_batch(self, batch_id: MessageId, pairs: Iterable[tuple[int, int]]) -> tuple[bool, list[MessageId]]:
        """Add one batch (its (item, label) pairs). Returns (kept, displaced): whether the
        batch owns a counted label, and the batches added earlier that no longer own any
        (they became surplus because of this one)."""
        items, owned = self._items, self._owned
        gained = 0
        losers: list[bytes] = []
        for item, label in pairs:
            cur = items.get(item)
            if cur is None:
                items[item] = ((label, batch_id),)
                gained += 1
                continue
            # ``lost``: the batch whose ownership of a counted label ends here, if any
            lost = None
            if cur[0][0] == label or (len(cur) == 2 and cur[1][0] == label):
                k = 0 if cur[0][0] == label else 1
                owner = cur[k][1]
                if batch_id >= owner:
                    continue  # a batch with a smaller id carries this label already
                lost = owner
                items[item] = cur[:k] + ((label, batch_id),) + cur[k + 1:]
            elif len(cur) == 1:
                items[item] = tuple(sorted((cur[0], (label, batch_id))))
            elif label < cur[1][0]:
                lost = cur[1][1]  # its label becomes the third: no longer counted
                items[item] = tuple(sorted((cur[0], (label, batch_id))))
            else:
                continue  # a third label, larger than both counted ones
            gained += 1
            if lost is not None:
                n = owned[lost] - 1
                if n:
                    owned[lost] = n
                else:
                    del owned[lost]
                    losers.append(lost)
        if gained:
            owned[batch_id] = owned.get(batch_id, 0) + gained
        return gained > 0, losers

    def owns(self, batch_id: MessageId) -> bool:
        return batch_id in self._owned

    def kept_ids(self) -> set[MessageId]:
        return set(self._owned)

    def items_labelled(self) -> int:
        return len(self._items)

    def overlaps(self, pairs: Iterable[tuple[int, int]]) -> bool:
        """Whether the annotator labelled any of these items in a batch added before."""
        return any(item in self._items for item, _ in pairs)


def compute_max_kept_batches(n_items: int) -> int:
    """The most batches of one annotator that are kept for a task of ``n_items`` items
    (two counted labels per item, each owned by one batch)."""
    return 2 * n_items


def compute_kept_batches(batches: Iterable[tuple[MessageId, AnnotationBatch]]) -> set[MessageId]:
    """The ids of the batches a node keeps out of ``batches`` (one task's; see the module
    docstring): those owning a counted label of their annotator."""
    by_annotator: dict[bytes, list[tuple[bytes, AnnotationBatch]]] = {}
    for bid, b in batches:
        by_annotator.setdefault(b.annotator, []).append((bid, b))
    kept: set[bytes] = set()
    for rows in by_annotator.values():
        votes = AnnotatorVotes()
        for bid, b in sorted(rows, key=lambda r: r[0]):  # ascending ids: nothing is displaced
            votes.add_batch(bid, b.labels)
        kept |= votes.kept_ids()
    return kept

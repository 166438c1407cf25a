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

#: An item's counted labels are kept as *codes* ``owner index << LABEL_BITS | label``: one
#: int for one label, a pair of ints (smaller label first) for two. Labels are < 1024
#: (``Params.max_classes``), so they fit.
LABEL_BITS = 11
_LABEL_MASK = (1 << LABEL_BITS) - 1


class AnnotatorVotes:
    """The counted labels of one annotator in one task and the batches that own them.

    ``add_batch`` takes the annotator's batches one at a time, in any order (each id
    once); after any sequence of calls, the batches with ``owns(id)`` are exactly
    ``compute_kept_batches`` of the batches added so far. Memory: one dict entry per item
    the annotator labelled, and per batch that owns something its id and a count; a batch
    that owns nothing leaves no trace. A batch none of whose items the annotator labelled
    before (the usual case) is counted without a Python step per label."""

    __slots__ = ("_items", "_ids", "_index", "_owned")

    def __init__(self) -> None:
        self._items: dict[int, int | tuple[int, int]] = {}  # item -> code, or (code, code)
        self._ids: list[bytes] = []        # owner index -> batch id (append-only)
        self._index: dict[bytes, int] = {}  # batch id -> owner index
        self._owned: dict[int, int] = {}   # owner index -> counted labels it owns (> 0)

    def add_batch(self, batch_id: MessageId, pairs) -> tuple[bool, list[MessageId]]:
        """Add one batch (its (item, label) pairs, items distinct). Returns (kept, displaced):
        whether the batch owns a counted label, and the batches added earlier that no
        longer own any (they became surplus because of this one)."""
        items = self._items
        me = len(self._ids)  # this batch's owner index, if it gains anything
        base = me << LABEL_BITS
        keys = [p[0] for p in pairs]
        if items.keys().isdisjoint(keys):  # all new items: it owns every label, displaces nothing
            if not keys:
                return False, []
            items.update(zip(keys, [base | p[1] for p in pairs]))
            self._own(batch_id, len(keys))
            return True, []
        ids, owned = self._ids, self._owned
        gained = 0
        losers: list[bytes] = []
        for item, label in pairs:
            cur = items.get(item)
            if cur is None:
                items[item] = base | label
                gained += 1
                continue
            codes = (cur,) if isinstance(cur, int) else cur
            lost = None  # the owner index whose counted label ends here, if any
            same = [c for c in codes if c & _LABEL_MASK == label]
            if same:
                owner = same[0] >> LABEL_BITS
                if batch_id >= ids[owner]:
                    continue  # a batch with a smaller id carries this label already
                lost = owner
                codes = tuple(base | label if c is same[0] else c for c in codes)
            elif len(codes) == 1:
                codes = tuple(sorted((codes[0], base | label), key=lambda c: c & _LABEL_MASK))
            elif label < codes[1] & _LABEL_MASK:
                lost = codes[1] >> LABEL_BITS  # its label becomes the third: no longer counted
                codes = tuple(sorted((codes[0], base | label), key=lambda c: c & _LABEL_MASK))
            else:
                continue  # a third label, larger than both counted ones
            items[item] = codes[0] if len(codes) == 1 else codes
            gained += 1
            if lost is not None:
                n = owned[lost] - 1
                if n:
                    owned[lost] = n
                else:
                    del owned[lost]
                    losers.append(ids[lost])
                    del self._index[ids[lost]]
        if gained:
            self._own(batch_id, gained)
        return gained > 0, losers

    def _own(self, batch_id: bytes, n: int) -> None:
        me = len(self._ids)
        self._ids.append(batch_id)
        self._index[batch_id] = me
        self._owned[me] = n

    def owns(self, batch_id: MessageId) -> bool:
        return batch_id in self._index

    def kept_ids(self) -> set[MessageId]:
        return set(self._index)

    def items_labelled(self) -> int:
        return len(self._items)

    def overlaps(self, pairs) -> bool:
        """Whether the annotator labelled any of these items in a batch added before."""
        return not self._items.keys().isdisjoint(p[0] for p in pairs)


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

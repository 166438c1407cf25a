"""protocol/keep.py: which batches a node keeps (one vote per (annotator, item)).

Each property of the module docstring, on random sets and random arrival orders."""
from __future__ import annotations

import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.keep import AnnotatorVotes, compute_kept_batches
from protocol.messages import AnnotationBatch
from protocol.params import Params

N_ITEMS, N_LABELS = 6, 4

pairs_st = st.dictionaries(st.integers(0, N_ITEMS - 1), st.integers(0, N_LABELS - 1), min_size=1, max_size=4)
batch_st = st.tuples(st.integers(0, 2), pairs_st)  # (annotator number, {item: label})
set_st = st.lists(batch_st, min_size=1, max_size=24)


def make_set(rows, salt=b""):
    """[(id, AnnotationBatch)] with distinct pseudo-random ids."""
    out = []
    for k, (a, pairs) in enumerate(rows):
        b = AnnotationBatch(annotator=bytes([a]) * 32, task_id=b"t" * 32, created_at=k,
                            labels=tuple(sorted(pairs.items())))
        out.append((hashlib.sha256(salt + k.to_bytes(4, "big")).digest(), b))
    return out


def replay(batches):
    """What a node holds after receiving ``batches`` in this order (keeping what the
    rule keeps and deleting what it displaces)."""
    votes: dict[bytes, AnnotatorVotes] = {}
    held: set[bytes] = set()
    for bid, b in batches:
        kept, displaced = votes.setdefault(b.annotator, AnnotatorVotes()).add_batch(bid, b.labels)
        if kept:
            held.add(bid)
        held.difference_update(displaced)
    return held


@settings(max_examples=300, deadline=None)
@given(set_st, st.randoms(use_true_random=False))
def test_any_arrival_order_keeps_the_same_batches(rows, rnd):
    batches = make_set(rows)
    want = compute_kept_batches(batches)
    order = list(batches)
    rnd.shuffle(order)
    assert replay(order) == want


@settings(max_examples=300, deadline=None)
@given(set_st, st.lists(st.integers(0, 1), min_size=24, max_size=24), st.randoms(use_true_random=False))
def test_two_sides_of_a_partition_converge_through_what_they_hold(rows, sides, rnd):
    """Each side keeps what the rule keeps of its own arrivals; after the heal each side
    can fetch only what the other *holds* (surplus was never stored): still both end with
    the kept part of the union."""
    batches = make_set(rows)
    a = [x for x, s in zip(batches, sides) if s == 0]
    b = [x for x, s in zip(batches, sides) if s == 1]
    rnd.shuffle(a)
    rnd.shuffle(b)
    by_id = dict(batches)
    held_a, held_b = replay(a), replay(b)
    after_a = replay([(i, by_id[i]) for i in [x for x, _ in a if x in held_a] + sorted(held_b)])
    after_b = replay([(i, by_id[i]) for i in [x for x, _ in b if x in held_b] + sorted(held_a)])
    assert after_a == after_b == compute_kept_batches(batches)


@settings(max_examples=200, deadline=None)
@given(set_st, set_st)
def test_surplus_stays_surplus_in_a_bigger_set(rows, more):
    small = make_set(rows)
    big = small + make_set(more, salt=b"more")
    surplus = {i for i, _ in small} - compute_kept_batches(small)
    assert not surplus & compute_kept_batches(big)


@settings(max_examples=200, deadline=None)
@given(set_st)
def test_at_most_two_batches_per_item_and_annotator(rows):
    batches = make_set(rows)
    kept = compute_kept_batches(batches)
    for a in {b.annotator for _, b in batches}:
        assert sum(1 for i, b in batches if i in kept and b.annotator == a) <= 2 * N_ITEMS


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, N_LABELS - 1), min_size=1, max_size=N_ITEMS), st.randoms(use_true_random=False))
def test_an_annotator_that_never_labels_an_item_twice_keeps_every_batch(labels, rnd):
    items = list(range(len(labels)))
    rnd.shuffle(items)
    rows, k = [], 0
    while k < len(items):  # consecutive runs of distinct items, one run per batch
        n = rnd.randint(1, 3)
        rows.append((0, {i: labels[i] for i in items[k:k + n]}))
        k += n
    batches = make_set(rows)
    assert compute_kept_batches(batches) == {i for i, _ in batches}


@settings(max_examples=60, deadline=None)
@given(set_st)
def test_the_tally_over_the_kept_batches_is_the_tally_over_all(rows):
    from protocol.tally import compute_task_result
    from tests.helpers import make_task

    params = Params()
    task = make_task(n_items=N_ITEMS, labels=tuple("abcd"))
    batches = make_set(rows)
    kept = compute_kept_batches(batches)

    def result(sel):
        r = compute_task_result(b"t" * 32, task, {i: b for i, b in batches if i in sel}, None,
                                lambda a: params.fresh_weight, params)
        return r.canonical()[2:]  # everything but task id and set_root

    assert result(kept) == result({i for i, _ in batches})


def test_the_rule_on_a_worked_example():
    """The cases of the rule one by one, for one annotator (ids in the order given)."""
    ids = [bytes([k]) * 32 for k in range(1, 8)]
    v = AnnotatorVotes()
    assert v.add_batch(ids[3], [(0, 2)]) == (True, [])          # item 0: label 2, first seen
    assert v.add_batch(ids[4], [(0, 2)]) == (False, [])         # the same label, a larger id: surplus
    assert v.add_batch(ids[1], [(0, 2)]) == (True, [ids[3]])    # the same label, a smaller id: takes over
    assert v.add_batch(ids[5], [(0, 3)]) == (True, [])          # a second label: counted (equivocation)
    assert v.add_batch(ids[6], [(0, 3), (1, 0)]) == (True, [])  # repeats label 3, but item 1 is new
    assert v.add_batch(ids[2], [(0, 1)]) == (True, [ids[5]])    # a smaller third label pushes label 3 out
    assert v.add_batch(ids[0], [(0, 3)]) == (False, [])         # label 3 no longer counts, whatever the id
    assert {i for i in ids if v.owns(i)} == {ids[1], ids[2], ids[6]}
    assert v.overlaps([(1, 2)]) and not v.overlaps([(5, 0)])


def test_a_random_flood_of_one_annotator_stays_bounded():
    rng = random.Random(3)
    rows = [(0, {rng.randrange(N_ITEMS): rng.randrange(N_LABELS)}) for _ in range(5000)]
    batches = make_set(rows)
    kept = compute_kept_batches(batches)
    assert len(kept) <= 2 * N_ITEMS
    assert replay(batches) == kept

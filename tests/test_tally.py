"""The tally over signed messages: determinism, Sybil resistance, equivocation, rewards."""
from __future__ import annotations

import random
import subprocess
import sys

from hypothesis import given, settings, strategies as st

from protocol.params import DEFAULT_PARAMS as P
from protocol.tally import ONE, compute_task_result

from .helpers import make_batch, make_task, make_test_genesis, pk, signed

G = make_test_genesis()
NET = G.network_id


def _setup(n_items=30, n_annotators=8, seed=1, bounty=10_000):
    rng = random.Random(seed)
    task = make_task(n_items=n_items, bounty=bounty)
    tid = signed(task, 1, NET).compute_id(NET)
    truth = [rng.randrange(3) for _ in range(n_items)]
    batches = {}
    for a in range(n_annotators):
        acc = 0.9 if a < n_annotators // 2 else 0.5
        pairs = [(i, truth[i] if rng.random() < acc else rng.randrange(3)) for i in range(n_items) if rng.random() < 0.8]
        # split each annotator's labels over two batches
        half = len(pairs) // 2
        for part in (pairs[:half], pairs[half:]):
            if part:
                m = signed(make_batch(100 + a, tid, part), 100 + a, NET)
                batches[m.compute_id(NET)] = m.body
    return task, tid, batches, truth


def fresh(_):
    return P.fresh_weight


def test_delivery_order_does_not_matter():
    task, tid, batches, _ = _setup()
    items = list(batches.items())
    ref = compute_task_result(tid, task, dict(items), None, fresh, P)
    rng = random.Random(9)
    for _ in range(1000):
        rng.shuffle(items)
        r = compute_task_result(tid, task, dict(items), None, fresh, P)
        assert r.result_root == ref.result_root and r.set_root == ref.set_root


def test_second_process_same_bytes():
    task, tid, batches, _ = _setup()
    ref = compute_task_result(tid, task, batches, None, fresh, P).result_root.hex()
    code = ("from tests.test_tally import _setup, fresh, P; from protocol.tally import compute_task_result;"
            "t, tid, b, _ = _setup(); print(compute_task_result(tid, t, b, None, fresh, P).result_root.hex())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ref


def test_all_fresh_annotators_still_get_accurate_labels():
    task, tid, batches, truth = _setup(n_items=60, n_annotators=9, seed=4)
    r = compute_task_result(tid, task, batches, None, fresh, P)
    acc = sum(1 for a, b in zip(r.label, truth) if a == b) / len(truth)
    assert acc >= 0.85


def test_hundred_fresh_keys_do_not_outvote_three_experts():
    task = make_task(n_items=10, bounty=1000)
    tid = signed(task, 1, NET).compute_id(NET)
    batches = {}
    for e in range(3):  # experts say label 0
        m = signed(make_batch(10 + e, tid, [(i, 0) for i in range(10)]), 10 + e, NET)
        batches[m.compute_id(NET)] = m.body
    for s in range(100):  # sybils say label 2
        m = signed(make_batch(500 + s, tid, [(i, 2) for i in range(10)]), 500 + s, NET)
        batches[m.compute_id(NET)] = m.body
    experts = {pk(10 + e) for e in range(3)}
    r = compute_task_result(tid, task, batches, None, lambda a: ONE if a in experts else P.fresh_weight, P)
    assert r.label == (0,) * 10
    rewards = {a.account: a.reward for a in r.annotators}
    assert min(rewards[e] for e in experts) > max(v for a, v in rewards.items() if a not in experts)


def test_equivocator_weighs_nothing_on_that_item():
    task = make_task(n_items=3)
    tid = signed(task, 1, NET).compute_id(NET)
    b1 = signed(make_batch(10, tid, [(0, 1), (1, 1)]), 10, NET)
    b2 = signed(make_batch(10, tid, [(0, 2)], created_at=task.created_at + 5), 10, NET)
    b3 = signed(make_batch(11, tid, [(0, 0)]), 11, NET)
    r = compute_task_result(tid, task, {m.compute_id(NET): m.body for m in (b1, b2, b3)}, None, fresh, P)
    assert r.equivocations == ((pk(10), 0),)
    assert r.label[0] == 0  # only annotator 11's vote counts on item 0
    assert r.votes[0] == 1


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10**6), bounty=st.integers(0, 10**15), n=st.integers(1, 10))
def test_rewards_sum_exactly_to_bounty(seed, bounty, n):
    task, tid, batches, _ = _setup(n_items=8, n_annotators=n, seed=seed, bounty=bounty)
    r = compute_task_result(tid, task, batches, None, fresh, P)
    assert sum(a.reward for a in r.annotators) + r.refund == bounty
    assert all(a.reward >= 0 for a in r.annotators) and r.refund >= 0

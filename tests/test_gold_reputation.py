"""Gold commit-reveal, rewards that pay accuracy, reputation from certified tasks with a lag."""
from __future__ import annotations

import contextlib
import json
import random

import pytest
import trio

from node.app import Node
from node.rpc.errors import RpcError
from node.rpc.methods import METHODS
from node.keystore import Keystore
from protocol.genesis import make_genesis
from protocol.messages import KIND_GOLD, GoldReveal, compute_gold_commitment
from protocol.params import DEFAULT_PARAMS as P
from protocol.reputation import ONE, AnnotatorOutcome, TaskOutcome, compute_earned
from protocol.tally import compute_task_result

from .helpers import T0, key, make_batch, make_task, make_test_genesis, pk, signed
from .helpers import FakeClock, advance, wait_for

G = make_test_genesis()
NET = G.network_id


def test_experts_proven_right_by_gold_earn_more_than_a_wrong_herd():
    n_items = 20
    rng = random.Random(2)
    truth = [rng.randrange(3) for _ in range(n_items)]
    # 6 gold items, two of each class (a requester picks gold that covers the label set),
    # hidden among the others
    gold = tuple(sorted((i, truth[i]) for c in range(3) for i in [j for j in range(n_items) if truth[j] == c][:2]))
    salt = bytes(32)
    task = make_task(n_items=n_items, bounty=1_000_000, gold_commitment=compute_gold_commitment(salt, gold))
    tid = signed(task, 1, NET).compute_id(NET)
    batches = {}
    experts = [10, 11, 12]
    herd = list(range(100, 110))
    for e in experts:
        m = signed(make_batch(e, tid, [(i, truth[i]) for i in range(n_items)]), e, NET)
        batches[m.compute_id(NET)] = m.body
    for h in herd:  # a larger herd that agrees on the wrong label everywhere
        m = signed(make_batch(h, tid, [(i, (truth[i] + 1) % 3) for i in range(n_items)]), h, NET)
        batches[m.compute_id(NET)] = m.body
    reveal = signed(GoldReveal(pk(1), tid, task.deadline, salt, gold), 1, NET)
    fresh = lambda a: P.fresh_weight
    res = compute_task_result(tid, task, batches, reveal.body, fresh, P, gold_id=reveal.compute_id(NET))
    assert reveal.compute_id(NET) in res.batch_ids  # the reveal is pinned in the set
    assert list(res.label) == truth
    rewards = {a.account: a.reward for a in res.annotators}
    expert_total = sum(rewards[pk(e)] for e in experts)
    herd_total = sum(rewards[pk(h)] for h in herd)
    assert expert_total > herd_total
    assert min(rewards[pk(e)] for e in experts) > max(rewards[pk(h)] for h in herd)
    assert expert_total + herd_total + res.refund == task.bounty
    # without gold the herd wins the labels: gold is what proves the experts right
    res_no_gold = compute_task_result(tid, task, batches, None, fresh, P)
    assert list(res_no_gold.label) != truth


def test_reputation_pays_skill_not_volume_and_penalises_equivocation():
    def outcome(tid, acc_score, labels, eq=0, account=b"a" * 32, domain="med"):  # fully trusted work
        return TaskOutcome(tid, 0, domain, 2, (AnnotatorOutcome(account, labels, acc_score, eq, ONE),))
    expert = compute_earned([outcome(b"1" * 32, 95 * ONE, 100)])[(b"a" * 32, "med")]
    spammer = compute_earned([outcome(b"1" * 32, 50 * ONE, 100)])[(b"a" * 32, "med")]
    lucky = compute_earned([outcome(b"1" * 32, 3 * ONE, 3)])[(b"a" * 32, "med")]
    cheat = compute_earned([outcome(b"1" * 32, 95 * ONE, 100, eq=3)])[(b"a" * 32, "med")]
    assert expert > lucky > spammer == 0
    assert cheat < expert
    # order and duplicates of outcomes do not matter
    o = [outcome(bytes([i]) * 32, 9 * ONE, 10) for i in range(5)]
    assert compute_earned(o) == compute_earned(list(reversed(o)) + o[:2])


# ------------------------------------------------------------------ one validator node


async def call(node, method, **params):
    return await METHODS[method](node, params)


#: finality fast enough for tests that wait for certificates on the fake clock
FAST_FINALITY = {"grace_period_ms": 1000, "round_timeout_ms": 2000}


@contextlib.asynccontextmanager
async def one_validator_node(tmp_path, name, params=None):
    """A running node that is the network's only validator, with a funded local account
    "req", pre-trusted by the genesis (reputation 1.0: its gold vouches for annotators,
    docs/ledger.md): yields (node, its FakeClock, the genesis, the nursery it runs in)."""
    g = make_genesis(name, T0, [(pk(1000), 1)], [(pk(1), "", 1 << 16)], [(pk(1), 10**9)], params)
    clock = FakeClock()
    ks = Keystore(tmp_path / "n")
    ks.create("req", seed=bytes(key(1)))
    async with trio.open_nursery() as nursery:
        node = Node(tmp_path / "n", g, p2p_factory=None, clock=clock, keystore=ks, validator_key=key(1000),
                    finality_tick_s=0.01)
        await nursery.start(node.run)
        yield node, clock, g, nursery
        nursery.cancel_scope.cancel()


async def test_gold_reveal_and_reputation_lag_and_domains(tmp_path):
    lag = 60_000
    params = {"grace_period_ms": 1000, "round_timeout_ms": 2000, "reputation_lag_ms": lag}
    async with one_validator_node(tmp_path, "rep", params) as (node, clock, g, _):
        # Task A, domain "med": 3 experts right, 5 spammers; gold on 4 items, committed then revealed.
        rng = random.Random(4)
        n = 20
        truth = [rng.randrange(3) for _ in range(n)]
        r = await call(node, "task_post", account="req", title="A", labels=["x", "y", "z"], domain="med",
                       items=[f"i{i}" for i in range(n)], duration_s=10, bounty=10_000,
                       gold=[[i, truth[i]] for i in range(0, n, 5)])
        tid_a = bytes.fromhex(r["task_id"])
        assert node.tasks[tid_a].gold_commitment is not None
        for e in (10, 11, 12):
            await node.ingest(signed(make_batch(e, tid_a, [(i, truth[i]) for i in range(n)]), e, NET_of(g)).raw, "rpc")
        for s in range(5):
            await node.ingest(signed(make_batch(50 + s, tid_a, [(i, rng.randrange(3)) for i in range(n)]), 50 + s,
                                     NET_of(g)).raw, "rpc")
        clock.now = node.tasks[tid_a].deadline + 1
        await wait_for(lambda: node.store.task_message_ids(tid_a, KIND_GOLD), 10)  # revealed automatically
        await wait_for(lambda: tid_a not in node.gold_secrets(), 10)  # the stored reveal holds it now
        again = await call(node, "gold_reveal", task_id=tid_a.hex())
        assert again == {"reveal_id": node.store.task_message_ids(tid_a, KIND_GOLD)[0].hex(), "status": "duplicate"}
        async with trio.open_nursery() as clk:  # let protocol time run on
            clk.start_soon(advance, clock, clock.now + 60_000)
            await wait_for(lambda: node.finality.is_certified(tid_a), 10)
            clk.cancel_scope.cancel()
        cons = await call(node, "consensus_get", task_id=tid_a.hex())
        assert cons["status"] == "certified"
        got = [it["label_index"] for it in cons["items"]]
        assert sum(a == b for a, b in zip(got, truth)) >= 0.9 * n  # 3 experts among 5 random spammers
        rep = await call(node, "reputation_get", domain="med")
        w = {x["account"]: x["weight"] for x in rep["reputation"]}
        assert all(w[pk(e).hex()] > 10 * P.fresh_weight for e in (10, 11, 12))
        rewards = (await call(node, "rewards_get", task_id=tid_a.hex()))["totals"]
        assert {x["account"] for x in rewards[:3]} == {pk(e).hex() for e in (10, 11, 12)}

        async def sybil_task(domain, title):
            r = await call(node, "task_post", account="req", title=title, labels=["x", "y", "z"], domain=domain,
                           items=[f"q{i}" for i in range(5)], duration_s=10, bounty=0)
            tid = bytes.fromhex(r["task_id"])
            for e in (10, 11, 12):
                await node.ingest(signed(make_batch(e, tid, [(i, 0) for i in range(5)]), e, NET_of(g)).raw, "rpc")
            for s in range(30):
                await node.ingest(signed(make_batch(500 + s, tid, [(i, 2) for i in range(5)]), 500 + s,
                                         NET_of(g)).raw, "rpc")
            return tid

        # Before the lag has passed the snapshot does not hold task A yet: the crowd of fresh keys wins.
        early = await sybil_task("med", "early")
        assert set(node.task_result(early).label) == {2}
        # After the lag, in the same domain, the experts' reputation carries the labels...
        clock.now = node.tasks[tid_a].deadline + lag + 1
        late = await sybil_task("med", "late")
        assert set(node.task_result(late).label) == {0}
        # ...but it does not vouch for another domain.
        other = await sybil_task("sentiment", "other")
        assert set(node.task_result(other).label) == {2}
        exported = await call(node, "task_export", task_id=tid_a.hex(), format="csv")
        assert exported["status"] == "certified" and exported["content"].count("\n") == n + 1
        ls = await call(node, "task_export", task_id=tid_a.hex(), format="labelstudio")
        tasks = json.loads(ls["content"])
        assert [t["id"] for t in tasks] == list(range(n)) and '"choices"' in ls["content"]
        assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"][0] in ("x", "y", "z")


def NET_of(g):
    return g.network_id


async def test_big_aggregation_runs_off_the_event_loop(tmp_path, monkeypatch):
    """From result_thread_min_messages messages on, the finality proposal and the RPC
    aggregate in a worker thread: the event loop keeps running meanwhile (here it must,
    or the aggregation waits in vain for the loop to signal it), and the result is the
    same as an inline one."""
    import threading

    import protocol.tally as tally

    real = tally.compute_task_result
    started, loop_ran = threading.Event(), threading.Event()
    threads = []

    def watched(*args, **kwargs):
        threads.append(threading.current_thread())
        started.set()
        loop_ran.wait(10)  # the loop sets it; inline on the loop thread this would time out
        return real(*args, **kwargs)

    async def signal_when_started():
        while True:
            await wait_for(started.is_set, 30)
            started.clear()
            loop_ran.set()

    async with one_validator_node(tmp_path, "offloop", FAST_FINALITY) as (node, clock, g, nursery):
        node.result_thread_min_messages = 1
        r = await call(node, "task_post", account="req", title="big", labels=["x", "y"], domain="d",
                       items=[f"i{i}" for i in range(10)], duration_s=10, bounty=1000)
        tid = bytes.fromhex(r["task_id"])
        for e in (10, 11, 12):
            await node.ingest(signed(make_batch(e, tid, [(i, i % 2) for i in range(10)]), e, NET_of(g)).raw, "rpc")
        monkeypatch.setattr(tally, "compute_task_result", watched)
        nursery.start_soon(signal_when_started)
        cons = await call(node, "consensus_get", task_id=tid.hex())
        assert cons["status"] == "provisional" and loop_ran.is_set()
        assert [it["label_index"] for it in cons["items"]] == [i % 2 for i in range(10)]
        clock.now = node.tasks[tid].deadline + 1
        async with trio.open_nursery() as clk:
            clk.start_soon(advance, clock, clock.now + 60_000)
            await wait_for(lambda: node.finality.is_certified(tid), 10)
            clk.cancel_scope.cancel()
        await wait_for(lambda: tid in node.finality._certified_prepared, 10)
        assert threads and all(t is not threading.main_thread() for t in threads)
        cert, res = node.finality.certified_result(tid)  # cached by the tick: no new computation
        n_runs = len(threads)
        monkeypatch.setattr(tally, "compute_task_result", real)
        node._result_cache.clear()
        inline = node.compute_result(tid, res.batch_ids)
        assert len(threads) == n_runs and inline == res and res.result_root == cert.result_root
        import node.rpc.methods.tasks as api

        for fmt in ("jsonl", "csv", "labelstudio"):  # formatted in a worker thread or inline: same text
            monkeypatch.setattr(api, "EXPORT_THREAD_MIN_ITEMS", 1)
            threaded = await call(node, "task_export", task_id=tid.hex(), format=fmt)
            monkeypatch.setattr(api, "EXPORT_THREAD_MIN_ITEMS", 10**9)
            assert threaded == await call(node, "task_export", task_id=tid.hex(), format=fmt)


async def test_concurrent_task_posts_keep_every_gold_secret(tmp_path):
    """The gold secrets are one read-modify-write blob: posts racing each other (and the
    tick that forgets revealed ones) must not drop a secret."""
    async with one_validator_node(tmp_path, "secrets") as (node, clock, _, _):
        tids = []

        async def post(k):
            r = await call(node, "task_post", account="req", title=f"t{k}", labels=["x", "y"], domain="d",
                           items=[f"i{i}" for i in range(4)], duration_s=10 + k, bounty=0, gold=[[0, 1]])
            tids.append(bytes.fromhex(r["task_id"]))

        async with trio.open_nursery() as posts:
            for k in range(8):
                posts.start_soon(post, k)
        assert set(node.gold_secrets()) == set(tids) and len(tids) == 8
        clock.now = max(node.tasks[t].deadline for t in tids) + 1
        await wait_for(lambda: all(node.store.task_message_ids(t, KIND_GOLD) for t in tids), 10)
        await wait_for(lambda: not node.gold_secrets(), 10)


def test_result_cache_is_lru_bounded_by_items():
    from types import SimpleNamespace

    from node.core.results import ResultCache

    def res(n):
        return SimpleNamespace(label=(0,) * n)

    c = ResultCache(max_items=25)
    c.put(b"a", res(9))
    c.put(b"b", res(9))
    assert c.get(b"a") is not None  # a is now the most recently used
    c.put(b"c", res(9))  # 30 > 25: evicts the least recently used, b
    assert c.get(b"b") is None and c.get(b"a") is not None and c.get(b"c") is not None
    big = res(100)
    c.put(b"d", big)  # bigger than the budget: kept alone
    assert len(c) == 1 and c.get(b"d") is big
    c.put(b"d", res(1))  # replacing an entry frees its old size
    c.put(b"e", res(1))
    assert len(c) == 2


async def test_rewards_of_many_certified_tasks_need_no_recomputation(tmp_path, monkeypatch):
    """rewards_get reads each certified task's rewards from a small per-task summary: with
    a result cache too small to hold the results, a second call aggregates nothing."""
    import protocol.tally as tally

    runs = []
    real = tally.compute_task_result

    def counted(*args, **kwargs):
        runs.append(args[0])
        return real(*args, **kwargs)

    async with one_validator_node(tmp_path, "manytasks", FAST_FINALITY) as (node, clock, g, _):
        node._result_cache.max_items = 1  # only the newest result stays in memory
        tids = []
        for k in range(3):
            r = await call(node, "task_post", account="req", title=f"t{k}", labels=["x", "y"], domain="d",
                           items=[f"i{i}" for i in range(6)], duration_s=10, bounty=600 + k)
            tid = bytes.fromhex(r["task_id"])
            tids.append(tid)
            for e in (10, 11, 12 + k):
                await node.ingest(signed(make_batch(e, tid, [(i, i % 2) for i in range(6)]), e, NET_of(g)).raw, "rpc")
        clock.now = max(node.tasks[t].deadline for t in tids) + 1
        async with trio.open_nursery() as clk:
            clk.start_soon(advance, clock, clock.now + 60_000)
            await wait_for(lambda: all(node.finality.is_certified(t) for t in tids), 10)
            clk.cancel_scope.cancel()
        monkeypatch.setattr(tally, "compute_task_result", counted)
        first = await call(node, "rewards_get")
        assert first["pending_tasks"] == 0 and first["refunded"] >= 0
        assert sum(r["reward"] for r in first["rewards"]) + first["refunded"] == 600 + 601 + 602
        n_runs = len(runs)
        assert await call(node, "rewards_get") == first
        assert len(runs) == n_runs  # nothing aggregated again
        only = await call(node, "rewards_get", task_id=tids[1].hex())
        assert {r["task_id"] for r in only["rewards"]} == {tids[1].hex()}


async def test_a_refused_task_post_leaves_no_gold_secret(tmp_path, monkeypatch):
    """task_post stores the gold secret before it ingests the announcement; if the
    announcement is refused (here: the store is full), the secret of a task that will
    never exist is dropped, and the secrets of other tasks are kept."""
    from node.storage.errors import StoreFullError

    async with one_validator_node(tmp_path, "refused") as (node, clock, _, _):
        ok = await call(node, "task_post", account="req", title="kept", labels=["x", "y"], domain="d",
                        items=["a", "b"], duration_s=10, bounty=0, gold=[[0, 1]])

        async def full(*args, **kwargs):
            assert len(node.gold_secrets()) == 2  # the new secret was on disk first
            raise StoreFullError("MDB_MAP_FULL (test)")

        monkeypatch.setattr(node, "ingest_many", full)
        with pytest.raises(RpcError) as e:
            await call(node, "task_post", account="req", title="refused", labels=["x", "y"], domain="d",
                       items=["a", "b"], duration_s=10, bounty=0, gold=[[0, 1]])
        assert e.value.code == -32003, e.value.message
        assert list(node.gold_secrets()) == [bytes.fromhex(ok["task_id"])]

        async def no_room(*args):
            raise StoreFullError("MDB_MAP_FULL (test)")

        monkeypatch.setattr(node, "remember_gold", no_room)  # full before the secret is kept
        with pytest.raises(RpcError) as e:
            await call(node, "task_post", account="req", title="refused too", labels=["x", "y"], domain="d",
                       items=["a", "b"], duration_s=10, bounty=0, gold=[[0, 1]])
        assert e.value.code == -32003 and "Free disk space" in e.value.message

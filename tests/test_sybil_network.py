"""The Sybil farm on an in-process network (two validator nodes, fake clock): bounties
escrowed and released, gold revealed, results certified, reputation read back over the
RPC after the lag -- the farm stays at a fresh key's weight, and a task where three
experts meet a hundred farmed keys follows the experts and pays them."""
from __future__ import annotations

import random

import trio

from node.keystore import Keystore
from node.rpc.methods import METHODS
from protocol.genesis import make_genesis
from protocol.params import DEFAULT_PARAMS

from .fakenet import FakeNet
from .helpers import T0, FakeClock, advance, fake_node, key, make_batch, pk, signed, wait_for

ONE = 1 << 16
LAG = 60_000
PARAMS = {"grace_period_ms": 1000, "round_timeout_ms": 2000, "reputation_lag_ms": LAG}
INSTITUTION, FARMER = 500, 1999
EXPERTS = [600, 601, 602]
FARM = [2000 + i for i in range(100)]


async def call(node, method, **params):
    return await METHODS[method](node, params)


async def certify(nodes, clock, tid) -> None:
    """Run protocol time on until every node released the task's escrow."""
    async with trio.open_nursery() as clk:
        clk.start_soon(advance, clock, clock.now + 120_000, 500)
        await wait_for(lambda: all(tid in n.ledger.released for n in nodes), 30)
        clk.cancel_scope.cancel()


async def labelled_task(nodes, clock, g, account, workers: dict[int, float], n_items: int, *, gold: bool,
                        lie: set = frozenset(), seed: int = 0):
    """A task posted (and funded) by the local ``account``, labelled by ``workers``
    (key number -> accuracy; those in ``lie`` all give the same wrong label), certified."""
    rng = random.Random(seed)
    truth = [rng.randrange(2) for _ in range(n_items)]
    r = await call(nodes[0], "task_post", account=account, title="t", labels=["benign", "malignant"],
                   domain="radiology", items=[f"i{i}" for i in range(n_items)], duration_s=10, bounty=100_000,
                   gold=[[i, truth[i]] for i in range(n_items // 10)] if gold else None)
    assert r["funded"], r
    tid = bytes.fromhex(r["task_id"])
    for w, acc in workers.items():
        pairs = [(i, 1 - truth[i] if w in lie else (truth[i] if rng.random() < acc else 1 - truth[i]))
                 for i in range(n_items)]
        v, _ = await nodes[w % 2].ingest(signed(make_batch(w, tid, pairs, created_at=clock.now), w,
                                                g.network_id).raw, "rpc", publish=True)
        assert v.ok, v
    await wait_for(lambda: all(len(n.task_batches(tid)) == len(workers) for n in nodes), 30)
    await certify(nodes, clock, tid)
    clock.now += LAG + 1  # past the lag: the next task's snapshot holds this one
    return tid, truth


async def weights(node, domain="radiology") -> dict[bytes, int]:
    rep = await call(node, "reputation_get", domain=domain)
    return {bytes.fromhex(x["account"]): x["weight"] for x in rep["reputation"]}


async def test_a_farm_stays_fresh_and_loses_to_three_experts_on_a_network(tmp_path):
    g = make_genesis("sybil", T0, [(pk(1000), 1), (pk(1001), 1)], [(pk(INSTITUTION), "", ONE)],
                     [(pk(INSTITUTION), 10**9), (pk(FARMER), 10**9)], PARAMS)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net = FakeNet(seed=9)
        net.nursery = nursery
        nodes = []
        for i in range(2):
            ks = Keystore(tmp_path / f"n{i}")
            if i == 0:
                ks.create("institution", seed=bytes(key(INSTITUTION)))
                ks.create("farmer", seed=bytes(key(FARMER)))
            node = fake_node(net, f"n{i}", tmp_path / f"n{i}", g, clock=clock, keystore=ks,
                             validator_key=key(1000 + i), finality_tick_s=0.01)
            await nursery.start(node.run)
            nodes.append(node)
        net.connect_all()
        # the experts earn their weight on the institution's tasks, with its gold
        for k in range(3):
            await labelled_task(nodes, clock, g, "institution", {e: 0.95 for e in EXPERTS}, 100, gold=True, seed=k)
        # the farm: 100 fresh keys label the farmer's own task, with the farmer's gold, perfectly
        await labelled_task(nodes, clock, g, "farmer", {f: 1.0 for f in FARM}, 200, gold=True, seed=7)
        w = await weights(nodes[1])
        expert = min(w[pk(e)] for e in EXPERTS)
        farm = [w.get(pk(f), DEFAULT_PARAMS.fresh_weight) for f in FARM]
        print(f"\nnetwork: experts {[round(w[pk(e)] / ONE, 3) for e in EXPERTS]}, farm key {farm[0] / ONE:.5f}, "
              f"farm combined {sum(farm) / ONE:.3f}")
        assert set(farm) == {DEFAULT_PARAMS.fresh_weight} and sum(farm) < expert
        # three experts meet the hundred farmed keys, who all vote the wrong label
        tid, truth = await labelled_task(nodes, clock, g, "institution",
                                         {**{e: 0.95 for e in EXPERTS}, **{f: 1.0 for f in FARM}}, 60,
                                         gold=False, lie=set(FARM), seed=11)
        cons = await call(nodes[1], "consensus_get", task_id=tid.hex())
        assert cons["status"] == "certified"
        right = sum(it["label_index"] == t for it, t in zip(cons["items"], truth))
        assert right >= 0.9 * len(truth), right
        paid = {bytes.fromhex(a["account"]): a["reward"] for a in cons["annotators"]}
        assert sum(paid[pk(f)] for f in FARM) == 0 and min(paid[pk(e)] for e in EXPERTS) > 0
        assert all(n.ledger.get_balance(pk(e)) == nodes[0].ledger.get_balance(pk(e)) > 0 for n in nodes
                   for e in EXPERTS)
        assert all(n.ledger.check_supply() for n in nodes)
        nursery.cancel_scope.cancel()

"""Several in-process nodes on the in-memory network, with a fake protocol clock."""
from __future__ import annotations

import trio

from node.app import Node
from protocol.messages import Outcome

from .fakenet import FakeNet
from .helpers import (  # noqa: F401
    FakeClock, escrow_raws, fake_node, make_batch, make_task, make_test_genesis, signed, wait_for,
)




async def start_nodes(nursery, tmp_path, net: FakeNet, n: int, clock, genesis):
    nodes = []
    for i in range(n):
        node = fake_node(net, f"n{i}", tmp_path / f"n{i}", genesis, clock=clock)
        await nursery.start(node.run)
        nodes.append(node)
    return nodes


async def test_three_nodes_same_result(tmp_path):
    g = make_test_genesis()
    net = FakeNet(seed=1)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        a, b, c = await start_nodes(nursery, tmp_path, net, 3, clock, g)
        net.connect("n0", "n1")
        net.connect("n1", "n2")  # a line: n0 reaches n2 only through n1
        task = make_task(n_items=20, bounty=1000)
        tm = signed(task, 1, g.network_id)
        v, tid = await a.ingest(tm.raw, "rpc", publish=True)
        assert v.ok
        await wait_for(lambda: all(tid in n.tasks for n in (a, b, c)))
        # not open for labels until its bounty is escrowed: parked, stored once it is
        early = signed(make_batch(10, tid, [(0, 0)], created_at=task.created_at + 1), 10, g.network_id)
        assert (await b.ingest(early.raw, "rpc"))[0].reason.startswith("task not funded yet")
        for raw in escrow_raws(tid, task, g.network_id):
            assert (await a.ingest(raw, "rpc", publish=True))[0].ok
        await wait_for(lambda: all(n.is_open_for_labels(tid) for n in (a, b, c)))
        assert all(n.ledger.get_balance(task.requester) == 10**9 - 1000 for n in (a, b, c))
        raws = []
        for k in range(6):
            pairs = [(i, (i + (k == 5)) % 3) for i in range(20)]  # annotator 5 disagrees everywhere
            m = signed(make_batch(10 + k, tid, pairs), 10 + k, g.network_id)
            raws.append(m.raw)
            via = (b, c)[k % 2]
            v, _ = await via.ingest(m.raw, "rpc", publish=True)
            assert v.ok
        await wait_for(lambda: all(len(n.task_batches(tid)) == 7 for n in (a, b, c)))  # the early one too
        clock.now = task.deadline + 1
        results = [n.task_result(tid) for n in (a, b, c)]
        assert len({r.result_root for r in results}) == 1
        assert len({r.set_root for r in results}) == 1
        r = results[0]
        assert r.label == tuple(i % 3 for i in range(20))
        assert sum(a.reward for a in r.annotators) + r.refund == task.bounty
        nursery.cancel_scope.cancel()


async def test_orphan_batch_adopted_when_task_arrives(tmp_path):
    g = make_test_genesis()
    net = FakeNet()
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        (a,) = await start_nodes(nursery, tmp_path, net, 1, clock, g)
        tm = signed(make_task(), 1, g.network_id)
        tid = tm.compute_id(g.network_id)
        bm = signed(make_batch(10, tid, [(0, 1)]), 10, g.network_id)
        v, _ = await a.ingest(bm.raw, "gossip")
        assert v.outcome is Outcome.IGNORE
        assert (await a.ingest(tm.raw, "gossip"))[0].ok
        assert len(a.task_batches(tid)) == 1
        nursery.cancel_scope.cancel()


async def test_invalid_gossip_not_forwarded(tmp_path):
    g = make_test_genesis()
    net = FakeNet()
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        a, b, c = await start_nodes(nursery, tmp_path, net, 3, clock, g)
        net.connect("n0", "n1")
        net.connect("n1", "n2")
        tm = signed(make_task(), 1, g.network_id)
        raw = bytearray(tm.raw)
        raw[-1] ^= 1  # break the signature
        await net.nodes["n0"].publish(a.topics[1], bytes(raw))
        await wait_for(lambda: b.counters.rejected == 1)
        await trio.sleep(0.05)
        assert c.counters.rejected == 0 and c.counters.accepted == 0
        assert not b.tasks and not c.tasks
        nursery.cancel_scope.cancel()


async def test_restart_keeps_tasks(tmp_path):
    g = make_test_genesis()
    clock = FakeClock()
    tm = signed(make_task(), 1, g.network_id)
    async with trio.open_nursery() as nursery:
        node = Node(tmp_path / "x", g, p2p_factory=None, clock=clock)
        await nursery.start(node.run)
        v, tid = await node.ingest(tm.raw, "rpc")
        assert v.ok
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        node = Node(tmp_path / "x", g, p2p_factory=None, clock=clock)
        await nursery.start(node.run)
        assert tid in node.tasks
        v, _ = await node.ingest(tm.raw, "rpc")
        assert v.outcome is Outcome.IGNORE and v.reason == "duplicate"
        nursery.cancel_scope.cancel()

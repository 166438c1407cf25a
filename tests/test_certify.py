"""Certified finality on in-process validator nodes (fake network, fake protocol clock)."""
from __future__ import annotations

import random

import trio

from protocol.finality import decode_certificate, encode_certificate, verify_certificate
from protocol.genesis import make_genesis

from .fakenet import FakeNet
from .helpers import T0, FakeClock, advance, fake_node, key, make_batch, make_task, pk, signed, wait_for

VALIDATORS = [1000 + i for i in range(4)]


def genesis():
    return make_genesis("cert", T0, [(pk(v), 1) for v in VALIDATORS], [], [(pk(1), 10**9)],
                        {"grace_period_ms": 1000, "round_timeout_ms": 2000})


async def start(nursery, tmp_path, net, g, clock, n=4, observers=0):
    nodes = []
    for i in range(n + observers):
        vk = key(VALIDATORS[i]) if i < n else None
        node = fake_node(net, f"v{i}", tmp_path / f"v{i}", g, clock=clock, sync_interval_s=0.1,
                         validator_key=vk, finality_tick_s=0.02)
        await nursery.start(node.run)
        nodes.append(node)
    return nodes


async def test_validators_certify_same_result(tmp_path):
    g = genesis()
    net = FakeNet(seed=2)
    clock = FakeClock()
    rng = random.Random(3)
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        nodes = await start(nursery, tmp_path, net, g, clock, observers=1)
        net.connect_all()
        task = make_task(n_items=12, duration_ms=5_000)
        _, tid = await nodes[0].ingest(signed(task, 1, g.network_id).raw, "rpc", publish=True)
        await wait_for(lambda: all(tid in n.tasks for n in nodes))
        for k in range(8):
            m = signed(make_batch(50 + k, tid, [(i, rng.randrange(3)) for i in range(12)]), 50 + k, g.network_id)
            assert (await nodes[k % 5].ingest(m.raw, "rpc", publish=True))[0].ok
        await wait_for(lambda: all(len(n.task_batches(tid)) == 8 for n in nodes))
        async with trio.open_nursery() as clk:
            clk.start_soon(advance, clock, task.deadline + 60_000)
            await wait_for(lambda: all(n.finality.is_certified(tid) for n in nodes), 30)
            clk.cancel_scope.cancel()
        results = [n.finality.certified_result(tid) for n in nodes]
        assert len({(c.set_root, c.result_root) for c, _ in results}) == 1
        cert, res = results[-1]  # the observer assembled it too
        assert res is not None and res.result_root == cert.result_root and len(res.batch_ids) == 8
        vals = {a: w for a, w in g.validators}
        assert verify_certificate(cert, vals, g.network_id)
        assert verify_certificate(decode_certificate(encode_certificate(cert), g.params), vals, g.network_id)
        nursery.cancel_scope.cancel()


async def test_minority_partition_cannot_certify_then_heals(tmp_path):
    g = genesis()
    net = FakeNet(seed=5)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        nodes = await start(nursery, tmp_path, net, g, clock)
        net.connect_all()
        task = make_task(n_items=5, duration_ms=5_000)
        _, tid = await nodes[0].ingest(signed(task, 1, g.network_id).raw, "rpc", publish=True)
        await wait_for(lambda: all(tid in n.tasks for n in nodes))
        # 2 | 2: neither side holds > 2/3 of the weight
        net.partition(["v0", "v1"], ["v2", "v3"])
        m = signed(make_batch(60, tid, [(0, 1), (1, 1)]), 60, g.network_id)
        assert (await nodes[0].ingest(m.raw, "rpc", publish=True))[0].ok
        m2 = signed(make_batch(61, tid, [(0, 2)]), 61, g.network_id)
        assert (await nodes[3].ingest(m2.raw, "rpc", publish=True))[0].ok
        async with trio.open_nursery() as clk:
            clk.start_soon(advance, clock, task.deadline + 20_000)
            with trio.move_on_after(3):
                await wait_for(lambda: any(n.finality.is_certified(tid) for n in nodes), 3)
            assert not any(n.finality.is_certified(tid) for n in nodes)
            clk.cancel_scope.cancel()
        net.connect_all()
        async with trio.open_nursery() as clk:
            clk.start_soon(advance, clock, task.deadline + 400_000)
            await wait_for(lambda: all(n.finality.is_certified(tid) for n in nodes), 30)
            clk.cancel_scope.cancel()
        certs = {(n.finality.tasks[tid].certificate.set_root, n.finality.tasks[tid].certificate.result_root)
                 for n in nodes}
        assert len(certs) == 1
        _, res = nodes[1].finality.certified_result(tid)
        assert res is not None and len(res.batch_ids) == 2  # after healing the union is certified
        nursery.cancel_scope.cancel()


async def test_one_silent_validator_of_four_still_certifies(tmp_path):
    g = genesis()
    net = FakeNet(seed=9)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        nodes = await start(nursery, tmp_path, net, g, clock, n=3)  # validator 4 never comes up
        net.connect_all()
        task = make_task(n_items=4, duration_ms=5_000)
        _, tid = await nodes[0].ingest(signed(task, 1, g.network_id).raw, "rpc", publish=True)
        await wait_for(lambda: all(tid in n.tasks for n in nodes))
        m = signed(make_batch(70, tid, [(0, 1), (3, 2)]), 70, g.network_id)
        assert (await nodes[2].ingest(m.raw, "rpc", publish=True))[0].ok
        await wait_for(lambda: all(len(n.task_batches(tid)) == 1 for n in nodes))
        async with trio.open_nursery() as clk:
            clk.start_soon(advance, clock, task.deadline + 400_000)
            await wait_for(lambda: all(n.finality.is_certified(tid) for n in nodes), 30)
            clk.cancel_scope.cancel()
        cert = nodes[0].finality.tasks[tid].certificate
        assert len(cert.attestations) == 3 and pk(VALIDATORS[3]) not in {a.body.validator for a in cert.attestations}
        nursery.cancel_scope.cancel()

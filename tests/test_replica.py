"""Partial replication and pruning on in-process nodes (fake network, fake clock): a node
that follows one domain of ten and a node that prunes certified batches agree with full
nodes on every root they serve, on balances and the supply, and on reputation; the
one-domain node stores about its share; a domain added later is caught up by sync; a
new pruning node joins from an archive node; a lying peer's certified result is refused.
(docs/scaling.md "Partial replication and pruning")"""
from __future__ import annotations

import trio

from node.core.replica import DAY_MS, NOT_FOLLOWED, PRUNED, ReplicaConfig
from node.rpc.methods import METHODS
from protocol import sync as sp
from protocol.errors import DecodeError
from protocol.messages import (
    ITEM_TEXT, KIND_ATTESTATION, KIND_BATCH, KIND_GOLD, SCHEMA_SINGLE_CHOICE, Item, LabelSchema, TaskAnnouncement,
)
from protocol.replica import check_certified, domain_topic

from .fakenet import FakeNet
from .helpers import (
    FakeClock, T0, advance, escrow_raws, fake_node, key, make_batch, make_test_genesis, pk, signed, wait_for,
)

DOMAINS = [f"d{k}" for k in range(10)]
N_ITEMS = 24
ANNOTATORS = (10, 11, 12, 13, 14)
RETAIN_MS = 60_000  # the pruning node keeps batches 60 s after the deadline (+ grace)
DOMAIN_KINDS = (KIND_BATCH, KIND_GOLD, KIND_ATTESTATION)


def make_domain_task(k: int, domain: str) -> TaskAnnouncement:
    return TaskAnnouncement(
        requester=pk(1), nonce=k, created_at=T0, deadline=T0 + 30_000, title=f"task {k}",
        schema=LabelSchema(SCHEMA_SINGLE_CHOICE, domain, ("a", "b", "c")),
        items=tuple(Item(ITEM_TEXT, text=f"{k}/{i}") for i in range(N_ITEMS)),
        redundancy=3, bounty=10_000 + k, gold_commitment=None, reward_rule=0)


async def start(nursery, tmp_path, net, g, clock, name, *, validator=None, replica=None):
    node = fake_node(net, name, tmp_path / name, g, clock=clock, validator_key=validator, finality_tick_s=0.01,
                     sync_interval_s=0.5, replica=replica)
    await nursery.start(node.run)
    return node


def kept_bytes(node, prefix: bytes) -> int:
    return sum(len(v) for _, v in node.store.derived_items(prefix))


def stored_bytes(node) -> int:
    """Bytes of the messages a node stores, plus its settlements and task stubs."""
    ids = [i for t in node.task_index.task_ids for i in node.task_index.ids[t]]
    msgs = sum(len(r) for r in node.store.get_many(ids) if r is not None)
    return msgs + kept_bytes(node, b"settled/") + kept_bytes(node, b"stub/")


def domain_ids(node, tids) -> set:
    return {m for t in tids for kind in DOMAIN_KINDS for m in node.store.task_message_ids(t, kind)}


def domain_bytes(node, tids) -> int:
    return sum(len(r) for r in node.store.get_many(sorted(domain_ids(node, tids))) if r is not None)


def same_ledger(nodes) -> bool:
    return len({n.ledger.snapshot() for n in nodes}) == 1 and all(n.ledger.check_supply() for n in nodes)


async def post_load(g, clock, entry, tasks):
    """Post every task (escrowed) through ``entry`` and let each annotator label every item."""
    for k, task in enumerate(tasks):
        tm = signed(task, 1, g.network_id)
        v, tid = await entry.ingest(tm.raw, "rpc", publish=True)
        assert v.ok
        for raw in escrow_raws(tid, task, g.network_id, seq=k):
            assert (await entry.ingest(raw, "rpc", publish=True))[0].ok
    tids = [signed(t, 1, g.network_id).compute_id(g.network_id) for t in tasks]
    await wait_for(lambda: all(entry.is_open_for_labels(t) for t in tids), 20)
    for tid in tids:
        for a in ANNOTATORS:
            pairs = [(i, (i + (a == 14)) % 3) for i in range(N_ITEMS)]  # annotator 14 disagrees
            b = signed(make_batch(a, tid, pairs, created_at=T0 + 1000), a, g.network_id)
            assert (await entry.ingest(b.raw, "rpc", publish=True))[0].ok
    return tids


async def test_one_domain_and_pruned_nodes_agree_with_full_nodes(tmp_path):
    g = make_test_genesis()
    net = FakeNet(seed=5)
    clock = FakeClock()
    tasks = [make_domain_task(k, DOMAINS[k]) for k in range(10)]
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        vals = [await start(nursery, tmp_path, net, g, clock, f"v{i}", validator=key(1000 + i)) for i in range(4)]
        full = await start(nursery, tmp_path, net, g, clock, "full")
        one = await start(nursery, tmp_path, net, g, clock, "one", replica=ReplicaConfig(frozenset({"d0"})))
        pruned = await start(nursery, tmp_path, net, g, clock, "pruned", replica=ReplicaConfig(None, RETAIN_MS))
        nodes = vals + [full, one, pruned]
        net.connect_all()
        # the one-domain node joins the global topics and d0's, nothing else
        assert domain_topic(g.network_id, "d0") in one.p2p.topics
        assert domain_topic(g.network_id, "d1") not in one.p2p.topics

        tids = await post_load(g, clock, vals[0], tasks)
        await wait_for(lambda: all(len(n.task_batches(tids[0])) == len(ANNOTATORS) for n in (full, one, pruned)), 20)
        await wait_for(lambda: all(len(full.task_batches(t)) == len(ANNOTATORS) for t in tids), 20)
        # a batch of a domain it does not follow is refused with a clear reason, never stored
        late = signed(make_batch(20, tids[3], [(0, 0)], created_at=T0 + 2000), 20, g.network_id)
        v, mid = await one.ingest(late.raw, "rpc")
        assert v == NOT_FOLLOWED and not one.store.has(mid)

        async with trio.open_nursery() as clk:
            clk.start_soon(advance, clock, tasks[0].deadline + 20_000)
            await wait_for(lambda: all(set(tids) <= n.ledger.released for n in nodes), 40)
            clk.cancel_scope.cancel()
        await wait_for(lambda: same_ledger(nodes), 20)

        # every certified root and reward: the one-domain node holds d0 in full and the
        # other nine from their verified certified results
        assert set(tids[1:]) <= set(one.settlements) and tids[0] not in one.settlements
        for tid in tids:
            want = await METHODS["consensus_get"](full, {"task_id": tid.hex(), "items": False})
            for n in (one, pruned, vals[2]):
                got = await METHODS["consensus_get"](n, {"task_id": tid.hex(), "items": False})
                assert got["status"] == "certified"
                for f in ("set_root", "result_root", "refund", "annotators"):
                    assert got[f] == want[f], (n.data_dir.name, f)
            assert {n.certified_rewards(tid) for n in nodes} == {full.certified_rewards(tid)}
            assert len({n.task_outcome(tid) for n in nodes}) == 1
        rep = [await METHODS["reputation_get"](n, {}) for n in (full, one, pruned)]
        assert rep[0]["reputation"] and rep[1:] == [rep[0], rep[0]]

        # what the one-domain node stores: exactly d0's batches, gold and attestations, and
        # about a tenth of what a full node stores (tasks and ledger traffic are global)
        assert domain_ids(one, tids[1:]) == set()
        assert domain_ids(one, tids[:1]) == domain_ids(full, tids[:1])
        # = the ledger traffic + d0's task, batches, gold and attestations + a stub of each
        # other task and its settlement; tiny tasks here, so the ledger weighs a lot (the
        # fraction at a realistic load is measured by scripts/bench replica: BENCHMARKS.md)
        others = domain_bytes(full, tids[1:]) + sum(len(r) for r in full.store.get_many(tids[1:]))
        kept = kept_bytes(one, b"settled/") + kept_bytes(one, b"stub/")
        assert stored_bytes(one) == stored_bytes(full) - others + kept
        assert not any(one.store.get_many(tids[1:])) and set(one.stubs) == set(tids[1:])
        assert kept < others / 5
        assert stored_bytes(one) / stored_bytes(full) < 0.5  # ~0.35; the ledger votes vary with timing

        # the pruning node: past retention it keeps task, certificate and result, drops the rest
        async with trio.open_nursery() as clk:
            clk.start_soon(advance, clock, tasks[0].deadline + g.params.grace_period_ms + RETAIN_MS + 1000)
            await wait_for(lambda: not domain_ids(pruned, tids) and len(pruned.proof_tasks) == len(tids), 30)
            clk.cancel_scope.cancel()
        assert all(t in pruned.tasks for t in tids) and pruned.ledger.snapshot() == full.ledger.snapshot()
        again = signed(make_batch(10, tids[5], [(0, 0), (1, 1)], created_at=T0 + 1000), 10, g.network_id)
        assert (await pruned.ingest(again.raw, "rpc"))[0] == PRUNED  # never stored again
        for tid in tids:  # same roots and results as before pruning, from what it kept
            want = await METHODS["consensus_get"](full, {"task_id": tid.hex(), "items": True})
            got = await METHODS["consensus_get"](pruned, {"task_id": tid.hex(), "items": True})
            assert [got[f] for f in ("status", "set_root", "result_root", "items", "annotators")] == \
                   [want["status"]] + [want[f] for f in ("set_root", "result_root", "items", "annotators")]
        assert await METHODS["reputation_get"](pruned, {}) == rep[0]
        # ... and serves them: the certificate and R it answers verify
        rows = sp.decode_certified_response(await pruned.sync.handle("x", sp.encode_certified_request(tids)))
        assert [r[0] for r in rows] == tids
        for tid, cert, res in rows:
            check_certified(tid, cert, res, dict(g.validators), g.network_id, g.params)
        # sync does not bring pruned batches back: a full peer's summary and the pruned node's agree to skip them
        fetched = pruned.sync.peers.get("full")
        before = fetched.fetched if fetched else 0
        await pruned.sync.sync_with("full")
        assert pruned.sync.peers["full"].fetched == before and not domain_ids(pruned, tids)
        rows, _ = sp.decode_summary_response(await pruned.sync.handle("x", sp.encode_summary_request(b"", 1024)))
        assert {t: c for t, c, _ in rows if t in tids} == {t: 0 for t in tids}
        info = await METHODS["node_info"](pruned, {})
        assert info["replication"]["retain_batches_days"] == RETAIN_MS / DAY_MS
        assert info["replication"]["tasks_by_mode"]["pruned"] == len(tids)
        info = await METHODS["node_info"](one, {})
        assert info["replication"]["follow_domains"] == ["d0"] and info["replication"]["tasks_by_mode"]["summary"] == 9
        nursery.cancel_scope.cancel()


async def test_a_domain_added_later_is_caught_up_and_a_new_pruning_node_joins_from_an_archive(tmp_path):
    g = make_test_genesis()
    net = FakeNet(seed=6)
    clock = FakeClock()
    tasks = [make_domain_task(k, DOMAINS[k % 2]) for k in range(4)]
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        vals = [await start(nursery, tmp_path, net, g, clock, f"v{i}", validator=key(1000 + i)) for i in range(4)]
        arch = await start(nursery, tmp_path, net, g, clock, "arch")
        one = await start(nursery, tmp_path, net, g, clock, "one", replica=ReplicaConfig(frozenset({"d0"})))
        net.connect_all()
        tids = await post_load(g, clock, vals[0], tasks)
        async with trio.open_nursery() as clk:
            clk.start_soon(advance, clock, tasks[0].deadline + 20_000)
            await wait_for(lambda: all(set(tids) <= n.ledger.released for n in vals + [arch, one]), 40)
            clk.cancel_scope.cancel()
        d1 = [t for t, task in zip(tids, tasks) if task.schema.domain == "d1"]
        assert not domain_ids(one, d1) and set(d1) <= set(one.settlements)
        await wait_for(lambda: same_ledger(vals + [arch, one]), 20)
        before = one.ledger.snapshot()
        one.request_stop()
        await one.stopped.wait()

        # restarted following d0 and d1: sync brings d1's batches and votes, and its own
        # finality reproduces the certified results it had settled from peers' proofs
        one = await start(nursery, tmp_path, net, g, clock, "one", replica=ReplicaConfig(frozenset({"d0", "d1"})))
        assert domain_topic(g.network_id, "d1") in one.p2p.topics
        assert set(one.stubs) == set() and not set(d1) & set(one.tasks)  # unknown again: the whole task comes back
        await wait_for(lambda: domain_ids(one, d1) == domain_ids(arch, d1), 30)
        assert all(one.tasks[t] == arch.tasks[t] for t in d1) and one.store.get_many(d1) == arch.store.get_many(d1)
        for tid in d1:
            await wait_for(lambda: one.finality.certified_result(tid, settled=False)[1] is not None, 20)
            cert, res = one.finality.certified_result(tid, settled=False)
            assert res.result_root == cert.result_root == arch.finality.certified_result(tid)[0].result_root
        await wait_for(lambda: one.ledger.snapshot() == before, 20)

        # a new node that prunes joins from the archive node alone, long after: it takes
        # the tasks, the ledger and each certified result with its proof, and no batch
        async with trio.open_nursery() as clk:
            clk.start_soon(advance, clock, tasks[0].deadline + g.params.grace_period_ms + RETAIN_MS + 1000)
            await wait_for(lambda: clock.now >= tasks[0].deadline + g.params.grace_period_ms + RETAIN_MS, 30)
            clk.cancel_scope.cancel()
        late = await start(nursery, tmp_path, net, g, clock, "late", replica=ReplicaConfig(None, RETAIN_MS))
        net.connect("late", "arch")
        await wait_for(lambda: late.ledger.snapshot() == arch.ledger.snapshot() and len(late.proof_tasks) == len(tids), 30)
        assert set(tids) <= set(late.tasks) and not domain_ids(late, tids) and late.ledger.check_supply()
        for tid in tids:
            want = await METHODS["consensus_get"](arch, {"task_id": tid.hex(), "items": True})
            got = await METHODS["consensus_get"](late, {"task_id": tid.hex(), "items": True})
            assert (got["result_root"], got["items"]) == (want["result_root"], want["items"])

        # a peer that lies about a certified result is caught: R must hash to the certified
        # root, and the certificate must be this task's, with a quorum of signatures
        cert, res = await arch.certified_proof(tids[0])
        forged = bytearray(res)
        forged[-1] ^= 1
        for args in ((tids[0], cert, bytes(forged)), (tids[1], cert, res), (tids[0], cert[:-70] + cert[-1:], res)):
            try:
                check_certified(*args, dict(g.validators), g.network_id, g.params)
            except DecodeError:
                continue
            raise AssertionError("a forged certified result was accepted")
        nursery.cancel_scope.cancel()

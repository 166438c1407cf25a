"""Anti-entropy sync: pure reconciliation, and in-process nodes under loss, partitions, late joins."""
from __future__ import annotations

import collections
import os
import random

import trio
from hypothesis import given, settings, strategies as st

from protocol import sync as sp
from protocol.codec import pack

from .fakenet import FakeNet
from .helpers import FakeClock, fake_node, make_batch, make_task, make_test_genesis, pk, signed, wait_for


# ------------------------------------------------------------------ pure


def reconcile(local: list[bytes], remote: list[bytes]) -> tuple[set[bytes], int]:
    """Drive the pure protocol between two sorted id lists; return (ids A must fetch, requests)."""
    stack = [(b"", None)]
    missing, reqs = set(), 0
    while stack:
        lo, hi = stack.pop()
        reqs += 1
        mode, payload = sp.decode_range_response(sp.encode_range_response(remote, lo, hi))
        if mode == "ids":
            a, b = sp.range_slice(local, lo, hi)
            missing |= set(payload) - set(local[a:b])
        else:
            stack.extend(sp.compare_split(local, payload))
    return missing, reqs


@settings(max_examples=60, deadline=None)
@given(n_common=st.integers(0, 3000), n_a=st.integers(0, 200), n_b=st.integers(0, 200), seed=st.integers(0, 10**6))
def test_reconcile_finds_exactly_the_difference(n_common, n_a, n_b, seed):
    rng = random.Random(seed)
    common = {rng.randbytes(32) for _ in range(n_common)}
    only_a = {rng.randbytes(32) for _ in range(n_a)}
    only_b = {rng.randbytes(32) for _ in range(n_b)}
    missing, _ = reconcile(sorted(common | only_a), sorted(common | only_b))
    assert missing == only_b - common - only_a


def test_reconcile_cost_grows_with_difference_not_size():
    rng = random.Random(1)
    common = sorted({rng.randbytes(32) for _ in range(50_000)})
    extra = rng.randbytes(32)
    missing, reqs = reconcile(common, sorted(common + [extra]))
    assert missing == {extra}
    assert reqs < 20


def test_request_decoder_limits():
    import pytest
    for bad in [b"", b"\xc1", pack([9, 1]), pack([sp.REQ_GET, []]), pack([sp.REQ_GET, [b"x" * 31]]),
                pack([sp.REQ_SUMMARY, b"", 0]), pack([sp.REQ_SUMMARY, b"", 10**6]),
                pack([sp.REQ_GET, [os.urandom(32)] * (sp.MAX_GET_IDS + 1)]), pack([sp.REQ_RANGE, b"", b"", None])]:
        with pytest.raises(sp.SyncProtocolError):
            sp.decode_request(bad)


# ------------------------------------------------------------------ in-process


async def start(nursery, tmp_path, net, names, clock, g):
    out = []
    for name in names:
        n = fake_node(net, name, tmp_path / name, g, clock=clock, sync_interval_s=0.1)
        await nursery.start(n.run)
        out.append(n)
    return out


def ids_of(node):
    return {t: set(l) for t, l in node.task_index.ids.items()}


async def submit_batches(nodes, tid, g, count, rng, first_annotator=100):
    for k in range(count):
        pairs = [(i, rng.randrange(3)) for i in range(10)]
        m = signed(make_batch(first_annotator + k, tid, pairs), first_annotator + k, g.network_id)
        v, _ = await rng.choice(nodes).ingest(m.raw, "rpc", publish=True)
        assert v.ok


async def test_converge_with_half_of_gossip_dropped(tmp_path):
    g = make_test_genesis()
    net = FakeNet(drop_rate=0.5, seed=3)
    clock = FakeClock()
    rng = random.Random(5)
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        nodes = await start(nursery, tmp_path, net, [f"n{i}" for i in range(4)], clock, g)
        net.connect_all()
        tm = signed(make_task(), 1, g.network_id)
        v, tid = await nodes[0].ingest(tm.raw, "rpc", publish=True)
        await wait_for(lambda: all(tid in n.tasks for n in nodes), 20)
        await submit_batches(nodes, tid, g, 40, rng)
        await wait_for(lambda: all(ids_of(n) == ids_of(nodes[0]) for n in nodes)
                       and len(nodes[0].task_index.ids[tid]) == 41, 30)
        assert net.dropped > 0
        roots = {n.task_result(tid).result_root for n in nodes}
        assert len(roots) == 1
        nursery.cancel_scope.cancel()


async def test_partition_and_heal(tmp_path):
    g = make_test_genesis()
    net = FakeNet(seed=4)
    clock = FakeClock()
    rng = random.Random(6)
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        nodes = await start(nursery, tmp_path, net, ["a", "b", "c", "d"], clock, g)
        net.connect_all()
        tm = signed(make_task(), 1, g.network_id)
        _, tid = await nodes[0].ingest(tm.raw, "rpc", publish=True)
        await wait_for(lambda: all(tid in n.tasks for n in nodes))
        net.partition(["a", "b"], ["c", "d"])
        await submit_batches(nodes[:2], tid, g, 10, rng, 100)
        await submit_batches(nodes[2:], tid, g, 10, rng, 200)
        await wait_for(lambda: len(nodes[0].task_index.ids[tid]) == 11 and len(nodes[3].task_index.ids[tid]) == 11)
        await trio.sleep(0.3)  # several sync rounds: the sides must stay apart while cut
        assert ids_of(nodes[0]) != ids_of(nodes[3])
        net.connect_all()
        await wait_for(lambda: all(len(n.task_index.ids[tid]) == 21 for n in nodes), 20)
        assert len({n.task_result(tid).result_root for n in nodes}) == 1
        nursery.cancel_scope.cancel()


async def test_late_joiner_catches_up(tmp_path):
    g = make_test_genesis()
    net = FakeNet(seed=5)
    clock = FakeClock()
    rng = random.Random(7)
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        nodes = await start(nursery, tmp_path, net, ["a", "b"], clock, g)
        net.connect_all()
        tids = []
        for t in range(3):
            tm = signed(make_task(nonce=t), 1, g.network_id)
            _, tid = await nodes[0].ingest(tm.raw, "rpc", publish=True)
            tids.append(tid)
            await wait_for(lambda: all(tid in n.tasks for n in nodes))
            await submit_batches(nodes, tid, g, 150, rng, 1000 * (t + 1))
        late = (await start(nursery, tmp_path, net, ["late"], clock, g))[0]
        net.connect("late", "b")
        await wait_for(lambda: ids_of(late) == ids_of(nodes[0]) == ids_of(nodes[1]), 30)
        assert sum(len(v) for v in ids_of(late).values()) == 3 * 151
        # Almost all of it came through sync (a few stragglers of the publish queue may arrive by gossip).
        assert late.sync.peers["b"].fetched >= 400, (late.counters, late.sync.peers)
        assert late.counters.accepted == 453
        nursery.cancel_scope.cancel()


async def test_hostile_sync_peer_is_bounded_and_banned(tmp_path):
    g = make_test_genesis()
    net = FakeNet(seed=8)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        (honest,) = await start(nursery, tmp_path, net, ["h"], clock, g)
        evil = net.make("evil")
        evil.running = True
        evil.topics = set()
        calls = {"n": 0}
        tid = os.urandom(32)
        junk_msg = signed(make_task(nonce=99), 1, g.network_id).raw
        bad = bytearray(junk_msg)
        bad[-1] ^= 1

        async def handler(peer, data):
            calls["n"] += 1
            req = sp.decode_request(data)
            if req.kind == sp.REQ_SUMMARY:
                return sp.encode_summary_response([(tid, 10**6, b"\x00" * 16)], None)
            if req.kind == sp.REQ_RANGE:
                # endless: always claim a split of the very same range
                return pack([sp.RESP_SPLIT, [[req.lo, req.hi, 10**6, b"\x01" * 16]]])
            return sp.encode_get_response([bytes(bad)])

        evil.set_request_handler(honest.sync.protocol_id, handler)
        net.connect("h", "evil")
        await wait_for(lambda: honest.sync.peers.get("evil") and honest.sync.peers["evil"].penalty >= 10, 20)
        st = honest.sync.peers["evil"]
        assert st.errors >= 1
        assert not net.linked("h", "evil")  # disconnected
        assert calls["n"] < 200  # bounded work
        assert honest.store.count() == 0  # nothing invalid stored
        nursery.cancel_scope.cancel()


async def test_a_stalled_peer_does_not_hold_up_sync_with_the_others(tmp_path):
    """A peer that never answers (each request times out only after 20 s) must not delay
    repairs from an honest peer that connects while the stalled session is running."""
    g = make_test_genesis()
    net = FakeNet(seed=9)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        a, b = await start(nursery, tmp_path, net, ["a", "b"], clock, g)
        tm = signed(make_task(nonce=3), 1, g.network_id)
        assert (await b.ingest(tm.raw, "rpc"))[0].ok  # not published: only sync can bring it
        stalled = net.make("stalled")
        stalled.running = True

        async def never_answer(peer, data):
            await trio.sleep_forever()

        stalled.set_request_handler(a.sync.protocol_id, never_answer)
        net.connect("a", "stalled")
        await wait_for(lambda: "stalled" in a.sync._in_session and a.sync.peers.get("stalled")
                       and a.sync.peers["stalled"].requests >= 1, 5, "a session with the stalled peer")
        net.connect("a", "b")
        await wait_for(lambda: tm.compute_id(g.network_id) in a.tasks, 5, "the task from b despite the stalled peer")
        assert "stalled" in a.sync._in_session  # still waiting for its answer
        nursery.cancel_scope.cancel()


async def test_votes_past_a_certificate_are_not_stored_nor_fetched_again(tmp_path, monkeypatch):
    """A faulty validator signs many votes: for every past round, three values per round
    and phase, and the same vote signed twice. A node stores at most two values per
    (validator, round, phase) and, once it holds a certificate, nothing from a later
    round; sync does not fetch what it declined from a peer that stored it before it
    certified."""
    from node.services import sync as node_sync
    from protocol.messages import (
        KIND_ATTESTATION, PHASE_PRECOMMIT, PHASE_PREVOTE, Attestation, compute_round_start, compute_set_root,
    )

    monkeypatch.setattr(node_sync, "HOT_S", 0.2)  # do not defer the busy task for long
    monkeypatch.setattr(node_sync, "SETTLE_S", 0.05)
    g = make_test_genesis()  # validators pk(1000) .. pk(1003), weight 1 each
    net = FakeNet(seed=10)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        a, b = await start(nursery, tmp_path, net, ["a", "b"], clock, g)  # not connected yet
        tm = signed(make_task(nonce=4), 1, g.network_id)
        for n in (a, b):
            assert (await n.ingest(tm.raw, "rpc"))[0].ok
        tid = tm.compute_id(g.network_id)
        deadline = a.tasks[tid].deadline
        clock.now = compute_round_start(deadline, 40, g.params) + 1  # round 40 is in progress

        def vote(validator, round_, phase, root, result, ids=(), created_at=None):
            body = Attestation(validator=pk(validator), task_id=tid,
                               created_at=created_at or compute_round_start(deadline, round_, g.params),
                               round=round_, phase=phase, set_root=root, result_root=result,
                               batch_ids=ids if phase == PHASE_PREVOTE else ())
            return signed(body, validator, g.network_id).raw

        junk_ids = [(bytes([j]) * 32,) for j in range(3)]  # three made-up sets of one batch
        junk = [(compute_set_root(tid, ids), bytes([j]) * 32, ids) for j, ids in enumerate(junk_ids)]
        flood = [vote(1003, r, ph, *junk[j]) for r in range(40) for ph in (PHASE_PREVOTE, PHASE_PRECOMMIT)
                 for j in range(3)]
        flood += [vote(1003, r, PHASE_PREVOTE, *junk[0], created_at=compute_round_start(deadline, r, g.params) + 7)
                  for r in range(40)]
        results = await b.ingest_many(flood, "rpc")  # b, not certified yet, stores two values per slot
        stored_at_b = [mid for v, mid in results if v.ok]
        assert len(stored_at_b) == 40 * 2 * 2, collections.Counter(v.reason for v, _ in results)
        assert all(b.declined(mid) for v, mid in results if not v.ok)

        # validators 0..2 certify the empty set in round 0, at both nodes
        empty = a.task_result(tid)
        value = (empty.set_root, empty.result_root)
        cert_votes = [vote(1000 + i, 0, ph, *value) for i in range(3) for ph in (PHASE_PREVOTE, PHASE_PRECOMMIT)]
        for n in (a, b):
            assert all(v.ok for v, _ in await n.ingest_many(cert_votes, "rpc"))
            assert n.finality.is_certified(tid)

        # a, certified, stores none of the flood's rounds after 0
        results = await a.ingest_many(flood, "rpc")
        assert {a.store.get(mid) and decode(mid, a).body.round for v, mid in results if v.ok} == {0}
        assert sum(v.ok for v, _ in results) == 4  # round 0: two values for each phase
        assert a.counters.votes_not_stored == len(flood) - 4  # operators see it (node_info, metrics)
        again = await a.ingest_many(flood, "gossip")  # replayed: known, not verified again
        assert sum("declined before" in v.reason for v, _ in again) == len(flood) - 4
        assert a.counters.votes_not_stored == len(flood) - 4

        # b holds 156 votes that a declined: a's sync sessions with b do not fetch them again
        declined = [mid for mid in stored_at_b if not a.store.has(mid)]
        assert len(declined) == 156 and all(a.declined(mid) for mid in declined)
        net.connect("a", "b")
        await wait_for(lambda: "b" in a.sync.peers and a.sync.peers["b"].sessions >= 2, 30)
        ignored = a.counters.ignored
        sessions = a.sync.peers["b"].sessions
        await wait_for(lambda: a.sync.peers["b"].sessions >= sessions + 3, 30)
        assert a.counters.ignored == ignored
        assert not any(a.store.has(mid) for mid in declined)
        assert len(a.store.task_message_ids(tid, KIND_ATTESTATION)) == 6 + 4
        nursery.cancel_scope.cancel()


def decode(mid, node):
    from protocol.messages import decode_message

    return decode_message(node.store.get(mid), node.params)

"""node/core/verifier.py: big groups' signatures checked in helper processes give exactly
``verify_signature``'s answers, and any helper failure falls back to threads."""
from __future__ import annotations

import os

import trio

from node.app import Node
from node.core import verifier as verifier_mod
from node.core.verifier import Verifier, auto_processes
from protocol.codec import pack
from protocol.messages import Outcome, decode_message, verify_signature

from .helpers import T0, FakeClock, make_batch, make_task, make_test_genesis, signed

G = make_test_genesis()
NID = G.network_id


def _msgs(n: int, tid: bytes = bytes(32)):
    """n decoded batches; every third one has a flipped signature bit, every fifth a body
    signed for another network."""
    out = []
    for i in range(n):
        m = signed(make_batch(5 + i % 7, tid, [(i % 10, 1)], created_at=T0 + i), 5 + i % 7,
                   NID if i % 5 else b"\x01" * 32)
        if i % 3 == 0:
            sig = bytearray(m.signature)
            sig[5] ^= 1
            m = decode_message(pack([m.body_bytes, bytes(sig)]), G.params)
        out.append(decode_message(m.raw, G.params))
    return out


MSGS = _msgs(120)
EXPECT = [verify_signature(m, NID) for m in MSGS]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_same_answers_as_verify_signature_concurrently():
    assert 0 < sum(EXPECT) < len(EXPECT)
    v = Verifier(NID, 2)
    got = {}
    async with trio.open_nursery() as n:
        async def one(k):
            got[k] = await v.verify(MSGS[k * 20:(k + 1) * 20])
        for k in range(6):
            n.start_soon(one, k)
    assert [x for k in range(6) for x in got[k]] == EXPECT
    assert v.groups_in_process == 6 and v.groups_in_thread == 0 and 1 <= v.spawned <= 2
    pids = [w.proc.pid for w in v._workers]
    await v.aclose()
    assert not any(_alive(p) for p in pids)


async def test_zero_processes_means_threads():
    v = Verifier(NID, 0)
    assert await v.verify(MSGS) == EXPECT
    assert v.groups_in_thread == 1 and v.spawned == 0


async def test_dead_helper_falls_back_to_threads_then_recovers(monkeypatch):
    monkeypatch.setattr(verifier_mod, "RETRY_AFTER_S", 0.2)
    v = Verifier(NID, 1)
    assert await v.verify(MSGS[:30]) == EXPECT[:30]
    w = v._workers[0]
    w.proc.kill()
    await w.proc.wait()
    assert await v.verify(MSGS[30:60]) == EXPECT[30:60]  # answered all the same, from a thread
    assert v.failures == 1 and v.groups_in_thread == 1
    assert await v.verify(MSGS[60:90]) == EXPECT[60:90]  # still within RETRY_AFTER_S: threads
    assert v.groups_in_thread == 2 and v.spawned == 1
    await trio.sleep(0.25)
    assert await v.verify(MSGS[90:]) == EXPECT[90:]  # a new helper
    assert v.spawned == 2 and v.groups_in_process == 2
    await v.aclose()


async def test_helper_that_cannot_start_falls_back(monkeypatch):
    monkeypatch.setattr(verifier_mod, "WORKER_SCRIPT", "/nonexistent/verify_worker.py")
    v = Verifier(NID, 1)
    assert await v.verify(MSGS) == EXPECT
    assert v.failures == 1 and v.groups_in_thread == 1
    await v.aclose()


async def test_helper_that_cannot_be_spawned_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(verifier_mod.sys, "executable", "/nonexistent/python3")
    v = Verifier(NID, 1)
    assert await v.verify(MSGS) == EXPECT
    assert v.failures == 1 and v.groups_in_thread == 1 and v.spawned == 0
    assert "verifying in threads" in caplog.text
    await v.aclose()


async def test_answers_stay_right_under_random_cancellation():
    import random

    rng = random.Random(7)
    v = Verifier(NID, 2)
    done = []

    async def one(lo, hi, delay):
        with trio.move_on_after(delay):
            done.append((lo, hi, await v.verify(MSGS[lo:hi])))

    for _ in range(15):
        async with trio.open_nursery() as n:
            for _ in range(5):
                lo = rng.randrange(0, 100)
                n.start_soon(one, lo, lo + rng.randrange(16, 40), rng.choice([0, 0.0003, 0.001, 0.003, 1]))
    assert done and all(r == EXPECT[lo:hi] for lo, hi, r in done)
    assert v.failures == 0 and v.groups_in_thread == 0
    await v.aclose()


async def test_idle_helper_is_stopped():
    v = Verifier(NID, 1, idle_s=0.2)
    await v.verify(MSGS[:20])
    pid = v._workers[0].proc.pid
    await trio.sleep(0.3)
    assert await v.verify(MSGS[:20]) == EXPECT[:20]  # the old one is dropped, a new one started
    assert v.spawned == 2
    with trio.fail_after(5):
        while _alive(pid):
            v._reap()
            await trio.sleep(0.02)
    await v.aclose()


async def test_helper_exits_when_the_node_goes_away():
    """The node's end of the pipe closing (as when it dies, even by kill -9) ends the helper."""
    v = Verifier(NID, 1)
    await v.verify(MSGS[:20])
    proc = v._workers[0].proc
    await proc.stdin.aclose()
    with trio.fail_after(10):
        assert await proc.wait() == 0
    await v.aclose()


async def test_cancelled_requests_leave_later_answers_right():
    v = Verifier(NID, 1)
    for delay in (0, 0.0005, 0.002, 0.004):  # cancelled while starting, writing, waiting or reading
        with trio.move_on_after(delay):
            async with trio.open_nursery() as n:
                for k in range(3):
                    n.start_soon(v.verify, MSGS)
        assert await v.verify(MSGS) == EXPECT
    assert v.failures == 0  # a helper out of step is dropped, never trusted
    await v.aclose()


def test_auto_processes():
    assert auto_processes({"LABELMESH_VERIFY_PROCESSES": "0"}) == 0
    assert auto_processes({"LABELMESH_VERIFY_PROCESSES": "3"}) == 3
    # Bad values: a warning and a bounded count, never a crash or a process storm.
    auto = auto_processes({})
    assert auto_processes({"LABELMESH_VERIFY_PROCESSES": "many"}) == auto
    assert auto_processes({"LABELMESH_VERIFY_PROCESSES": "100000"}) == verifier_mod.MAX_FORCED_PROCESSES
    assert auto_processes({"LABELMESH_VERIFY_PROCESSES": "-2"}) == 0
    n = auto_processes({})
    assert 1 <= n <= verifier_mod.MAX_AUTO_PROCESSES
    assert n == max(1, min(verifier_mod.MAX_AUTO_PROCESSES, len(os.sched_getaffinity(0)) - 1))


async def test_node_ingests_a_big_group_through_the_helper(tmp_path):
    """Same verdicts with and without helpers; bad signatures are still rejected."""
    clock = FakeClock()
    task = signed(make_task(n_items=10), 1, NID)
    tid = task.compute_id(NID)
    batches = _msgs(60, tid)
    verdicts = {}
    for procs in (0, 1):
        async with trio.open_nursery() as nursery:
            node = Node(tmp_path / f"p{procs}", G, p2p_factory=None, clock=clock, verify_processes=procs)
            await nursery.start(node.run)
            assert (await node.ingest(task.raw, "rpc"))[0].ok
            res = await node.ingest_many([m.raw for m in batches], "rpc")
            verdicts[procs] = [(v.outcome, v.reason, mid) for v, mid in res]
            assert node.verifier.groups_in_process == procs
            assert node.store.count() == 1 + sum(v.ok for v, _ in res)
            helpers = [w.proc.pid for w in node.verifier._workers]
            nursery.cancel_scope.cancel()
        assert not any(_alive(p) for p in helpers)  # Node.run stops its helpers
    assert verdicts[0] == verdicts[1]
    outcomes = [o for o, _, _ in verdicts[1]]
    assert outcomes.count(Outcome.ACCEPT) == sum(EXPECT[:60])
    assert all(r == "bad signature" for o, r, _ in verdicts[1] if o is not Outcome.ACCEPT)

"""Hostile input and hostile peers: forgery, replay, floods, clock skew, the RPC socket, keys.

Every test here is an attack with a count of what got through (must be 0 where
invalid). The counts quoted in SECURITY.md come from these tests and from
tests/test_fuzz_short.py / scripts/fuzz. Waits are bounded conditions; rate-limit
tests run on trio's MockClock (time moves only when the test says so).
"""
from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import msgpack
import nacl.bindings
import nacl.signing
import pytest
import trio

from node.app import Node
from node.rpc import server as rpcmod
from node.keystore import ENV_PASSPHRASE, Keystore
from node.policy.ratelimit import GossipRateLimiter, RateLimitConfig
from protocol.codec import pack
from protocol.genesis import make_genesis
from node.core.verdicts import KEPT_OVERLAPPING, SURPLUS
from protocol.messages import (
    ACCEPT, DEST_ACCOUNT, DOMAIN_TAGS, KIND_ATTESTATION, KIND_BATCH, KIND_GOLD, KIND_TASK, PHASE_PRECOMMIT,
    Attestation, LedgerVote, Outcome, Transfer, check_message, compute_set_root, decode_message, verify_signature,
)

from .fakenet import FakeNet
from .helpers import T0, DictContext, key, make_batch, make_task, make_test_genesis, pk, signed
from . import helpers
from .helpers import FakeClock, RpcConn, fake_node, run_node, wait_for

G = make_test_genesis()
NET = G.network_id
P = G.params
L = 2**252 + 27742317777372353535851937790883648493  # order of the ed25519 base point


def task_and_batches(g=G, n_batches=3, annotator0=100):
    task = make_task(n_items=10)
    tm = signed(task, 1, g.network_id)
    tid = tm.compute_id(g.network_id)
    bs = [signed(make_batch(annotator0 + k, tid, [(k % 10, k % 3)]), annotator0 + k, g.network_id)
          for k in range(n_batches)]
    return task, tm, tid, bs


# --------------------------------------------------------------------------- forgery


def _forgeries(m, g_other_net: bytes):
    """(what, bytes) of forged variants of a validly signed message ``m``."""
    out = []
    sig = m.signature
    for pos in range(64):  # every signature byte, one bit each
        for bit in (0, 7):
            s = bytearray(sig)
            s[pos] ^= 1 << bit
            out.append((f"sig bit {pos}.{bit}", pack([m.body_bytes, bytes(s)])))
    other = nacl.signing.SigningKey(b"\x42" * 32)
    out.append(("wrong key", pack([m.body_bytes, other.sign(DOMAIN_TAGS[m.kind] + NET + m.body_bytes).signature])))
    out.append(("other network", pack([m.body_bytes, key(_signer_no(m)).sign(
        DOMAIN_TAGS[m.kind] + g_other_net + m.body_bytes).signature])))
    for kind, tag in DOMAIN_TAGS.items():
        if kind != m.kind:
            out.append((f"domain {kind}", pack([m.body_bytes, key(_signer_no(m)).sign(tag + NET + m.body_bytes).signature])))
    s_int = int.from_bytes(sig[32:], "little")
    for k in range(1, 4):  # S + kL: the same point, a non-canonical scalar (malleability)
        out.append((f"S+{k}L", pack([m.body_bytes, sig[:32] + (s_int + k * L).to_bytes(32, "little")])))
    out.append(("zero sig", pack([m.body_bytes, bytes(64)])))
    return out


_SIGNERS = {pk(n): n for n in [1, 5, 100, 101, 102, 1000, 1001, 1002, 1003]}


def _signer_no(m) -> int:
    return _SIGNERS[m.body.signer]


def test_forged_signatures_never_accepted():
    task, tm, tid, bs = task_and_batches()
    att = signed(Attestation(pk(1000), tid, task.deadline + P.grace_period_ms, 0, PHASE_PRECOMMIT,
                             compute_set_root(tid, ()), bytes(32), ()), 1000, NET)
    order = signed(Transfer(pk(1), 0, task.created_at, 5, DEST_ACCOUNT, pk(5)), 1, NET)
    vote = signed(LedgerVote(pk(1000), task.created_at, ((pk(1), 0, order.compute_id(NET)),)), 1000, NET)
    ctx = DictContext(G, {tid: task})
    other_net = make_test_genesis(n_validators=3).network_id
    tried = accepted = 0
    messages = (tm, bs[0], att, order, vote)
    for m in messages:
        assert check_message(m.raw, ctx, NET, task.deadline + 100, P)[0].ok  # the original is valid
        for what, raw in _forgeries(m, other_net):
            v, _ = check_message(raw, ctx, NET, task.deadline + 100, P)
            tried += 1
            accepted += v.ok
            assert v.outcome is Outcome.REJECT, (what, v)
    assert tried == len(messages) * (128 + 2 + (len(DOMAIN_TAGS) - 1) + 3 + 1) and accepted == 0


# A tiny ed25519 group law (RFC 8032 5.1) to show what S >= L would mean.
_p = 2**255 - 19
_d = -121665 * pow(121666, -1, _p) % _p
_By = 4 * pow(5, -1, _p) % _p
_Bx = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_B = (_Bx, _By, 1, _Bx * _By % _p)


def _add(P1, P2):
    X1, Y1, Z1, T1 = P1
    X2, Y2, Z2, T2 = P2
    A = (Y1 - X1) * (Y2 - X2) % _p
    B_ = (Y1 + X1) * (Y2 + X2) % _p
    C = 2 * T1 * T2 * _d % _p
    D = 2 * Z1 * Z2 % _p
    E, F, G_, H = B_ - A, D - C, D + C, B_ + A
    return (E * F % _p, G_ * H % _p, F * G_ % _p, E * H % _p)


def _mul(s, P1):
    Q = (0, 1, 1, 0)
    while s:
        if s & 1:
            Q = _add(Q, P1)
        P1 = _add(P1, P1)
        s >>= 1
    return Q


def _enc(P1):
    X, Y, Z, _ = P1
    zi = pow(Z, -1, _p)
    x, y = X * zi % _p, Y * zi % _p
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def test_non_canonical_signature_scalar_is_rejected_by_libsodium():
    """S' = S + L satisfies the verification equation [S']B = R + [k]A exactly like S
    (L*B is the identity), so a verifier without the S < L check accepts a second,
    different signature for the same message (malleability: a new message id for
    replay). libsodium checks S < L; this proves both halves."""
    m = signed(make_task(), 1, NET)
    s = int.from_bytes(m.signature[32:], "little")
    s2 = s + L
    assert s2 < 2**256 and _enc(_mul(s, _B)) == _enc(_mul(s2, _B))  # the same point: the math accepts it
    forged = m.signature[:32] + s2.to_bytes(32, "little")
    with pytest.raises(Exception):
        nacl.bindings.crypto_sign_open(forged + m.signed_bytes(NET), m.body.signer)
    assert not verify_signature(decode_message(pack([m.body_bytes, forged]), P), NET)
    assert verify_signature(m, NET)


def test_small_order_key_and_identity_signature_rejected():
    """The identity point as a public key with R = identity, S = 0 "verifies" every
    message under a naive verifier; libsodium refuses small-order keys and R."""
    identity = (1).to_bytes(32, "little")
    body = make_task()
    from dataclasses import replace
    evil = replace(body, requester=identity)
    body_bytes = pack(evil.body_fields())
    raw = pack([body_bytes, identity + bytes(32)])
    v, _ = check_message(raw, DictContext(G), NET, T0, P)
    assert v.outcome is Outcome.REJECT


def test_validly_signed_non_canonical_encodings_rejected():
    """A body with a non-minimal int, signed correctly over those very bytes: the
    signature verifies, but decode refuses it (one message, one encoding, one id)."""
    sk = key(1)
    m = signed(make_task(), 1, NET)
    body = bytearray(m.body_bytes)
    assert body[1] == KIND_TASK
    variants = {
        "uint8 kind": bytes(body[:1]) + b"\xcc\x01" + bytes(body[2:]),
        "array16 header": b"\xdc\x00" + bytes([body[0] & 0x0F]) + bytes(body[1:]),
    }
    ctx = DictContext(G)
    for what, nb in variants.items():
        sig = sk.sign(DOMAIN_TAGS[KIND_TASK] + NET + nb).signature
        for env in (pack([nb, sig]), b"\x92\xc5" + len(nb).to_bytes(2, "big") + nb + b"\xc4\x40" + sig):
            v, _ = check_message(env, ctx, NET, T0, P)
            assert v.outcome is Outcome.REJECT and "decode" in v.reason, (what, v)
    # the envelope itself in a longer form (bin16 for a short body), honest signature
    env = b"\x92\xc5" + len(m.body_bytes).to_bytes(2, "big") + m.body_bytes + b"\xc4\x40" + m.signature
    assert check_message(env, ctx, NET, T0, P)[0].outcome is Outcome.REJECT


def test_batch_replayed_into_another_task_or_kind():
    t1, t2 = make_task(nonce=1), make_task(nonce=2)
    id1, id2 = (signed(t, 1, NET).compute_id(NET) for t in (t1, t2))
    ctx = DictContext(G, {id1: t1, id2: t2})
    b = signed(make_batch(5, id1, [(0, 1)]), 5, NET)
    body = msgpack.unpackb(b.body_bytes)
    body[3] = id2
    moved = pack([pack(body), b.signature])
    assert check_message(moved, ctx, NET, T0, P)[0].outcome is Outcome.REJECT
    body = msgpack.unpackb(b.body_bytes)
    body[0] = KIND_GOLD  # same fields reinterpreted as another kind: the domain tag differs
    assert check_message(pack([pack(body), b.signature]), ctx, NET, T0, P)[0].outcome is Outcome.REJECT


async def test_forgeries_through_the_node_store_nothing(tmp_path, nursery):
    node = await run_node(nursery, tmp_path / "n", G)
    task, tm, tid, bs = task_and_batches()
    assert (await node.ingest(tm.raw, "rpc"))[0].ok
    before = node.store.count()
    other_net = make_test_genesis(n_validators=3).network_id
    unstored_task = signed(make_task(nonce=77), 1, NET)
    for m in (unstored_task, bs[0]):  # not held yet: every forgery is REJECTed
        for what, raw in _forgeries(m, other_net):
            v, _ = await node.ingest(raw, "gossip")
            assert v.outcome is Outcome.REJECT, what
            assert await node.gossip_validate(node.topics[m.kind], raw, "peer-x") is Outcome.REJECT, what
    # A forged signature on a message we already hold has the same id (the id covers the
    # signed bytes, not the signature): dropped as a duplicate before any verification.
    for what, raw in _forgeries(tm, other_net):
        assert (await node.ingest(raw, "gossip"))[0].outcome is not Outcome.ACCEPT
    assert node.store.count() == before  # nothing forged was stored
    assert node.task_result(tid).batch_ids == ()  # nothing counted
    assert (await node.ingest(bs[0].raw, "gossip"))[0].ok  # the genuine one still gets in


async def test_far_future_round_attestations_are_refused_not_stored(tmp_path, nursery):
    """A genesis validator that signs attestations for rounds that have not started (by
    the timestamp it signed) is REJECTed before anything is stored or queued, so it
    cannot grow other nodes' stores or the finality service's pending queue."""
    clock = FakeClock()
    node = await run_node(nursery, tmp_path / "n", G, clock=clock)
    task, tm, tid, bs = task_and_batches()
    assert (await node.ingest(tm.raw, "rpc"))[0].ok
    clock.now = task.deadline + P.grace_period_ms + 2 * P.round_timeout_ms  # round 2 in progress

    def att(round_):
        return signed(Attestation(pk(1001), tid, clock.now, round_, PHASE_PRECOMMIT, bytes(32), bytes(32), ()),
                      1001, NET).raw

    before = node.store.count()
    for round_ in (3, 50, 10**6, 2**64 - 1):
        raw = att(round_)
        v, _ = await node.ingest(raw, "gossip")
        assert v.outcome is Outcome.REJECT and "before the round starts" in v.reason, round_
        assert await node.gossip_validate(node.topics[KIND_ATTESTATION], raw, "peer-x") is Outcome.REJECT
    assert node.store.count() == before
    assert not any(node.finality._pending.values())
    assert (await node.ingest(att(2), "gossip"))[0].ok  # the current round is fine
    assert node.store.count() == before + 1


# --------------------------------------------------------------------------- replay


async def test_replay_after_restart_and_via_other_peers(tmp_path):
    task, tm, tid, bs = task_and_batches(n_batches=4)
    async with trio.open_nursery() as nursery:
        node = await run_node(nursery, tmp_path / "n", G)
        for m in (tm, *bs):
            assert (await node.ingest(m.raw, "rpc"))[0].ok
        root = node.task_result(tid).result_root
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:  # the same data dir after a restart
        node = await run_node(nursery, tmp_path / "n", G)
        count = node.store.count()
        for peer in ("a", "b", "c"):  # three honest relayers hand us old messages again
            for m in (tm, *bs):
                out = await node.gossip_validate(node.topics[m.kind], m.raw, peer, peer)
                assert out is Outcome.IGNORE  # a duplicate: dropped, never penalised
        for m in bs:
            v, _ = await node.ingest(m.raw, "sync")
            assert v.outcome is Outcome.IGNORE and v.reason == "duplicate"
        assert node.store.count() == count
        assert node.task_result(tid).result_root == root and len(node.task_result(tid).batch_ids) == 4
        assert node.counters.rejected == 0
        nursery.cancel_scope.cancel()


async def test_kind_smuggled_onto_another_topic_is_rejected_and_not_stored(tmp_path, nursery):
    node = await run_node(nursery, tmp_path / "n", G)
    task, tm, tid, bs = task_and_batches()
    out = await node.gossip_validate(node.topics[KIND_BATCH], tm.raw, "p")
    assert out is Outcome.REJECT and node.store.count() == 0


async def test_honest_relayer_of_duplicates_not_penalised_over_libp2p(tmp_path, nursery):
    """Real py-libp2p: a relayer sends us the same labelmesh message in two gossip
    messages (different seqnos). The second is a duplicate: IGNORE, so the relayer's
    score stays 0 and it is never banned."""
    from node.net import GossipOutcome, P2PConfig, P2PNode

    g = make_test_genesis()

    def factory(node):
        async def validator(topic, data, peer, origin=None):
            return GossipOutcome[(await node.gossip_validate(topic, data, peer, origin)).name]
        return P2PNode(P2PConfig(seed=b"\x11" * 32, listen=["/ip4/127.0.0.1/tcp/0"]), validator=validator)

    node = Node(tmp_path / "n", g, p2p_factory=factory, clock=FakeClock(), sync_interval_s=3600)
    await nursery.start(node.run)
    relay = P2PNode(P2PConfig(seed=b"\x12" * 32, listen=["/ip4/127.0.0.1/tcp/0"],
                              bootstrap=node.p2p.listen_addrs()),
                    validator=lambda t, d, f: GossipOutcome.ACCEPT)
    topic = node.topics[KIND_TASK]
    relay.subscribe(topic)
    await nursery.start(relay.run)
    assert await relay.wait_for_mesh(topic, 1, 20)
    assert await node.p2p.wait_for_mesh(topic, 1, 20)
    tm = signed(make_task(), 1, g.network_id)
    for _ in range(5):
        await relay.publish(topic, tm.raw)
    # copies that arrive while the first one is still being written are IGNOREd as well
    await wait_for(lambda: node.p2p.stats().get("gossip_ignored", 0) >= 4 and node.store.count() == 1, 20)
    assert node.p2p.peer_score(relay.peer_id) == 0.0
    assert not node.p2p.is_banned(relay.peer_id)
    assert node.p2p.stats().get("gossip_rejected", 0) == 0


# --------------------------------------------------------------------------- floods


def _spam(g, tid, n, first=5000):
    return [signed(make_batch(first + k, tid, [(k % 10, k % 3)]), first + k, g.network_id).raw for k in range(n)]


async def test_rate_limits_ignore_then_reject_a_flooding_origin(tmp_path, nursery, mock_clock):
    cfg = RateLimitConfig(peer_rate_per_s=1000, peer_burst=300, origin_message_rate_per_s=10, origin_message_burst=50,
                          account_rate_per_s=5, account_burst=20, abuse_threshold=40)
    node = await run_node(nursery, tmp_path / "n", G, rate_limits=cfg)
    task, tm, tid, _ = task_and_batches()
    assert (await node.ingest(tm.raw, "rpc"))[0].ok
    topic = node.topics[KIND_BATCH]
    spam = _spam(G, tid, 200)
    outs = [await node.gossip_validate(topic, raw, "evil", "evil") for raw in spam]
    acc, ign, rej = (outs.count(o) for o in (Outcome.ACCEPT, Outcome.IGNORE, Outcome.REJECT))
    # Time is frozen: exactly the origin burst got in, the rest was IGNOREd until the
    # abuse count reached the threshold, then REJECTed (p2p bans after 3 REJECTs).
    assert acc == 50
    assert ign == 40 - 1 and rej == 200 - 50 - 39
    assert node.store.count() == 1 + 50
    # An honest relayer of the same flood (origin "evil") is only ever IGNOREd.
    relayed = [await node.gossip_validate(topic, raw, "relay", "evil") for raw in _spam(G, tid, 100, 9000)]
    assert set(relayed) == {Outcome.IGNORE}
    # Time passes: the origin bucket refills at 10/s.
    mock_clock.jump(2.0)
    more = [await node.gossip_validate(topic, raw, "relay", "evil") for raw in _spam(G, tid, 30, 12000)]
    assert more.count(Outcome.ACCEPT) == 20


async def test_account_limit_and_forgeries_cannot_drain_it(tmp_path, nursery, mock_clock):
    cfg = RateLimitConfig(account_rate_per_s=1, account_burst=10)
    node = await run_node(nursery, tmp_path / "n", G, rate_limits=cfg)
    task, tm, tid, _ = task_and_batches()
    assert (await node.ingest(tm.raw, "rpc"))[0].ok
    topic = node.topics[KIND_BATCH]
    # 50 forgeries in account 7's name (bad signatures): REJECTed, and they take no tokens
    for k in range(50):
        m = signed(make_batch(7, tid, [(k % 10, 0)], created_at=T0 + k), 7, NET)
        bad = pack([m.body_bytes, bytes(64)])
        assert await node.gossip_validate(topic, bad, f"p{k}") is Outcome.REJECT
    # account 7's own valid batches, via many different relayers: 10 (the burst) get in
    outs = [await node.gossip_validate(topic, signed(make_batch(7, tid, [(k % 10, 1)], created_at=T0 + 100 + k), 7,
                                                     NET).raw, f"r{k}") for k in range(30)]
    assert outs.count(Outcome.ACCEPT) == 10 and outs.count(Outcome.IGNORE) == 20
    assert Outcome.REJECT not in outs  # relayers of an over-limit account are not penalised


async def test_keep_rule_stores_what_counts_and_drops_what_a_smaller_id_repeats(tmp_path):
    """One vote per (annotator, item) (protocol/keep.py) through a node: from gossip, sync
    and RPC alike; a repeat with a smaller id displaces the stored batch (deleted from the
    store and the sync index); across a restart the rule goes on from the store."""
    g = make_test_genesis()
    task = make_task(n_items=10)
    tm = signed(task, 1, g.network_id)
    tid = tm.compute_id(g.network_id)
    # annotator 5 labels item 0 with label 1 in nine batches (different created_at)
    copies = sorted((signed(make_batch(5, tid, [(0, 1)], created_at=T0 + k), 5, g.network_id) for k in range(9)),
                    key=lambda m: m.compute_id(g.network_id))
    ids = [m.compute_id(g.network_id) for m in copies]
    async with trio.open_nursery() as nursery:
        node = await run_node(nursery, tmp_path / "n", g)
        assert (await node.ingest(tm.raw, "rpc"))[0].ok
        assert (await node.ingest(copies[4].raw, "sync"))[0] == ACCEPT
        v, _ = await node.ingest(copies[6].raw, "gossip")          # a larger id: redundant, not stored
        assert v == SURPLUS and not node.store.has(ids[6])
        assert await node.gossip_validate(node.topics[KIND_BATCH], copies[7].raw, "p", "p") is Outcome.IGNORE
        v, _ = await node.ingest(copies[2].raw, "rpc")              # a smaller id: kept, 4 is dropped
        assert v == KEPT_OVERLAPPING
        assert node.task_batches(tid).keys() == {ids[2]} and ids[4] not in node.task_index.ids[tid]
        assert node.store.count_by_kind()[KIND_BATCH] == 1 and node.counters.dropped == 1
        # a new item in the same batch keeps it; another annotator is not affected
        assert (await node.ingest(signed(make_batch(5, tid, [(0, 1), (3, 2)], created_at=T0 + 50), 5,
                                         g.network_id).raw, "gossip"))[0] == KEPT_OVERLAPPING
        assert (await node.ingest(signed(make_batch(6, tid, [(0, 1)]), 6, g.network_id).raw, "gossip"))[0] == ACCEPT
        # a gossip bundle with a redundant envelope is still forwarded for the new one in it
        from protocol.bundle import encode_bundle
        fresh = signed(make_batch(7, tid, [(1, 1)]), 7, g.network_id)
        assert await node.gossip_validate(node.topics[KIND_BATCH], encode_bundle([copies[5].raw, fresh.raw]), "q",
                                          "q") is Outcome.ACCEPT
        assert node.store.has(fresh.compute_id(g.network_id)) and not node.store.has(ids[5])
        # what finality names is stored anyway (source "pinned"), counted all the same
        assert (await node.ingest(copies[8].raw, "pinned"))[0].ok and node.store.has(ids[8])
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:  # after a restart the rule is rebuilt from the store
        node = await run_node(nursery, tmp_path / "n", g)
        v, _ = await node.ingest(copies[3].raw, "gossip")
        assert v == SURPLUS
        v, _ = await node.ingest(copies[0].raw, "rpc")
        assert v == KEPT_OVERLAPPING and not node.store.has(ids[2])
        assert await node.drop_redundant(tid, frozenset()) == 1 and not node.store.has(ids[8])  # the pinned one
        assert {b.annotator for b in node.task_batches(tid).values()} == {pk(5), pk(6), pk(7)}
        nursery.cancel_scope.cancel()


def test_rate_limiter_is_bounded_and_pure():
    rl = GossipRateLimiter(RateLimitConfig(peer_rate_per_s=1, peer_burst=1, max_tracked=16))
    for k in range(1000):  # a thousand peer ids: at most max_tracked buckets are kept
        rl.on_message(f"p{k}", None, 0.0)
    assert len(rl.peers._buckets) == 16
    assert rl.on_message("x", "x", 0.0) is None and rl.on_message("x", "x", 0.0) == "ignore"
    assert rl.on_message("x", "x", 1.0) is None  # refilled after 1 s at 1/s
    with pytest.raises(Exception):
        RateLimitConfig(peer_rate_per_s=0).validate()


# --------------------------------------------------------------------------- clock skew


class SkewedClock:
    def __init__(self, base: FakeClock, offset_ms: int):
        self.base, self.offset = base, offset_ms

    def __call__(self) -> int:
        return self.base.now + self.offset


VALIDATORS = [1000 + i for i in range(4)]


def skew_genesis():
    # Rounds long enough for the skew: liveness needs 5 * (delay + 2 * skew) <= round timeout.
    return make_genesis("skew", T0, [(pk(v), 1) for v in VALIDATORS], [], [(pk(1), 10**9)],
                        {"grace_period_ms": 2000, "round_timeout_ms": 20_000})


async def start_validators(nursery, path, net, g, clocks):
    nodes = []
    for i, clock in enumerate(clocks):
        n = fake_node(net, f"v{i}", path / f"v{i}", g, clock=clock, sync_interval_s=0.1,
                      validator_key=key(VALIDATORS[i]), finality_tick_s=0.02)
        await nursery.start(n.run)
        nodes.append(n)
    return nodes


async def run_skew_scenario(path, offsets):
    """4 validators with clock offsets; one task; 8 batches signed well before the
    deadline plus one signed after it; returns every node's certified result root
    and the set of batch ids it certified."""
    g = skew_genesis()
    net = FakeNet(seed=11)
    base = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        nodes = await start_validators(nursery, path, net, g, [SkewedClock(base, o) for o in offsets])
        net.connect_all()
        task = make_task(n_items=12, duration_ms=20_000)
        _, tid = await nodes[0].ingest(signed(task, 1, g.network_id).raw, "rpc", publish=True)
        await wait_for(lambda: all(tid in n.tasks for n in nodes), 20)
        for k in range(8):
            m = signed(make_batch(50 + k, tid, [(i, (i * k) % 3) for i in range(12)], created_at=T0 + 1000 + k),
                       50 + k, g.network_id)
            assert (await nodes[k % 4].ingest(m.raw, "rpc", publish=True))[0].ok
        await wait_for(lambda: all(len(n.task_batches(tid)) == 8 for n in nodes), 20)
        late = signed(make_batch(99, tid, [(0, 0)], created_at=task.deadline + 1), 99, g.network_id)
        for n in nodes:  # signed after the deadline: no node stores it, whatever its clock says
            v, _ = await n.ingest(late.raw, "gossip")
            assert v.outcome is Outcome.IGNORE
        async with trio.open_nursery() as clk:
            clk.start_soon(helpers.advance, base, task.deadline + 200_000, 200)
            await wait_for(lambda: all(n.finality.certified_result(tid)[1] is not None for n in nodes), 60)
            clk.cancel_scope.cancel()
        out = [(n.finality.certified_result(tid)[1].result_root, n.finality.certified_result(tid)[1].batch_ids)
               for n in nodes]
        assert all(n.counters.rejected == 0 for n in nodes)
        nursery.cancel_scope.cancel()
    return out


async def test_skewed_clocks_certify_the_same_result_as_synchronised_ones(tmp_path):
    straight = await run_skew_scenario(tmp_path / "a", [0, 0, 0, 0])
    skewed = await run_skew_scenario(tmp_path / "b", [0, 1500, -1500, 700])
    assert len(set(straight)) == 1 and set(skewed) == set(straight)
    assert len(straight[0][1]) == 8


async def test_future_messages_ignored_unpenalised_then_synced(tmp_path):
    """A node whose clock is 60 s ahead signs and stores a batch; the others see it
    from beyond clock_skew_ms (30 s): IGNORE (no penalty, not stored). Once their
    clocks pass that point, anti-entropy sync fetches it."""
    g = make_test_genesis()
    net = FakeNet(seed=12)
    base = FakeClock()
    from .test_sync import start
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        a, b = await start(nursery, tmp_path, net, ["a", "b"], base, g)
        ahead = Node(tmp_path / "ahead", g, p2p_factory=None, clock=SkewedClock(base, 60_000))
        await nursery.start(ahead.run)
        net.connect_all()
        task = make_task(duration_ms=600_000)
        _, tid = await a.ingest(signed(task, 1, g.network_id).raw, "rpc", publish=True)
        await wait_for(lambda: tid in b.tasks, 20)
        future = signed(make_batch(7, tid, [(1, 1)], created_at=base.now + 60_000), 7, g.network_id)
        assert (await ahead.ingest(signed(task, 1, g.network_id).raw, "rpc"))[0].ok
        assert (await ahead.ingest(future.raw, "rpc"))[0].ok  # fine by its own clock
        for n in (a, b):
            out = await n.gossip_validate(n.topics[KIND_BATCH], future.raw, "ahead")
            assert out is Outcome.IGNORE  # never REJECT: the sender may just be early
            assert n.counters.rejected == 0 and not n.store.has(future.compute_id(g.network_id))
        # b learns it by sync from a peer that took it once its clock allowed
        base.now += 31_000
        assert (await a.ingest(future.raw, "gossip"))[0].ok
        await wait_for(lambda: b.store.has(future.compute_id(g.network_id)), 20)
        assert b.sync.peers["a"].penalty == 0
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- RPC socket


async def rpc_node(nursery, d: Path) -> Node:
    ks = Keystore(d)
    ks.create("alice", seed=bytes(key(1)))
    return await run_node(nursery, d, G, keystore=ks, rpc_socket=d / "node.sock")


async def test_socket_is_0600_in_a_0700_dir_even_if_the_dir_was_open(short_dir, nursery):
    os.chmod(short_dir, 0o755)
    node = await rpc_node(nursery, short_dir)
    assert stat.S_IMODE(os.stat(node.rpc_socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(short_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(short_dir / "accounts").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(short_dir / "accounts" / "alice.json").st_mode) == 0o600


def test_socket_path_that_is_not_a_socket_is_never_replaced(short_dir):
    (short_dir / "node.sock").write_text("precious")
    srv = rpcmod.RpcServer(type("N", (), {"data_dir": short_dir})(), short_dir / "node.sock", {})
    with pytest.raises(OSError, match="not a socket"):
        srv._bind()
    assert (short_dir / "node.sock").read_text() == "precious"
    other = short_dir / "shared"
    other.mkdir(mode=0o777)
    os.chmod(other, 0o777)
    with pytest.raises(OSError, match="open to other users"):
        rpcmod.RpcServer(type("N", (), {"data_dir": short_dir})(), other / "x.sock", {})._bind()


async def test_rpc_limits_answer_with_json_rpc_errors(short_dir, nursery):
    node = await rpc_node(nursery, short_dir)
    c = await RpcConn.open(node.rpc_socket)
    batch = [{"jsonrpc": "2.0", "id": i, "method": "node_info"} for i in range(rpcmod.MAX_BATCH + 1)]
    await c.send(json.dumps(batch).encode() + b"\n")
    assert (await c.recv())["error"]["code"] == -32600
    for bad in [b"[" * 100_000, b'{"a":' * 50_000, b'{"jsonrpc":"2.0","id":1,"method":"node_info","params":{"x":NaN}}',
                b'{"jsonrpc":"2.0","id":1,"method":"node_info","params":{"x":1e999}}',
                b'{"jsonrpc":"2.0","id":1,"method":"node_info","params":{"x":' + b"9" * 30 + b"}}"]:
        await c.send(bad + b"\n")
        assert (await c.recv())["error"]["code"] == -32700, bad[:40]
    assert "result" in await c.call("node_info")  # the connection still works
    # an oversized line: -32600, then that connection is closed; the node lives on
    big = await RpcConn.open(node.rpc_socket)
    chunk = b"x" * (1 << 20)
    with trio.move_on_after(60):
        try:
            for _ in range(rpcmod.MAX_REQUEST_BYTES // len(chunk) + 2):
                await big.send(chunk)
        except (trio.BrokenResourceError, OSError):
            pass
    r = await big.recv()
    assert r["error"]["code"] == -32600
    assert "result" in await c.call("node_info")


async def test_200_idle_and_slow_clients_cannot_starve_a_legit_one(short_dir, nursery):
    node = await rpc_node(nursery, short_dir)
    idle = []
    for k in range(200):
        s = await trio.open_unix_socket(str(node.rpc_socket))
        if k % 2:
            await s.send_all(b'{"jsonrpc": "2.0", "id": 1, "meth')  # slow: a request that never ends
        idle.append(s)
    await wait_for(lambda: node.rpc.connections <= rpcmod.MAX_CONNECTIONS and node.rpc.evicted >= 200 - 128, 20)
    for _ in range(3):  # a legit client, several times, always answered
        c = await RpcConn.open(node.rpc_socket)
        r = await c.call("node_info")
        assert r["result"]["network_id"] == node.network_id.hex()
        r = await c.call("tasks_list")
        assert "result" in r
    assert node.rpc.connections <= rpcmod.MAX_CONNECTIONS + 1
    for s in idle:
        await s.aclose()


# --------------------------------------------------------------------------- keys


@pytest.fixture
def fast_kdf(monkeypatch):
    import node.keystore as ksmod
    monkeypatch.setattr(ksmod, "KDF_OPSLIMIT", ksmod.KDF.OPSLIMIT_INTERACTIVE)
    monkeypatch.setattr(ksmod, "KDF_MEMLIMIT", ksmod.KDF.MEMLIMIT_INTERACTIVE)


def test_keys_0600_and_passphrase_encryption(tmp_path, fast_kdf, monkeypatch):
    from node.errors import KeystoreError
    monkeypatch.delenv(ENV_PASSPHRASE, raising=False)
    ks = Keystore(tmp_path)
    seed = b"\x07" * 32
    pub = ks.create("enc", seed=seed, passphrase="correct horse")
    ks.create("plain", seed=b"\x08" * 32)
    f = tmp_path / "accounts" / "enc.json"
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "accounts").st_mode) == 0o700
    text = f.read_text()
    assert seed.hex() not in text and "correct horse" not in text and json.loads(text)["encrypted"]["kdf"] == "argon2id"
    fresh = Keystore(tmp_path)
    assert fresh.public_key("enc") == pub  # no passphrase needed for the public key
    assert {a["name"]: a["encrypted"] for a in fresh.list()} == {"enc": True, "plain": False}
    with pytest.raises(KeystoreError, match=ENV_PASSPHRASE):
        fresh.signing_key("enc")
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        fresh.signing_key("enc", passphrase="wrong")
    assert bytes(fresh.signing_key("enc", passphrase="correct horse")) == seed
    monkeypatch.setenv(ENV_PASSPHRASE, "correct horse")
    assert bytes(Keystore(tmp_path).signing_key("enc")) == seed
    assert bytes(Keystore(tmp_path).signing_key("plain")) == b"\x08" * 32  # plaintext files still work
    # a hostile key file cannot make us run an enormous KDF
    d = json.loads(text)
    d["encrypted"]["memlimit"] = 1 << 40
    (tmp_path / "accounts" / "huge.json").write_text(json.dumps({**d, "name": "huge"}))
    with pytest.raises(KeystoreError, match="cost"):
        Keystore(tmp_path).signing_key("huge")


async def test_keys_and_passphrases_never_logged(short_dir, nursery, fast_kdf, monkeypatch):
    secret_seed = b"\x5a" * 32
    phrase = "tr0ub4dor&3-never-log-me"
    monkeypatch.setenv(ENV_PASSPHRASE, phrase)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    from node.logs import JsonFormatter
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        ks = Keystore(short_dir)
        ks.create("bob", seed=secret_seed)  # encrypted with the env passphrase
        os.chmod(short_dir / "accounts" / "bob.json", 0o644)  # provoke the permissions warning
        ks = Keystore(short_dir)
        node = await run_node(nursery, short_dir, G, keystore=ks, rpc_socket=short_dir / "node.sock")
        c = await RpcConn.open(node.rpc_socket)
        r = await c.call("task_post", {"account": "bob", "title": "t", "labels": ["a", "b"], "items": ["x", "y"]})
        tid = r["result"]["task_id"]
        r = await c.call("annotations_submit", {"account": "bob", "task_id": tid, "labels": [[0, "a"]]})
        assert r["result"]["status"] == "accepted"
        await c.call("account_list")
        await c.call("task_post", {"account": "nobody", "labels": ["a", "b"], "items": ["x"]})
        Keystore(short_dir).public_key("bob")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    logs = buf.getvalue()
    assert "readable by other users" in logs  # the test saw real log output
    sk = nacl.signing.SigningKey(secret_seed)
    for secret in (secret_seed.hex(), bytes(sk._signing_key).hex(), phrase, repr(secret_seed)):
        assert secret not in logs
    # and the CLI: `labelmesh init` prints the public key only
    d = short_dir / "cli"
    out = subprocess.run([sys.executable, "-m", "node.cli", "init", "--data-dir", str(d)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, ENV_PASSPHRASE: phrase})
    assert out.returncode == 0, out.stderr
    acct = json.loads(next((d / "accounts").glob("*.json")).read_text())
    assert "encrypted" in acct and "seed" not in acct
    assert phrase not in out.stdout + out.stderr
    assert stat.S_IMODE(os.stat(d / "node.key").st_mode) == 0o600


async def test_a_leader_set_may_leave_out_what_it_makes_redundant(tmp_path):
    """A follower checks that the leader's set leaves out nothing of its snapshot that still
    counts (node/services/finality.py): a batch the leader's set makes redundant (a smaller
    id carries its label) may be missing from it, an honest batch may not."""
    g = make_test_genesis()
    tm = signed(make_task(n_items=10), 1, g.network_id)
    tid = tm.compute_id(g.network_id)
    copies = sorted((signed(make_batch(5, tid, [(0, 1)], created_at=T0 + k), 5, g.network_id) for k in range(2)),
                    key=lambda m: m.compute_id(g.network_id))
    low, high = (m.compute_id(g.network_id) for m in copies)
    other = signed(make_batch(6, tid, [(2, 0)]), 6, g.network_id)
    async with trio.open_nursery() as nursery:
        node = await run_node(nursery, tmp_path / "n", g)
        assert (await node.ingest(tm.raw, "rpc"))[0].ok
        for m in (copies[1], other):
            assert (await node.ingest(m.raw, "pinned"))[0].ok
        snap = frozenset(node.task_pinnable_ids(tid))  # {high, other}
        assert (await node.ingest(copies[0].raw, "pinned"))[0].ok  # the leader's: low instead of high
        fin = node.finality
        oid = other.compute_id(g.network_id)
        assert fin._leaves_nothing_out(tid, snap, sorted([low, oid]))
        assert not fin._leaves_nothing_out(tid, snap, sorted([low]))  # leaves out annotator 6's label
        assert fin._leaves_nothing_out(tid, snap, sorted([high, oid]))
        nursery.cancel_scope.cancel()


async def test_keep_rule_keeps_the_gold_reveal_with_the_smallest_id(tmp_path):
    """A requester's reveals of one task differ only in created_at: the node keeps the one
    with the smallest id (the one a result pins), however they arrive (PROTOCOL.md 6.3)."""
    from protocol.messages import KIND_GOLD, GoldReveal, compute_gold_commitment

    from node.core.keep import GOLD_SURPLUS

    g = make_test_genesis()
    salt, gold = b"s" * 32, ((0, 1), (2, 0))
    task = make_task(n_items=5, gold_commitment=compute_gold_commitment(salt, gold))
    tm = signed(task, 1, g.network_id)
    tid = tm.compute_id(g.network_id)
    reveals = sorted((signed(GoldReveal(pk(1), tid, task.deadline + k, salt, gold), 1, g.network_id) for k in range(5)),
                     key=lambda m: m.compute_id(g.network_id))
    ids = [m.compute_id(g.network_id) for m in reveals]
    clock = FakeClock(task.deadline + 100)
    async with trio.open_nursery() as nursery:
        node = await run_node(nursery, tmp_path / "n", g, clock=clock)
        assert (await node.ingest(tm.raw, "rpc"))[0].ok
        assert (await node.ingest(reveals[3].raw, "gossip"))[0] == ACCEPT
        assert (await node.ingest(reveals[4].raw, "sync"))[0] == GOLD_SURPLUS
        res = await node.ingest_many([reveals[2].raw, reveals[1].raw], "rpc")  # both smaller, in one write
        assert [v for v, _ in res] == [GOLD_SURPLUS, ACCEPT]  # the first displaced by the second, not written
        assert node.store.task_message_ids(tid, KIND_GOLD) == [ids[1]] and node.counters.dropped == 1
        res = node.task_result(tid)
        assert res.gold_items == 2 and ids[1] in res.batch_ids
        nursery.cancel_scope.cancel()

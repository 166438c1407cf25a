"""Gossip bundles (protocol/bundle.py, PROTOCOL.md 7.3): the codec, the validator's
outcome for every kind of bundle, rate limits counted per envelope, and a publisher
that bundles under load on the in-memory network."""
from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings, strategies as st

from node.policy.ratelimit import GossipRateLimiter, RateLimitConfig
from protocol.bundle import (
    BUNDLE_TAG, MAX_BUNDLE_ENVELOPES, encode_bundle, group_envelopes, is_bundle, payload_of, split_payload,
)
from protocol.codec import pack
from protocol.errors import DecodeError
from protocol.messages import KIND_BATCH, KIND_TASK, Outcome

from .fakenet import FakeNet
from .helpers import FakeClock, fake_node, make_batch, make_task, make_test_genesis, signed, wait_for

G = make_test_genesis()
NET = G.network_id
P = G.params


def _task(nonce=1):
    tm = signed(make_task(n_items=10, nonce=nonce), 1, NET)
    return tm, tm.compute_id(NET)


def _batches(tid, n, first=100):
    return [signed(make_batch(first + k, tid, [(k % 10, k % 3)]), first + k, NET) for k in range(n)]


# --------------------------------------------------------------------------- codec


def test_plain_envelope_is_its_own_payload():
    tm, tid = _task()
    raw = _batches(tid, 1)[0].raw
    assert not is_bundle(raw) and not is_bundle(tm.raw)
    assert split_payload(raw, P) == [raw]


def test_bundle_round_trip_keeps_order():
    _, tid = _task()
    raws = [m.raw for m in _batches(tid, 5)]
    payload = encode_bundle(raws)
    assert payload[:2] == bytes([0x92, BUNDLE_TAG]) and is_bundle(payload)
    assert split_payload(payload, P) == raws


@pytest.mark.parametrize("payload, why", [
    (pack([BUNDLE_TAG, []]), "1..256"),
    (pack([BUNDLE_TAG, [b"x", b"x"]]), "twice"),
    (pack([BUNDLE_TAG, [[1]]]), "must be bin"),
    (pack([BUNDLE_TAG, [b"x"]]) + b"\x00", "trailing"),
    (pack([BUNDLE_TAG, [bytes([i & 0xff, i >> 8]) for i in range(MAX_BUNDLE_ENVELOPES + 1)]]), "max_array_len"),
    (pack([BUNDLE_TAG, 7]), "1..256"),
    (pack([BUNDLE_TAG, "envelopes"]), "max_str_len"),
])
def test_malformed_bundles_are_refused_with_a_reason(payload, why):
    with pytest.raises(DecodeError, match=why):
        split_payload(payload, P)


def test_encode_bundle_refuses_what_split_would():
    with pytest.raises(ValueError):
        encode_bundle([])
    with pytest.raises(ValueError):
        encode_bundle([b"a", b"a"])
    with pytest.raises(ValueError):
        encode_bundle([bytes([i % 256, i // 256]) for i in range(MAX_BUNDLE_ENVELOPES + 1)])


def pack_bundles(envelopes, max_bytes):
    """What the publisher (node/core/node.py) sends for these envelopes: one payload per run."""
    return [payload_of(run) for run in group_envelopes(envelopes, max_bytes)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=700), st.integers(min_value=64, max_value=20_000))
def test_pack_bundles_carries_everything_once_in_order_within_limits(envelopes, max_bytes):
    payloads = pack_bundles(envelopes, max_bytes)
    unique = list(dict.fromkeys(envelopes))
    carried = []
    for p in payloads:
        if p[:2] == bytes([0x92, BUNDLE_TAG]) and len(p) > 2:
            got = split_payload(p, P)
            assert len(got) >= 2, "a lone envelope travels plain"
            assert len(got) <= MAX_BUNDLE_ENVELOPES and len(p) <= max_bytes
            carried += got
        else:
            carried.append(p)
    assert carried == unique


def test_pack_bundles_splits_by_count_and_size():
    envs = [bytes([1, i % 256, i // 256]) + bytes(97) for i in range(600)]
    by_count = pack_bundles(envs, 10**6)
    assert [len(split_payload(p, P)) for p in by_count] == [256, 256, 88]
    by_size = pack_bundles(envs[:10], 350)
    assert all(len(p) <= 350 for p in by_size) and len(by_size) == 4
    big = bytes(1000)
    assert pack_bundles([big], 350) == [big]  # too big alone: plain, the publisher's size check reports it


# --------------------------------------------------------------------------- the validator


async def _node(nursery, path, **kw):
    from node.app import Node

    n = Node(path, G, p2p_factory=None, clock=FakeClock(), **kw)
    await nursery.start(n.run)
    return n


async def test_bundle_of_valid_batches_is_accepted_in_one_go(tmp_path, nursery):
    node = await _node(nursery, tmp_path / "n")
    tm, tid = _task()
    assert (await node.ingest(tm.raw, "rpc"))[0].ok
    bs = _batches(tid, 20)
    topic = node.topics[KIND_BATCH]
    assert await node.gossip_validate(topic, encode_bundle([m.raw for m in bs]), "peer") is Outcome.ACCEPT
    assert len(node.task_batches(tid)) == 20
    # The same envelopes again (another bundle, or plain): duplicates, IGNOREd, never penalised.
    assert await node.gossip_validate(topic, encode_bundle([m.raw for m in bs[:3]]), "peer") is Outcome.IGNORE
    assert await node.gossip_validate(topic, bs[0].raw, "peer") is Outcome.IGNORE
    # Some old, some new: ACCEPT (everything it carries is now stored and checked).
    more = _batches(tid, 2, first=500)
    assert await node.gossip_validate(topic, encode_bundle([bs[0].raw, *(m.raw for m in more)]), "peer") \
        is Outcome.ACCEPT
    assert len(node.task_batches(tid)) == 22


async def test_one_forged_envelope_rejects_the_bundle_but_keeps_the_valid_ones(tmp_path, nursery):
    node = await _node(nursery, tmp_path / "n")
    tm, tid = _task()
    assert (await node.ingest(tm.raw, "rpc"))[0].ok
    bs = _batches(tid, 4)
    forged = bytearray(bs[3].raw)
    forged[-1] ^= 1  # last byte of the signature
    payload = encode_bundle([bs[0].raw, bs[1].raw, bytes(forged), bs[2].raw])
    assert await node.gossip_validate(node.topics[KIND_BATCH], payload, "peer") is Outcome.REJECT
    held = set(node.task_batches(tid))
    assert {m.compute_id(NET) for m in bs[:3]} <= held and bs[3].compute_id(NET) not in held


async def test_bundle_with_a_task_on_the_batch_topic_is_rejected(tmp_path, nursery):
    node = await _node(nursery, tmp_path / "n")
    tm, tid = _task()
    assert (await node.ingest(tm.raw, "rpc"))[0].ok
    other, _ = _task(nonce=2)
    payload = encode_bundle([_batches(tid, 1)[0].raw, other.raw])
    assert await node.gossip_validate(node.topics[KIND_BATCH], payload, "peer") is Outcome.REJECT
    assert await node.gossip_validate(node.topics[KIND_TASK], encode_bundle([other.raw]), "peer") is Outcome.ACCEPT


async def test_malformed_bundle_is_rejected(tmp_path, nursery):
    node = await _node(nursery, tmp_path / "n")
    assert await node.gossip_validate(node.topics[KIND_BATCH], pack([BUNDLE_TAG, [b"x", b"x"]]), "peer") \
        is Outcome.REJECT


async def test_bundle_with_an_orphan_is_ignored_not_forwarded_but_valid_part_stored(tmp_path, nursery):
    node = await _node(nursery, tmp_path / "n")
    tm, tid = _task()
    assert (await node.ingest(tm.raw, "rpc"))[0].ok
    _, unknown = _task(nonce=9)  # never announced to this node
    ok = _batches(tid, 2)
    orphan = _batches(unknown, 1, first=700)[0]
    payload = encode_bundle([ok[0].raw, orphan.raw, ok[1].raw])
    # IGNORE: the orphan could not be fully checked, so forwarding the bundle could get an
    # honest relay penalised by a peer that knows the task.
    assert await node.gossip_validate(node.topics[KIND_BATCH], payload, "peer") is Outcome.IGNORE
    assert len(node.task_batches(tid)) == 2


async def test_rate_limits_count_envelopes_and_bundles_never_lead_to_a_ban(tmp_path, nursery):
    cfg = RateLimitConfig(peer_rate_per_s=10_000, peer_burst=10_000, origin_rate_per_s=1, origin_burst=30,
                          origin_message_rate_per_s=1, origin_message_burst=50, abuse_threshold=3)
    node = await _node(nursery, tmp_path / "n", rate_limits=cfg)
    tm, tid = _task()
    assert (await node.ingest(tm.raw, "rpc"))[0].ok
    topic = node.topics[KIND_BATCH]
    bs = _batches(tid, 100)
    # 20 envelopes: within the origin's envelope burst of 30.
    assert await node.gossip_validate(topic, encode_bundle([m.raw for m in bs[:20]]), "busy", "busy") \
        is Outcome.ACCEPT
    # 20 more: over the envelope burst. IGNOREd (sync brings them), however often: an
    # honest busy node bundling many envelopes is paced, never banned.
    outs = [await node.gossip_validate(topic, encode_bundle([m.raw for m in bs[20 + k: 40 + k]]), "busy", "busy")
            for k in range(0, 40, 20)]
    assert outs == [Outcome.IGNORE, Outcome.IGNORE]
    assert node.ratelimit.abuse("busy", trio.current_time()) == 0
    assert len(node.task_batches(tid)) == 20


def test_message_limit_is_per_message_envelope_limit_per_envelope():
    rl = GossipRateLimiter(RateLimitConfig(peer_rate_per_s=1, peer_burst=100, origin_message_rate_per_s=1,
                                           origin_message_burst=2, abuse_threshold=100))
    assert rl.on_message("p", "p", 0.0, 60) is None  # one message of 60 envelopes
    assert rl.on_message("p", "p", 0.0, 40) is None  # the 100th envelope, 2nd message
    assert rl.on_message("p", "p", 0.0, 1) == "ignore"  # forwarder bucket empty (no abuse count)
    assert rl.abuse("p", 0.0) == 0
    rl2 = GossipRateLimiter(RateLimitConfig(origin_message_rate_per_s=1, origin_message_burst=2, abuse_threshold=2))
    assert [rl2.on_message("q", "q", 0.0, 200) for _ in range(4)] == [None, None, "ignore", "reject"]


def test_a_bundle_bigger_than_a_burst_passes_a_full_bucket_and_leaves_a_debt():
    rl = GossipRateLimiter(RateLimitConfig(peer_rate_per_s=10, peer_burst=50))
    assert rl.on_message("p", None, 0.0, 200) is None
    assert rl.on_message("p", None, 1.0, 1) == "ignore"  # 50 - 200 + 10 < 1
    assert rl.on_message("p", None, 20.0, 1) is None


# --------------------------------------------------------------------------- the publisher


async def test_publisher_bundles_what_waits_and_every_node_gets_it(tmp_path):
    net = FakeNet(seed=3)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        nodes = []
        for i in range(3):
            n = fake_node(net, f"n{i}", tmp_path / f"n{i}", G, clock=clock)
            await nursery.start(n.run)
            nodes.append(n)
        net.connect("n0", "n1")
        net.connect("n1", "n2")
        a = nodes[0]
        tm, tid = _task()
        assert (await a.ingest(tm.raw, "rpc", publish=True))[0].ok
        await wait_for(lambda: all(tid in n.tasks for n in nodes), what="the task everywhere")
        bs = _batches(tid, 60)
        # One RPC call with 60 batches queues 60 publishes before the publisher runs.
        verdicts = await a.ingest_many([m.raw for m in bs], "rpc", publish=True)
        assert all(v.ok for v, _ in verdicts)
        await wait_for(lambda: all(len(n.task_batches(tid)) == 60 for n in nodes), what="60 batches everywhere")
        # batches go out on their task's domain topic (PROTOCOL.md 7.2)
        batch_payloads = [p for t, p in a.p2p.published if t == a.topic_of(bs[0])]
        assert a.topic_of(bs[0]) != a.topics[KIND_BATCH]
        assert len(batch_payloads) < 60 and any(is_bundle(p) for p in batch_payloads)
        assert sum(len(split_payload(p, P)) for p in batch_payloads) == 60
        assert a.counters.published_envelopes == 61 and a.counters.published == len(a.p2p.published)
        nursery.cancel_scope.cancel()

"""Pure protocol tests: encoding, signing, validation outcomes."""
from __future__ import annotations

import subprocess
import sys

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from protocol.codec import pack
from protocol.errors import DecodeError
from protocol.genesis import genesis_from_json
from protocol.messages import (
    DOMAIN_TAGS, KIND_BATCH, KIND_TASK, Outcome, check_message, compute_gold_commitment,
    decode_message, validate_basic, verify_signature,
)
from protocol.params import DEFAULT_PARAMS as P

from .helpers import T0, DictContext, make_batch, make_task, make_test_genesis, pk, signed

G = make_test_genesis()
NET = G.network_id


def _task_msg(**kw):
    return signed(make_task(**kw), kw.get("requester", 1), NET)


def test_protocol_imports_no_io():
    code = ("import sys, protocol.messages, protocol.tally, protocol.genesis, protocol.aggregate;"
            "bad=[m for m in ('trio','lmdb','libp2p','socket','node') if m in sys.modules];"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"protocol imported {out}"


def test_roundtrip_task_and_batch():
    m = _task_msg()
    d = decode_message(m.raw, P)
    assert d.body == m.body and d.raw == m.raw
    assert verify_signature(d, NET)
    tid = m.compute_id(NET)
    b = signed(make_batch(5, tid, [(0, 1), (3, 2)]), 5, NET)
    db = decode_message(b.raw, P)
    assert db.body == b.body
    assert db.kind == KIND_BATCH and verify_signature(db, NET)
    assert pack(db.body.body_fields()) == db.body_bytes


def test_id_is_hash_of_domain_network_body():
    import hashlib
    m = _task_msg()
    assert m.compute_id(NET) == hashlib.sha256(DOMAIN_TAGS[KIND_TASK] + NET + m.body_bytes).digest()


def test_wrong_network_rejected():
    m = _task_msg()
    other = make_test_genesis(n_validators=3).network_id
    assert other != NET
    assert not verify_signature(decode_message(m.raw, P), other)
    v, _ = check_message(m.raw, DictContext(G), other, T0, P)
    assert v.outcome is Outcome.REJECT and "signature" in v.reason


def test_wrong_domain_rejected():
    # A signature made over the batch domain must not validate a task body.
    import nacl.signing
    from .helpers import key
    m = _task_msg()
    sig = key(1).sign(DOMAIN_TAGS[KIND_BATCH] + NET + m.body_bytes).signature
    forged = pack([m.body_bytes, sig])
    assert not verify_signature(decode_message(forged, P), NET)


@pytest.mark.parametrize("pos", [0, 10, 40, 63])
def test_tampered_signature_rejected(pos):
    m = _task_msg()
    sig = bytearray(m.signature)
    sig[pos] ^= 1
    v, _ = check_message(pack([m.body_bytes, bytes(sig)]), DictContext(G), NET, T0, P)
    assert v.outcome is Outcome.REJECT


def test_tampered_body_rejected():
    m = _task_msg()
    body = msgpack.unpackb(m.body_bytes)
    body[10] = 999_999  # bounty
    v, _ = check_message(pack([pack(body), m.signature]), DictContext(G), NET, T0, P)
    assert v.outcome is Outcome.REJECT and "signature" in v.reason


def test_wrong_signer_rejected():
    from protocol.messages import sign_message
    from .helpers import key
    with pytest.raises(ValueError):
        sign_message(make_task(requester=1), key(2), NET)


def test_non_canonical_encodings_rejected():
    m = _task_msg()
    # the same envelope with a non-minimal int encoding inside (uint 1 as 0xcc 0x01)
    body = bytearray(m.body_bytes)
    # kind 1 is encoded as fixint 0x01 right after the array header (1 byte)
    assert body[1] == 0x01
    non_canon = bytes(body[:1]) + b"\xcc\x01" + bytes(body[2:])
    with pytest.raises(DecodeError, match="non-canonical"):
        decode_message(pack([non_canon, m.signature]), P)
    with pytest.raises(DecodeError, match="trailing"):
        decode_message(m.raw + b"\x00", P)
    with pytest.raises(DecodeError):
        decode_message(m.raw[:-1], P)


def test_decoder_refuses_maps_floats_and_huge_lengths():
    for bad in [pack({"a": 1}), msgpack.packb([b"x", 1.5]), b"\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff" + b"a",
                b"", b"\x91" * 5000 + b"\x00"]:
        with pytest.raises(DecodeError):
            decode_message(bad, P)


def test_validate_basic_limits():
    m = signed(make_task(n_items=10, labels=("a",)), 1, NET)
    assert validate_basic(decode_message(m.raw, P), P).outcome is Outcome.REJECT
    tid = _task_msg().compute_id(NET)
    b = signed(make_batch(5, tid, [(1, 0)]), 5, NET)
    dm = decode_message(b.raw, P)
    assert validate_basic(dm, P).ok
    small = P.with_overrides({"max_labels_per_batch": 1})
    b2 = signed(make_batch(5, tid, [(1, 0), (2, 0)]), 5, NET)
    assert validate_basic(decode_message(b2.raw, P), small).outcome is Outcome.REJECT


def test_batch_items_must_increase():
    from protocol.messages import AnnotationBatch
    tid = _task_msg().compute_id(NET)
    body = AnnotationBatch(annotator=pk(5), task_id=tid, created_at=T0, labels=((2, 0), (1, 0)))
    b = signed(body, 5, NET)
    assert validate_basic(decode_message(b.raw, P), P).outcome is Outcome.REJECT


def test_context_outcomes():
    task = make_task(n_items=5, duration_ms=10_000)
    tm = signed(task, 1, NET)
    tid = tm.compute_id(NET)
    ctx = DictContext(G)
    b = signed(make_batch(5, tid, [(0, 1)]), 5, NET)
    v, _ = check_message(b.raw, ctx, NET, T0, P)
    assert v.outcome is Outcome.IGNORE and "unknown task" in v.reason
    ctx.tasks[tid] = task
    assert check_message(b.raw, ctx, NET, T0, P)[0].ok
    out_of_range = signed(make_batch(5, tid, [(7, 0)]), 5, NET)
    assert check_message(out_of_range.raw, ctx, NET, T0, P)[0].outcome is Outcome.REJECT
    bad_label = signed(make_batch(5, tid, [(0, 9)]), 5, NET)
    assert check_message(bad_label.raw, ctx, NET, T0, P)[0].outcome is Outcome.REJECT
    late = signed(make_batch(5, tid, [(0, 1)], created_at=task.deadline + 1), 5, NET)
    assert check_message(late.raw, ctx, NET, T0 + 20_000, P)[0].outcome is Outcome.IGNORE
    future = signed(make_batch(5, tid, [(0, 1)], created_at=T0 + P.clock_skew_ms + 5), 5, NET)
    assert check_message(future.raw, ctx, NET, T0, P)[0].outcome is Outcome.IGNORE


def test_attestation_never_signed_before_its_round_starts():
    """Rounds are clocked: round r starts at deadline + grace + r * round_timeout. An
    attestation stamped earlier is REJECTed, so a faulty validator cannot fill stores
    with far-future rounds (created_at itself is bounded by the clock-skew check)."""
    from protocol.messages import PHASE_PRECOMMIT, Attestation
    task = make_task(duration_ms=10_000)
    tid = signed(task, 1, NET).compute_id(NET)
    ctx = DictContext(G, {tid: task})

    def att(created_at, round_):
        return signed(Attestation(pk(1000), tid, created_at, round_, PHASE_PRECOMMIT, bytes(32), bytes(32), ()),
                      1000, NET).raw

    start0 = task.deadline + P.grace_period_ms
    now = start0 + 3 * P.round_timeout_ms
    assert check_message(att(start0, 0), ctx, NET, now, P)[0].ok
    assert check_message(att(now, 3), ctx, NET, now, P)[0].ok
    for created_at, round_ in [(start0 - 1, 0), (now, 4), (now, 10**9), (now, 2**64 - 1)]:
        v, _ = check_message(att(created_at, round_), ctx, NET, now, P)
        assert v.outcome is Outcome.REJECT and "before the round starts" in v.reason, (created_at, round_)


def test_replay_into_other_task_fails():
    t1, t2 = make_task(nonce=1), make_task(nonce=2)
    id1, id2 = signed(t1, 1, NET).compute_id(NET), signed(t2, 1, NET).compute_id(NET)
    b = signed(make_batch(5, id1, [(0, 1)]), 5, NET)
    body = msgpack.unpackb(b.body_bytes)
    body[3] = id2
    v, _ = check_message(pack([pack(body), b.signature]), DictContext(G, {id1: t1, id2: t2}), NET, T0, P)
    assert v.outcome is Outcome.REJECT


def test_gold_commitment():
    from protocol.messages import GoldReveal
    salt = bytes(range(32))
    answers = [(0, 1), (3, 2)]
    c = compute_gold_commitment(salt, answers)
    task = make_task(gold_commitment=c)
    tid = signed(task, 1, NET).compute_id(NET)
    ctx = DictContext(G, {tid: task})
    good = signed(GoldReveal(pk(1), tid, task.deadline, salt, tuple(answers)), 1, NET)
    assert check_message(good.raw, ctx, NET, task.deadline, P)[0].ok
    wrong = signed(GoldReveal(pk(1), tid, task.deadline, salt, ((0, 2), (3, 2))), 1, NET)
    assert check_message(wrong.raw, ctx, NET, task.deadline, P)[0].outcome is Outcome.REJECT
    early = signed(GoldReveal(pk(1), tid, task.deadline - 1, salt, tuple(answers)), 1, NET)
    assert check_message(early.raw, ctx, NET, task.deadline, P)[0].outcome is Outcome.REJECT
    other = signed(GoldReveal(pk(2), tid, task.deadline, salt, tuple(answers)), 2, NET)
    assert check_message(other.raw, ctx, NET, task.deadline, P)[0].outcome is Outcome.REJECT


def test_genesis_json_roundtrip_and_network_id():
    g2 = genesis_from_json(G.to_json())
    assert g2.network_id == G.network_id
    assert make_test_genesis(grace_period_ms=1000).network_id != G.network_id


labels_st = st.lists(st.tuples(st.integers(0, 9), st.integers(0, 2)), min_size=1, max_size=10,
                     unique_by=lambda x: x[0])


@settings(max_examples=200, deadline=None)
@given(pairs=labels_st, created=st.integers(0, 2**63), annotator=st.integers(0, 50))
def test_property_batch_roundtrip_canonical(pairs, created, annotator):
    tid = bytes(32)
    m = signed(make_batch(annotator, tid, pairs, created_at=created), annotator, NET)
    d = decode_message(m.raw, P)
    assert d.body == m.body
    assert pack([pack(d.body.body_fields()), d.signature]) == m.raw  # re-encoding gives the same bytes
    assert verify_signature(d, NET)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_property_garbage_only_decode_errors(data):
    try:
        decode_message(data, P)
    except DecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(0, 10_000), val=st.integers(1, 255))
def test_property_bitflips_never_accepted_as_is(pos, val):
    m = _task_msg()
    raw = bytearray(m.raw)
    raw[pos % len(raw)] ^= val
    ctx = DictContext(G)
    v, _ = check_message(bytes(raw), ctx, NET, T0, P)
    assert v.outcome is not Outcome.ACCEPT

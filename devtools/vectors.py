"""The test vectors: ``tests/vectors/*.json``, written from the reference code (fixed
seeds, no clock, no randomness).

``scripts/gen-vectors [--out DIR] [--check]`` runs :func:`main` (``python -m
devtools.vectors``); ``tests/test_vectors.py`` replays the files and checks that this
module still writes them byte for byte. Each vector file has one ``gen_*`` function,
listed in ``GENERATORS``; to add vectors, add cases to its generator (or a new file
with a new generator), run ``scripts/gen-vectors`` and commit the diff together with
PROTOCOL.md and ``interop/``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import nacl.signing
import numpy as np

from protocol import aggregate, codec, finality, reputation as rp, sync as sp
from protocol.codec import pack, sha256
from protocol.genesis import GENESIS_TAG, genesis_from_json, make_genesis
from protocol.messages import (
    DEST_ACCOUNT, DEST_ESCROW, DOMAIN_TAGS, GOLD_COMMIT_TAG, ITEM_BLOB, ITEM_BYTES, ITEM_TEXT, KIND_ATTESTATION, KIND_BATCH, KIND_GOLD,
    KIND_NAMES, KIND_TASK, PHASE_PRECOMMIT, PHASE_PREVOTE, SET_ROOT_TAG, SCHEMA_SINGLE_CHOICE, AnnotationBatch,
    Attestation, GoldReveal, Item, LabelSchema, LedgerVote, TaskAnnouncement, Transfer, check_message, compute_gold_commitment,
    compute_set_root, decode_message, sign_message, validate_basic, validate_in_context, verify_signature,
)
from protocol.errors import DecodeError, GenesisError
from protocol.ledger import compute_ledger, compute_release
from protocol.tally import RESULT_ROOT_TAG, compute_task_result

ROOT = Path(__file__).resolve().parent.parent  # the repository (default output: tests/vectors/)

FORMAT_VERSION = 1
T0 = 1_800_000_000_000          # fixed "now" (ms since the epoch) of every vector
SAFE_INT = (1 << 53) - 1        # JSON integers above this are written as decimal strings


def seed_of(name: str) -> bytes:
    """The fixed 32-byte ed25519 seed of test account ``name``."""
    return sha256(b"labelmesh-vectors/v1/" + name.encode())


class Account:
    def __init__(self, name: str):
        self.name = name
        self.seed = seed_of(name)
        self.key = nacl.signing.SigningKey(self.seed)
        self.pk = bytes(self.key.verify_key)

    def json(self) -> dict:
        return {"name": self.name, "seed": self.seed.hex(), "public_key": self.pk.hex()}


def jint(v: int):
    return v if -SAFE_INT <= v <= SAFE_INT else str(v)


# --------------------------------------------------------------------------- raw msgpack
# A small canonical msgpack writer used only to build *invalid* vectors: Raw(b) injects
# bytes verbatim (a non-canonical int, a float, a map...), everything else is encoded
# exactly like protocol.codec.pack.


class Raw:
    def __init__(self, b: bytes):
        self.b = b


def enc(v) -> bytes:
    if isinstance(v, Raw):
        return v.b
    if isinstance(v, list):
        n = len(v)
        head = bytes([0x90 | n]) if n < 16 else (b"\xdc" + n.to_bytes(2, "big") if n < 65536 else b"\xdd" + n.to_bytes(4, "big"))
        return head + b"".join(enc(x) for x in v)
    return pack(v)


# --------------------------------------------------------------------------- codec


CODEC_LIMITS = {"max_bytes": 64, "max_array": 4, "max_bin": 8, "max_str": 8}


def _nested(depth: int, inner: list) -> list:
    """``inner`` wrapped so that it sits at ``depth`` (the outermost array is at depth 0)."""
    for _ in range(depth):
        inner = [inner]
    return inner


def gen_codec() -> dict:
    """The canonical msgpack decoder alone (PROTOCOL.md 2): nesting depth 8 and 9, and each
    length limit at and one past its boundary."""
    at_limit = pack([bytes(8), bytes(8), bytes(8), [bytes(8), bytes(8), "x" * 8, 256]])
    over_limit = pack([bytes(8), bytes(8), bytes(8), [bytes(8), bytes(8), "x" * 7, 65536]])
    assert (len(at_limit), len(over_limit)) == (64, 65)
    inputs = [
        ("depth_8", pack(_nested(8, [])), "9 nested arrays: the innermost is at depth 8 (allowed)"),
        ("depth_8_with_scalars", pack([1, _nested(7, [2, "a", b"b", None])]),
         "the array at depth 8 holds scalars: allowed"),
        ("depth_9", pack(_nested(9, [])), "10 nested arrays: the innermost is at depth 9 (refused)"),
        ("depth_9_second_branch", pack([[1], _nested(8, [])]), "depth 9 on any path is refused"),
        ("bin_at_limit", pack(b"\xff" * 8), ""),
        ("bin_over_limit", pack(b"\xff" * 9), ""),
        ("str_at_limit", pack("\u00e9" * 4), "4 characters, 8 UTF-8 bytes: the limit counts bytes"),
        ("str_over_limit", pack("\u00e9" * 4 + "a"), "5 characters, 9 UTF-8 bytes"),
        ("array_at_limit", pack([1, 2, 3, 4]), ""),
        ("array_over_limit", pack([1, 2, 3, 4, 5]), ""),
        ("total_at_limit", at_limit, "exactly max_bytes (64) bytes"),
        ("total_over_limit", over_limit, "max_bytes + 1 bytes"),
    ]
    cases = []
    for name, data, note in inputs:
        try:
            codec.unpack(data, **CODEC_LIMITS)
        except DecodeError as e:
            cases.append({"name": name, "hex": data.hex(), "ok": False, "error": str(e), "note": note})
        else:
            cases.append({"name": name, "hex": data.hex(), "ok": True, "note": note})
    return {"format": FORMAT_VERSION, "max_depth": codec.MAX_DEPTH, "limits": CODEC_LIMITS,
            "note": "each input is decoded alone with these limits (PROTOCOL.md section 2)", "cases": cases}


# --------------------------------------------------------------------------- genesis


ACCOUNTS = {n: Account(n) for n in [
    "validator-0", "validator-1", "validator-2", "validator-3", "requester", "annotator-a", "annotator-b",
    "annotator-c", "annotator-d", "expert", "outsider"]}
VALIDATORS = [ACCOUNTS[f"validator-{i}"] for i in range(4)]


def build_genesis():
    doc = {
        "version": 1, "name": "vectors", "genesis_time_ms": T0 - 86_400_000,
        "validators": [{"account": v.pk.hex(), "weight": w} for v, w in zip(VALIDATORS, [1, 2, 3, 4])],
        "reputation": [{"account": ACCOUNTS["expert"].pk.hex(), "domain": "", "weight": 65536},
                       {"account": ACCOUNTS["annotator-a"].pk.hex(), "domain": "animals", "weight": 32768}],
        "balances": [{"account": ACCOUNTS["requester"].pk.hex(), "credits": 10**12}],
        "params": {"grace_period_ms": 3000, "round_timeout_ms": 4000},
    }
    return genesis_from_json(json.dumps(doc)), doc


GENESIS, GENESIS_DOC = build_genesis()
NET = GENESIS.network_id
P = GENESIS.params


#: A genesis name of 64 code points: 192 UTF-8 bytes and 96 UTF-16 code units (section 4).
NAME_64 = "\U0001F3F7" * 32 + "\u00e9" * 32


def small_inline_genesis():
    """A network whose max_inline_item_bytes (16) is tighter than the decoder's limits (5.6 vs 5.2)."""
    return make_genesis("small_inline", T0 - 86_400_000, [(VALIDATORS[0].pk, 1)],
                        params={"max_inline_item_bytes": 16})


def gen_genesis() -> dict:
    minimal = make_genesis("minimal", T0, [(VALIDATORS[0].pk, 1)])
    long_name = make_genesis(NAME_64, T0, [(VALIDATORS[0].pk, 1)])
    small = small_inline_genesis()
    cases = []
    for name, g, doc in [("vectors", GENESIS, GENESIS_DOC), ("minimal", minimal, json.loads(minimal.to_json())),
                         ("name_64_code_points", long_name, json.loads(long_name.to_json())),
                         ("small_inline", small, json.loads(small.to_json()))]:
        canon = g.canonical_bytes()
        cases.append({
            "name": name, "json": doc, "canonical_hex": canon.hex(),
            "network_id": g.network_id.hex(),
            "topic_prefix": f"/labelmesh/{g.network_id.hex()[:16]}/",
            "topics": {KIND_NAMES[k]: f"/labelmesh/{g.network_id.hex()[:16]}/{KIND_NAMES[k]}/1" for k in KIND_NAMES},
            "sync_protocol": f"/labelmesh/{g.network_id.hex()[:16]}/sync/1",
            "params": {f: getattr(g.params, f) for f in g.params.__dataclass_fields__},
        })
    return {"format": FORMAT_VERSION, "genesis_tag_hex": GENESIS_TAG.hex(), "cases": cases,
            "invalid": _invalid_genesis(json.loads(minimal.to_json())),
            "accounts": [a.json() for a in ACCOUNTS.values()]}


def _invalid_genesis(base: dict) -> list:
    """Genesis documents a node refuses, with the reference's reason."""
    out = []
    for name, value, note in (("name_65_code_points", "\u00e9" * 65, "65 code points (130 UTF-8 bytes)"),
                              ("name_empty", "", "")):
        doc = dict(base, name=value)
        try:
            genesis_from_json(json.dumps(doc))
        except GenesisError as e:
            out.append({"name": name, "json": doc, "error": str(e), "note": note})
        else:
            raise SystemExit(f"gen-vectors: genesis case {name} was accepted")
    return out


# --------------------------------------------------------------------------- valid messages


def item_json(it: Item) -> dict:
    if it.item_type == ITEM_TEXT:
        return {"type": 0, "text": it.text}
    if it.item_type == ITEM_BYTES:
        return {"type": 1, "payload": it.payload.hex(), "media_type": it.media_type}
    return {"type": 2, "sha256": it.digest.hex(), "size": jint(it.size), "media_type": it.media_type}


def body_json(b) -> dict:
    if isinstance(b, TaskAnnouncement):
        return {"requester": b.requester.hex(), "nonce": jint(b.nonce), "created_at": jint(b.created_at),
                "deadline": jint(b.deadline), "title": b.title,
                "schema": {"type": b.schema.schema_type, "domain": b.schema.domain, "labels": list(b.schema.labels)},
                "items": [item_json(i) for i in b.items], "redundancy": b.redundancy, "bounty": jint(b.bounty),
                "gold_commitment": None if b.gold_commitment is None else b.gold_commitment.hex(),
                "reward_rule": b.reward_rule}
    if isinstance(b, AnnotationBatch):
        return {"annotator": b.annotator.hex(), "task_id": b.task_id.hex(), "created_at": jint(b.created_at),
                "labels": [list(p) for p in b.labels]}
    if isinstance(b, GoldReveal):
        return {"requester": b.requester.hex(), "task_id": b.task_id.hex(), "created_at": jint(b.created_at),
                "salt": b.salt.hex(), "answers": [list(p) for p in b.answers]}
    if isinstance(b, Transfer):
        return {"sender": b.sender.hex(), "seq": jint(b.seq), "created_at": jint(b.created_at),
                "amount": jint(b.amount), "dest_type": b.dest_type, "dest": b.dest.hex()}
    if isinstance(b, LedgerVote):
        return {"validator": b.validator.hex(), "created_at": jint(b.created_at),
                "votes": [[s.hex(), jint(n), o.hex()] for s, n, o in b.votes]}
    return {"validator": b.validator.hex(), "task_id": b.task_id.hex(), "created_at": jint(b.created_at),
            "round": b.round, "phase": b.phase, "set_root": b.set_root.hex(), "result_root": b.result_root.hex(),
            "batch_ids": [i.hex() for i in b.batch_ids]}


class Book:
    """Valid signed messages by name, in creation order."""

    def __init__(self):
        self.msgs: dict[str, tuple[Account, object]] = {}

    def add(self, name: str, signer: Account, body):
        m = sign_message(body, signer.key, NET)
        self.msgs[name] = (signer, m)
        return m

    def id(self, name: str) -> bytes:
        return self.msgs[name][1].compute_id(NET)

    def body(self, name: str):
        return self.msgs[name][1].body


GOLD_SALT = sha256(b"labelmesh-vectors/v1/gold-salt")
GOLD_ANSWERS = ((0, 1), (2, 0))


def build_book() -> Book:
    bk = Book()
    A = ACCOUNTS
    bk.add("task_text", A["requester"], TaskAnnouncement(
        requester=A["requester"].pk, nonce=1, created_at=T0, deadline=T0 + 60_000, title="Which animal is it?",
        schema=LabelSchema(SCHEMA_SINGLE_CHOICE, "animals", ("cat", "dog", "bird")),
        items=tuple(Item(ITEM_TEXT, text=f"picture #{i}") for i in range(6)),
        redundancy=3, bounty=1000, gold_commitment=None, reward_rule=0))
    tid = bk.id("task_text")
    bk.add("task_gold_mixed_items", A["requester"], TaskAnnouncement(
        requester=A["requester"].pk, nonce=2, created_at=T0, deadline=T0 + 10_000,
        title="Spam or ham? — ünïcødé 标题",
        schema=LabelSchema(SCHEMA_SINGLE_CHOICE, "", ("spam", "ham")),
        items=(Item(ITEM_TEXT, text="buy now!!!"),
               Item(ITEM_BYTES, payload=b"\x00\x01hello\xff", media_type="application/octet-stream"),
               Item(ITEM_BLOB, digest=sha256(b"a blob served elsewhere"), size=1 << 20, media_type="image/png"),
               Item(ITEM_TEXT, text="")),
        redundancy=5, bounty=999_999, gold_commitment=compute_gold_commitment(GOLD_SALT, GOLD_ANSWERS),
        reward_rule=0))
    gid = bk.id("task_gold_mixed_items")
    bk.add("task_big_numbers", A["requester"], TaskAnnouncement(
        requester=A["requester"].pk, nonce=(1 << 64) - 1, created_at=T0, deadline=T0 + 90 * 86_400_000,
        title="x" * 40, schema=LabelSchema(SCHEMA_SINGLE_CHOICE, "d" * 20, tuple(f"class-{i}" for i in range(17))),
        items=tuple(Item(ITEM_TEXT, text=str(i)) for i in range(20)),
        redundancy=1000, bounty=10**15, gold_commitment=None, reward_rule=0))
    # batches for task_text: a, b, c agree mostly; d equivocates on item 0 across two batches
    bk.add("batch_a", A["annotator-a"], AnnotationBatch(A["annotator-a"].pk, tid, T0 + 1_000,
                                                        ((0, 0), (1, 1), (2, 2), (3, 0), (4, 1), (5, 2))))
    bk.add("batch_b", A["annotator-b"], AnnotationBatch(A["annotator-b"].pk, tid, T0 + 2_000,
                                                        ((0, 0), (1, 1), (2, 1), (3, 0), (5, 2))))
    bk.add("batch_c", A["annotator-c"], AnnotationBatch(A["annotator-c"].pk, tid, T0 + 3_000,
                                                        ((0, 1), (1, 1), (2, 2), (4, 0))))
    bk.add("batch_d1", A["annotator-d"], AnnotationBatch(A["annotator-d"].pk, tid, T0 + 4_000, ((0, 0), (3, 2))))
    bk.add("batch_d2", A["annotator-d"], AnnotationBatch(A["annotator-d"].pk, tid, T0 + 5_000, ((0, 2), (4, 1))))
    bk.add("batch_expert", A["expert"], AnnotationBatch(A["expert"].pk, tid, T0 + 6_000,
                                                        ((0, 0), (1, 1), (2, 2), (3, 1), (4, 1), (5, 2))))
    bk.add("batch_at_deadline", A["annotator-a"], AnnotationBatch(A["annotator-a"].pk, tid, T0 + 60_000, ((5, 0),)))
    # gold task: batches then the reveal
    bk.add("batch_gold_a", A["annotator-a"], AnnotationBatch(A["annotator-a"].pk, gid, T0 + 500,
                                                             ((0, 1), (1, 0), (2, 0), (3, 1))))
    bk.add("batch_gold_b", A["annotator-b"], AnnotationBatch(A["annotator-b"].pk, gid, T0 + 600,
                                                             ((0, 0), (1, 1), (2, 0), (3, 1))))
    bk.add("batch_gold_c", A["annotator-c"], AnnotationBatch(A["annotator-c"].pk, gid, T0 + 700,
                                                             ((0, 1), (1, 1), (2, 1), (3, 0))))
    deadline = bk.body("task_gold_mixed_items").deadline
    bk.add("gold_reveal", A["requester"], GoldReveal(A["requester"].pk, gid, deadline, GOLD_SALT, GOLD_ANSWERS))
    # attestations on task_text over batches a, b, c
    ids = tuple(sorted(bk.id(n) for n in ("batch_a", "batch_b", "batch_c")))
    set_root = compute_set_root(tid, ids)
    result_root = sha256(b"labelmesh-vectors/v1/some result root")
    bk.add("attestation_prevote", VALIDATORS[0], Attestation(VALIDATORS[0].pk, tid, T0 + 63_500, 0, PHASE_PREVOTE,
                                                             set_root, result_root, ids))
    for i, v in enumerate(VALIDATORS):
        bk.add(f"attestation_precommit_{i}", v, Attestation(v.pk, tid, T0 + 64_000 + i, 0, PHASE_PRECOMMIT,
                                                             set_root, result_root, ()))
    # the expert labels every item again, each with another label than in batch_expert: with
    # both batches, every vote of the expert is an equivocation (tally.json all_votes_equivocated)
    bk.add("batch_expert_conflict", A["expert"], AnnotationBatch(A["expert"].pk, tid, T0 + 7_000,
                                                                 ((0, 1), (1, 2), (2, 0), (3, 0), (4, 2), (5, 0))))
    # the ledger (PROTOCOL.md 5.7, 5.8, 16): the requester pays annotator-a, then escrows
    # task_text's bounty; validator-0 co-signs both
    bk.add("transfer_pay", A["requester"], Transfer(A["requester"].pk, 0, T0 - 1_000, 500, DEST_ACCOUNT,
                                                    A["annotator-a"].pk))
    bk.add("transfer_escrow", A["requester"], Transfer(A["requester"].pk, 1, T0, 1000, DEST_ESCROW, tid))
    triples = tuple(sorted((o.sender, o.seq, bk.id(n)) for n, o in
                           (("transfer_pay", bk.body("transfer_pay")), ("transfer_escrow", bk.body("transfer_escrow")))))
    bk.add("ledger_vote", VALIDATORS[0], LedgerVote(VALIDATORS[0].pk, T0 + 100, triples))
    return bk


BOOK = build_book()


def gen_messages() -> dict:
    out = []
    for name, (signer, m) in BOOK.msgs.items():
        sb = m.signed_bytes(NET)
        out.append({
            "name": name, "kind": m.kind, "kind_name": KIND_NAMES[m.kind], "version": 1,
            "signer": signer.json(), "network_id": NET.hex(),
            "topic": f"/labelmesh/{NET.hex()[:16]}/{KIND_NAMES[m.kind]}/1",
            "body": body_json(m.body),
            "body_hex": m.body_bytes.hex(),
            "domain_tag_hex": DOMAIN_TAGS[m.kind].hex(),
            "signed_bytes_hex": sb.hex(),
            "signature_hex": m.signature.hex(),
            "envelope_hex": m.raw.hex(),
            "id": m.compute_id(NET).hex(),
        })
    return {"format": FORMAT_VERSION, "genesis": "vectors", "network_id": NET.hex(),
            "domain_tags_hex": {KIND_NAMES[k]: t.hex() for k, t in DOMAIN_TAGS.items()},
            "messages": out}


# --------------------------------------------------------------------------- invalid messages


def fields_of(name: str) -> list:
    return BOOK.body(name).body_fields()


def signed_raw(fields_or_bytes, acct: Account, *, network_id: bytes = NET, kind: int | None = None,
               domain: bytes | None = None, envelope=None) -> bytes:
    """Envelope over ``fields`` (list, may hold Raw) signed correctly unless told otherwise."""
    body = fields_or_bytes if isinstance(fields_or_bytes, bytes) else enc(fields_or_bytes)
    if domain is None:
        k = kind
        if k is None and isinstance(fields_or_bytes, list) and type(fields_or_bytes[0]) is int:
            k = fields_or_bytes[0]
        domain = DOMAIN_TAGS.get(k, DOMAIN_TAGS[KIND_TASK])
    sig = acct.key.sign(domain + network_id + body).signature
    if envelope is not None:
        return envelope(body, sig)
    return pack([body, sig])


def with_field(name: str, index: int, value) -> list:
    f = fields_of(name)
    f[index] = value
    return f


def gen_invalid() -> dict:
    A = ACCOUNTS
    req, ann = A["requester"], A["annotator-a"]
    task = BOOK.msgs["task_text"][1]
    batch = BOOK.msgs["batch_a"][1]
    tid = BOOK.id("task_text")
    other_net = make_genesis("another network", T0, [(VALIDATORS[0].pk, 1)]).network_id
    L = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(batch.signature[32:], "little")
    sig_s_plus_l = batch.signature[:32] + (s + L).to_bytes(32, "little")
    flipped = bytearray(batch.signature)
    flipped[5] ^= 0x01
    identity = b"\x01" + bytes(31)       # the neutral point: a small-order public key
    small_order_body = enc(with_field("batch_a", 2, identity))
    deep = [KIND_TASK, 1, req.pk]
    for _ in range(9):
        deep = [deep]

    C_DEFAULT = {"tasks": ["task_text", "task_gold_mixed_items"], "now_ms": T0 + 30_000}
    cases = []

    def case(name, raw, outcome, reason, stage, ctx=None, note=""):
        cases.append({"name": name, "envelope_hex": raw.hex(), "expected": outcome, "reason": reason,
                      "stage": stage, "context": ctx or C_DEFAULT, "note": note})

    # --- decode (structure, types, canonical form): always REJECT
    case("empty_input", b"", "REJECT", "empty", "decode")
    case("trailing_bytes", batch.raw + b"\x00", "REJECT", "trailing bytes", "decode",
         note="a valid envelope followed by one more byte")
    case("truncated", batch.raw[:-1], "REJECT", "malformed msgpack", "decode")
    case("envelope_three_elements", pack([batch.body_bytes, batch.signature, b""]), "REJECT",
         "malformed msgpack", "decode", note="the envelope decoder allows arrays of at most 2 elements")
    case("envelope_one_element", pack([batch.body_bytes]), "REJECT", "envelope must be [body, signature]", "decode")
    case("signature_63_bytes", pack([batch.body_bytes, batch.signature[:63]]), "REJECT",
         "signature must be 64 bytes", "decode")
    case("body_is_str", pack([batch.body_bytes.decode("latin-1"), batch.signature]), "REJECT",
         "malformed msgpack", "decode", note="the envelope admits no str (max_str=0)")
    case("envelope_bin32_header", b"\x92\xc6" + len(batch.body_bytes).to_bytes(4, "big") + batch.body_bytes
         + b"\xc4\x40" + batch.signature, "REJECT", "non-canonical", "decode",
         note="the body as bin32 although bin8 fits")
    case("noncanonical_int_kind", signed_raw(([Raw(b"\xcc\x02")] + fields_of("batch_a")[1:]), ann, kind=KIND_BATCH),
         "REJECT", "non-canonical", "decode", note="kind 2 as uint8 (0xcc 0x02) instead of positive fixint 0x02")
    case("noncanonical_str8_short", signed_raw((with_field("task_text", 6, Raw(b"\xd9\x03abc"))), req), "REJECT",
         "non-canonical", "decode", note="a 3-byte title as str8 instead of fixstr")
    case("noncanonical_array16", signed_raw((with_field("batch_a", 5, Raw(b"\xdc\x00\x02\x00\x00"))), ann),
         "REJECT", "non-canonical", "decode", note="labels [0, 0] as array16")
    case("float_in_body", signed_raw((with_field("batch_a", 4, Raw(bytes.fromhex("cb3ff8000000000000")))), ann),
         "REJECT", "floats are not allowed", "decode")
    case("map_in_body", signed_raw((with_field("task_text", 6, Raw(b"\x81\x01\x02"))), req), "REJECT",
         "malformed msgpack", "decode", note="maps are refused outright (max_map_len = 0)")
    case("nesting_too_deep", signed_raw((deep), req), "REJECT", "nesting deeper", "decode")
    case("unknown_kind", signed_raw(([9, 1, req.pk, 0]), req), "REJECT", "unknown message kind 9", "decode")
    case("unknown_version", signed_raw((with_field("batch_a", 1, 2)), ann), "REJECT",
         "unsupported batch version 2", "decode")
    case("signer_31_bytes", signed_raw((with_field("batch_a", 2, ann.pk[:31])), ann), "REJECT",
         "signer must be 32 bytes", "decode")
    case("signer_as_str", signed_raw((with_field("batch_a", 2, "a" * 32)), ann), "REJECT", "signer must be bytes",
         "decode")
    case("task_id_31_bytes", signed_raw((with_field("batch_a", 3, tid[:31])), ann), "REJECT",
         "task_id must be 32 bytes", "decode")
    case("negative_created_at", signed_raw((with_field("batch_a", 4, -1)), ann), "REJECT",
         "created_at must be a non-negative integer", "decode")
    case("bool_as_int", signed_raw((with_field("task_text", 9, True)), req), "REJECT",
         "redundancy must be a non-negative integer", "decode")
    case("batch_odd_labels", signed_raw((with_field("batch_a", 5, [0, 1, 2])), ann), "REJECT", "even length",
         "decode")
    case("batch_seven_fields", signed_raw((fields_of("batch_a") + [0]), ann), "REJECT",
         "annotation batch must have 6 fields", "decode")
    case("task_fourteen_fields", signed_raw((fields_of("task_text") + [None]), req), "REJECT",
         "task announcement must have 13 fields", "decode")
    case("unknown_item_type", signed_raw((with_field("task_text", 8, [[3, "x"]])), req), "REJECT",
         "unknown item type 3", "decode")
    case("gold_commitment_16_bytes", signed_raw((with_field("task_text", 11, bytes(16))), req), "REJECT",
         "gold_commitment must be 32 bytes", "decode")

    # --- validate_basic (sizes, ranges): REJECT
    def task_with(**kw):
        b = BOOK.body("task_text")
        f = b.body_fields()
        idx = {"nonce": 3, "created_at": 4, "deadline": 5, "title": 6, "schema": 7, "items": 8, "redundancy": 9,
               "bounty": 10, "gold": 11, "reward_rule": 12}
        for k, v in kw.items():
            f[idx[k]] = v
        return signed_raw((f), req)

    case("schema_one_label", task_with(schema=[0, "animals", ["cat"]]), "REJECT", "schema must have 2..64 labels",
         "basic")
    case("schema_duplicate_labels", task_with(schema=[0, "animals", ["cat", "cat"]]), "REJECT",
         "label names must be distinct", "basic")
    case("schema_empty_label", task_with(schema=[0, "animals", ["cat", ""]]), "REJECT",
         "label names must not be empty", "basic")
    case("schema_type_1", task_with(schema=[1, "animals", ["cat", "dog"]]), "REJECT", "unsupported schema type 1",
         "basic")
    case("title_too_long", task_with(title="é" * 129), "REJECT", "title longer than 256 bytes", "basic",
         note="129 two-byte characters = 258 UTF-8 bytes")
    case("no_items", task_with(items=[]), "REJECT", "task must have 1..10000 items", "basic")
    case("inline_item_too_long", task_with(items=[[1, bytes(4097), "x/y"]]), "REJECT",
         "exceeds max_bin_len", "decode", note="the decoder's bin limit is max(max_inline_item_bytes, 64)")
    case("blob_too_big", task_with(items=[[2, bytes(32), (64 << 20) + 1, "x/y"]]), "REJECT", "blob of", "basic")
    case("deadline_too_soon", task_with(deadline=T0 + 999), "REJECT", "deadline must be 1000..", "basic")
    case("deadline_before_created", task_with(deadline=T0 - 1), "REJECT", "deadline must be", "basic")
    case("redundancy_zero", task_with(redundancy=0), "REJECT", "redundancy must be 1..1000", "basic")
    case("bounty_too_big", task_with(bounty=10**15 + 1), "REJECT", "bounty exceeds", "basic")
    case("reward_rule_1", task_with(reward_rule=1), "REJECT", "unknown reward rule 1", "basic")
    case("batch_empty", signed_raw((with_field("batch_a", 5, [])), ann), "REJECT", "batch must hold 1..10000 labels",
         "basic")
    case("batch_items_not_increasing", signed_raw((with_field("batch_a", 5, [1, 0, 1, 1])), ann), "REJECT",
         "strictly increasing", "basic", note="item 1 labelled twice in one batch")
    case("batch_items_decreasing", signed_raw((with_field("batch_a", 5, [2, 0, 1, 0])), ann), "REJECT",
         "strictly increasing", "basic")
    att = BOOK.body("attestation_prevote")
    v0 = VALIDATORS[0]
    case("attestation_bad_phase", signed_raw((with_field("attestation_precommit_0", 6, 2)), v0), "REJECT",
         "unknown attestation phase 2", "basic")
    case("attestation_set_root_mismatch", signed_raw((with_field("attestation_prevote", 7, bytes(32))), v0),
         "REJECT", "set_root does not match", "basic")
    case("attestation_ids_unsorted", signed_raw((with_field("attestation_prevote", 9, list(att.batch_ids[::-1]))),
                                                v0), "REJECT", "sorted and distinct", "basic")
    case("precommit_with_ids", signed_raw((with_field("attestation_precommit_0", 9, list(att.batch_ids))), v0),
         "REJECT", "a precommit lists no batch ids", "basic")
    case("gold_answers_unsorted", signed_raw((with_field("gold_reveal", 6, [2, 0, 0, 1])), req), "REJECT",
         "gold items must be strictly increasing", "basic")

    case("transfer_amount_zero", signed_raw((with_field("transfer_pay", 5, 0)), req), "REJECT",
         "amount must be 1..9223372036854775807", "basic")
    case("transfer_amount_over_2_63", signed_raw((with_field("transfer_pay", 5, 1 << 63)), req), "REJECT",
         "amount must be 1..9223372036854775807", "basic", note="2^63 fits a uint64 but not an amount")
    case("transfer_to_oneself", signed_raw((with_field("transfer_pay", 7, req.pk)), req), "REJECT",
         "a transfer to oneself moves nothing", "basic")
    case("transfer_unknown_dest_type", signed_raw((with_field("transfer_pay", 6, 2)), req), "REJECT",
         "unknown transfer destination type 2", "basic")
    case("transfer_nine_fields", signed_raw((fields_of("transfer_pay") + [0]), req), "REJECT",
         "transfer must have 8 fields", "decode")
    vote_flat = fields_of("ledger_vote")[4]
    case("ledger_vote_unsorted", signed_raw((with_field("ledger_vote", 4, vote_flat[3:] + vote_flat[:3])),
                                            VALIDATORS[0]), "REJECT", "sorted by (sender, seq)", "basic")
    case("ledger_vote_empty", signed_raw((with_field("ledger_vote", 4, [])), VALIDATORS[0]), "REJECT",
         "ledger vote must hold 1..4096 votes", "basic")
    case("ledger_vote_not_triples", signed_raw((with_field("ledger_vote", 4, vote_flat[:2])), VALIDATORS[0]),
         "REJECT", "length a multiple of 3", "decode")

    # --- signature: REJECT "bad signature"
    case("bad_signature_bit_flip", pack([batch.body_bytes, bytes(flipped)]), "REJECT", "bad signature", "signature")
    case("signed_for_other_network", signed_raw(batch.body_bytes, ann, network_id=other_net, kind=KIND_BATCH),
         "REJECT", "bad signature", "signature", note="same body, signed with another genesis' network id")
    case("signed_with_other_domain", signed_raw(batch.body_bytes, ann, domain=DOMAIN_TAGS[KIND_TASK]), "REJECT",
         "bad signature", "signature", note="a batch body signed under the task domain tag")
    case("signed_by_someone_else", signed_raw(batch.body_bytes, A["annotator-b"], kind=KIND_BATCH), "REJECT",
         "bad signature", "signature", note="the signer field names annotator-a; annotator-b signed")
    case("body_tampered_after_signing", pack([enc(with_field("batch_a", 5, [0, 1])), batch.signature]), "REJECT",
         "bad signature", "signature")
    case("signature_s_not_reduced", pack([batch.body_bytes, sig_s_plus_l]), "REJECT", "bad signature", "signature",
         note="S + L instead of S: the same point equation holds, but S >= L must be refused")
    case("small_order_public_key", pack([small_order_body, identity + bytes(32)]), "REJECT", "bad signature",
         "signature", note="signer = the identity point, R = identity, S = 0: [S]B = R + [k]A holds for every "
         "message, so a verifier without libsodium's small-order check would accept it")

    # --- in context: REJECT or IGNORE
    tgm = BOOK.body("task_gold_mixed_items")
    gid = BOOK.id("task_gold_mixed_items")
    case("label_out_of_range", signed_raw((with_field("batch_a", 5, [0, 3])), ann), "REJECT",
         "label 3 out of range: schema has 3 labels", "context")
    case("item_out_of_range", signed_raw((with_field("batch_a", 5, [0, 0, 6, 1])), ann), "REJECT",
         "item 6 out of range: task has 6 items", "context")
    case("unknown_task", signed_raw((with_field("batch_a", 3, sha256(b"no such task"))), ann), "IGNORE",
         "unknown task", "context")
    case("batch_before_its_task_arrived", batch.raw, "IGNORE", "unknown task", "context",
         ctx={"tasks": [], "now_ms": T0 + 30_000}, note="valid later, when the task is known: retry, no penalty")
    case("batch_after_deadline", signed_raw((with_field("batch_a", 4, T0 + 60_001)), ann), "IGNORE",
         "signed after the task deadline", "context", ctx={"tasks": ["task_text"], "now_ms": T0 + 70_000})
    case("from_the_future", signed_raw((with_field("batch_a", 4, T0 + 30_000 + 30_001)), ann), "IGNORE",
         "in the future", "context", note="created_at > now_ms + clock_skew_ms (30000)")
    case("task_from_the_future", BOOK.msgs["task_text"][1].raw, "IGNORE", "in the future", "context",
         ctx={"tasks": [], "now_ms": T0 - 30_001})
    case("gold_wrong_answers", signed_raw((with_field("gold_reveal", 6, [0, 0, 2, 0])), req), "REJECT",
         "does not match the task's commitment", "context", ctx={"tasks": ["task_gold_mixed_items"], "now_ms": T0 + 20_000})
    case("gold_before_deadline", signed_raw((with_field("gold_reveal", 4, tgm.deadline - 1)), req), "REJECT",
         "gold revealed before the deadline", "context", ctx={"tasks": ["task_gold_mixed_items"], "now_ms": T0 + 20_000})
    case("gold_by_other_account", signed_raw((with_field("gold_reveal", 2, ann.pk)), ann), "REJECT",
         "not signed by the task's requester", "context", ctx={"tasks": ["task_gold_mixed_items"], "now_ms": T0 + 20_000})
    case("gold_for_task_without_commitment", signed_raw((with_field("gold_reveal", 3, tid)), req), "REJECT",
         "task has no gold commitment", "context", ctx={"tasks": ["task_text"], "now_ms": T0 + 70_000})
    case("gold_answer_out_of_range", signed_raw((with_field("gold_reveal", 6, [0, 1, 4, 0])), req), "REJECT",
         "gold answer out of range", "context", ctx={"tasks": ["task_gold_mixed_items"], "now_ms": T0 + 20_000})
    case("attestation_by_non_validator", signed_raw((with_field("attestation_precommit_0", 2, A["outsider"].pk)),
                                                    A["outsider"]), "REJECT", "not a validator", "context",
         ctx={"tasks": ["task_text"], "now_ms": T0 + 70_000})
    case("ledger_vote_by_non_validator", signed_raw((with_field("ledger_vote", 2, A["outsider"].pk)),
                                                    A["outsider"]), "REJECT", "not a validator", "context")
    case("transfer_from_the_future", signed_raw((with_field("transfer_pay", 4, T0 + 30_000 + 30_001)), req),
         "IGNORE", "in the future", "context")
    case("attestation_before_its_round", signed_raw((with_field("attestation_precommit_0", 5, 5)), v0), "REJECT",
         "before the round starts", "context", ctx={"tasks": ["task_text"], "now_ms": T0 + 70_000})
    # and the valid ones, through the same pipeline
    valid = []
    for name, (signer, m) in BOOK.msgs.items():
        kind = m.kind
        if kind == KIND_TASK:
            ctx = {"tasks": [], "now_ms": T0}
        elif kind == KIND_GOLD or kind == KIND_ATTESTATION:
            ctx = {"tasks": ["task_text", "task_gold_mixed_items"], "now_ms": T0 + 70_000}
        else:
            ctx = {"tasks": ["task_text", "task_gold_mixed_items"], "now_ms": T0 + 30_000}
        valid.append({"name": name, "envelope_hex": m.raw.hex(), "expected": "ACCEPT", "reason": "", "stage": "accept",
                      "context": ctx, "note": "a valid message from messages.json"})
    # compute actual outcomes now, so a generator bug cannot write a wrong expectation
    tasks_by_name = {n: (BOOK.id(n), BOOK.body(n)) for n in ("task_text", "task_gold_mixed_items", "task_big_numbers")}
    for c in cases + valid:
        ctx = _Ctx({tasks_by_name[n][0]: tasks_by_name[n][1] for n in c["context"]["tasks"]})
        v, _ = check_message(bytes.fromhex(c["envelope_hex"]), ctx, NET, c["context"]["now_ms"], P)
        got = v.outcome.value.upper()
        stage = stage_of(bytes.fromhex(c["envelope_hex"]), ctx, c["context"]["now_ms"])
        if got != c["expected"] or c["reason"] not in v.reason or stage != c["stage"]:
            raise SystemExit(f"gen-vectors: case {c['name']}: expected {c['expected']} '{c['reason']}', "
                             f"the code says {got} '{v.reason}' at stage {stage}")
        c["full_reason"] = v.reason
    return {"format": FORMAT_VERSION, "genesis": "vectors", "network_id": NET.hex(),
            "task_names": {n: tasks_by_name[n][0].hex() for n in tasks_by_name},
            "stages": ["decode", "basic", "signature", "context", "accept"],
            "cases": cases + valid, "param_cases": _param_cases()}


def _param_cases() -> dict:
    """Task announcements on the small_inline network, where max_inline_item_bytes (16) is
    tighter than the decoder's bin (64) and str (256) limits: which rule refuses, at which stage."""
    g = small_inline_genesis()
    req = ACCOUNTS["requester"]

    def task(*items):
        return TaskAnnouncement(requester=req.pk, nonce=7, created_at=T0, deadline=T0 + 60_000, title="small items",
                                schema=LabelSchema(SCHEMA_SINGLE_CHOICE, "", ("a", "b")), items=items,
                                redundancy=1, bounty=0, gold_commitment=None, reward_rule=0)

    text = lambda n: Item(ITEM_TEXT, text="t" * n)  # noqa: E731
    payload = lambda n: Item(ITEM_BYTES, payload=b"\x01" * n, media_type="x/y")  # noqa: E731
    cases = [
        ("inline_items_at_limit", task(text(16), payload(16)), "ACCEPT", "", "accept",
         "a 16-byte text and a 16-byte payload: max_inline_item_bytes = 16"),
        ("inline_text_over_5_2", task(text(100)), "REJECT", "inline item longer than 16 bytes", "basic",
         "100 bytes: within the decoder's str limit max(256, 16), refused by the 5.2 size rule"),
        ("inline_bytes_over_5_2", task(payload(40)), "REJECT", "inline item longer than 16 bytes", "basic",
         "40 bytes: within the decoder's bin limit max(16, 64), refused by the 5.2 size rule"),
        ("inline_bytes_over_decoder", task(payload(65)), "REJECT", "exceeds max_bin_len(64)", "decode",
         "65 bytes: over the decoder's bin limit max(16, 64)"),
        ("inline_text_over_decoder", task(text(257)), "REJECT", "exceeds max_str_len(256)", "decode",
         "257 bytes: over the decoder's str limit max(256, 16)"),
    ]
    ctx = _Ctx({}, g)
    out = []
    for name, body, expected, reason, stage, note in cases:
        raw = sign_message(body, req.key, g.network_id).raw
        v, _ = check_message(raw, ctx, g.network_id, T0, g.params)
        got, at = v.outcome.value.upper(), stage_of(raw, ctx, T0, g.network_id, g.params)
        if got != expected or reason not in v.reason or at != stage:
            raise SystemExit(f"gen-vectors: case {name}: the code says {got} '{v.reason}' at stage {at}")
        out.append({"name": name, "envelope_hex": raw.hex(), "expected": expected, "reason": reason, "stage": stage,
                    "context": {"tasks": [], "now_ms": T0}, "note": note, "full_reason": v.reason})
    return {"genesis": "small_inline", "cases": out}


def stage_of(raw: bytes, ctx, now_ms: int, net: bytes = NET, params=P) -> str:
    """Which step of the pipeline (decode -> basic -> signature -> context) stops ``raw``."""
    try:
        msg = decode_message(raw, params)
    except DecodeError:
        return "decode"
    if not validate_basic(msg, params).ok:
        return "basic"
    if not verify_signature(msg, net):
        return "signature"
    return "accept" if validate_in_context(msg, ctx, now_ms, params).ok else "context"


class _Ctx:
    def __init__(self, tasks, genesis=GENESIS):
        self.tasks = tasks
        self.genesis = genesis

    def get_task(self, task_id):
        return self.tasks.get(task_id)

    def validator_weight(self, account):
        return self.genesis.validator_weight(account)


# --------------------------------------------------------------------------- roots


def gen_roots() -> dict:
    tid = BOOK.id("task_text")
    names = ["batch_a", "batch_b", "batch_c"]
    ids = [BOOK.id(n) for n in names]
    set_cases = [
        {"task_id": tid.hex(), "batch_ids": [], "set_root": compute_set_root(tid, []).hex()},
        {"task_id": tid.hex(), "batch_ids": [i.hex() for i in ids], "sorted_batch_ids": [i.hex() for i in sorted(ids)],
         "set_root": compute_set_root(tid, ids).hex()},
    ]
    gold_cases = [
        {"salt": GOLD_SALT.hex(), "answers": [list(p) for p in GOLD_ANSWERS],
         "answers_msgpack_hex": pack([x for p in GOLD_ANSWERS for x in p]).hex(),
         "commitment": compute_gold_commitment(GOLD_SALT, GOLD_ANSWERS).hex()},
        {"salt": bytes(32).hex(), "answers": [], "answers_msgpack_hex": pack([]).hex(),
         "commitment": compute_gold_commitment(bytes(32), []).hex()},
        {"salt": (b"\xff" * 32).hex(), "answers": [[300, 2], [7, 1], [70000, 0]],
         "answers_msgpack_hex": pack([7, 1, 300, 2, 70000, 0]).hex(),
         "commitment": compute_gold_commitment(b"\xff" * 32, [(300, 2), (7, 1), (70000, 0)]).hex(),
         "note": "answers are sorted by item before encoding"},
    ]
    return {"format": FORMAT_VERSION, "set_root_tag_hex": SET_ROOT_TAG.hex(), "gold_commit_tag_hex": GOLD_COMMIT_TAG.hex(),
            "result_root_tag_hex": RESULT_ROOT_TAG.hex(), "set_roots": set_cases, "gold_commitments": gold_cases}


# --------------------------------------------------------------------------- aggregation


def _agg_case(name, n_items, n_classes, votes, weights, gold=None, note=""):
    """votes: list of (item, annotator, label)."""
    inp = aggregate.AggregateInput(
        n_items=n_items, n_classes=n_classes, n_annotators=len(weights),
        item=np.array([v[0] for v in votes], dtype=np.int64), annotator=np.array([v[1] for v in votes], dtype=np.int64),
        label=np.array([v[2] for v in votes], dtype=np.int64), prior_weight=np.array(weights, dtype=np.int64), gold=gold)
    out = {"name": name, "note": note,
           "input": {"n_items": n_items, "n_classes": n_classes, "n_annotators": len(weights),
                     "votes": [list(v) for v in votes], "prior_weight": list(weights),
                     "gold": None if gold is None else [[k, v] for k, v in sorted(gold.items())]}}
    for est, fn in (("consensus", aggregate.compute_consensus), ("plurality", aggregate.compute_weighted_plurality)):
        r = fn(inp)
        out[est] = {"label": [int(x) for x in r.label], "confidence": [int(x) for x in r.confidence],
                    "agreement": [int(x) for x in r.agreement],
                    "annotator_accuracy": [int(x) for x in r.annotator_accuracy], "alpha": int(r.alpha),
                    "encoded_hex": aggregate.encode_result(r).hex()}
    ei, ea = aggregate.compute_equivocations(inp)
    out["equivocations"] = [[int(i), int(a)] for i, a in zip(ei, ea)]
    return out


def _h(*xs):
    return int.from_bytes(sha256(b"agg" + b"/".join(str(x).encode() for x in xs)), "big")


def _synthetic_truth(seed: int, item: int, k: int) -> int:
    """The true class _synthetic_votes draws for ``item``."""
    return _h(seed, "truth", item) % k


def _synthetic_votes(seed: int, n_items: int, n_ann: int, k: int, per_item: int):
    """Deterministic pseudo-random votes from sha256 (no RNG library involved)."""
    votes = []
    for i in range(n_items):
        truth = _synthetic_truth(seed, i, k)
        anns = sorted(range(n_ann), key=lambda a: _h(seed, "pick", i, a))[:per_item]
        for a in anns:
            good = _h(seed, "skill", a) % 100 < 70
            right = _h(seed, "right", i, a) % 100 < (90 if good else 40)
            votes.append((i, a, truth if right else (truth + 1 + _h(seed, "wrong", i, a) % (k - 1)) % k))
    return votes


def gen_aggregate() -> dict:
    W = aggregate.WEIGHT_ONE
    cases = [
        _agg_case("unanimous", 3, 2, [(0, 0, 1), (0, 1, 1), (1, 0, 0), (1, 1, 0), (2, 0, 1), (2, 1, 1)], [W, W]),
        _agg_case("tie_lowest_class", 1, 3, [(0, 0, 2), (0, 1, 1)], [W, W], note="equal weights, two labels: ties "
                  "go to the lowest class index"),
        _agg_case("weights_decide", 2, 2, [(0, 0, 0), (0, 1, 1), (0, 2, 1), (1, 0, 1), (1, 1, 0), (1, 2, 0)],
                  [W, 64, 64], note="one reputable annotator against two fresh ones"),
        _agg_case("zero_weight_and_no_votes", 3, 2, [(0, 0, 1), (1, 1, 0)], [W, 0],
                  note="item 1 has only a zero-weight vote, item 2 none: label -1"),
        _agg_case("equivocation_and_repeats", 2, 3, [(0, 0, 1), (0, 0, 2), (0, 1, 2), (1, 0, 0), (1, 0, 0), (1, 1, 0)],
                  [W, W], note="annotator 0 gives item 0 two labels (uncounted) and item 1 the same label twice "
                  "(counted once)"),
        _agg_case("gold_clamps", 3, 2, [(0, 0, 0), (0, 1, 0), (1, 0, 1), (1, 1, 0), (2, 0, 1), (2, 1, 1)], [W, W],
                  gold={0: 1}, note="gold item 0 gets its gold label with confidence ONE"),
        _agg_case("support_rule", 6, 2, [(i, a, 0) for i in range(5) for a in (0, 1)] + [(5, 2, 1)],
                  [W, W, W // 1000], note="item 5's only vote (a near-fresh account) says class 1; the class prior "
                  "favours class 0, but a label is always a class that an effective vote on the item names "
                  "(docs/consensus.md, the support rule): class 1, with its low posterior as confidence"),
        _agg_case("synthetic_40x6", 40, 3, _synthetic_votes(1, 40, 6, 3, 4), [W, W, 2 * W, 64, 0, W // 2],
                  gold={3: 0, 17: 2}, note="pseudo-random votes (sha256-derived), mixed weights, two gold items"),
    ] + [
        _agg_case(f"gold_chooses_model_{model}", 24, 3, _synthetic_votes(seed, 24, 6, 3, 3), [W] * 6,
                  gold={i: _synthetic_truth(seed, i, 3) for i in range(0, 24, 2)},
                  note=f"gold on every other item; the held-out gold likelihood chooses GOLD_MODELS[{model}] "
                  f"({'MAP, pooled prior' if model == 1 else 'VB, pooled prior'}; docs/consensus.md)")
        for model, seed in ((1, 56), (2, 108))
    ]
    return {"format": FORMAT_VERSION, "constants": {
        "ONE": aggregate.ONE, "WEIGHT_ONE": aggregate.WEIGHT_ONE, "PROB_ONE": aggregate.PROB_ONE,
        "LOG_ONE": aggregate.LOG_ONE, "CONFUSION_PRIOR": aggregate.CONFUSION_PRIOR,
        "CLASS_PRIOR": aggregate.CLASS_PRIOR, "CONSENSUS_ITERATIONS": aggregate.CONSENSUS_ITERATIONS,
        "LOG2E_Q32": aggregate.LOG2E_Q32, "GOLD_FOLDS": aggregate.GOLD_FOLDS,
        "GOLD_SELECT_MARGIN": aggregate.GOLD_SELECT_MARGIN,
        "GOLD_MODELS": [[int(m.use_map), m.pooled_votes] for m in aggregate.GOLD_MODELS],
        "log2_table_sha256": hashlib.sha256(aggregate._LOG2_TABLE.astype("<i8").tobytes()).hexdigest(),
        "exp2_hi_table_sha256": hashlib.sha256(aggregate._EXP2_HI.astype("<i8").tobytes()).hexdigest(),
        "exp2_lo_table_sha256": hashlib.sha256(aggregate._EXP2_LO.astype("<i8").tobytes()).hexdigest()},
        "cases": cases + [_agg_case("no_votes", 2, 2, [], [W], note="no vote at all: label -1, confidence and "
                                    "agreement 0 on every item, accuracy 0, alpha 0")],
        "layout": ["version", "ONE", "label", "confidence", "agreement", "annotator_accuracy", "alpha"]}


# --------------------------------------------------------------------------- tally


def _tally_case(name, task_name, batch_names, gold_name, weights: dict, note="", params: dict | None = None):
    task = BOOK.body(task_name)
    p = P.with_overrides({**dict(GENESIS.param_overrides), **params}) if params else P
    tid = BOOK.id(task_name)
    batches = {BOOK.id(n): BOOK.body(n) for n in batch_names}
    gold = BOOK.body(gold_name) if gold_name else None
    fresh = P.fresh_weight
    gold_id = BOOK.id(gold_name) if gold_name else None   # a revealed gold is part of the pinned set
    res = compute_task_result(tid, task, batches, gold, lambda a: weights.get(a, fresh), p, gold_id=gold_id)
    canon = pack(res.canonical())
    return {
        "name": name, "note": note, **({"params": params} if params else {}),
        "task": task_name, "task_id": tid.hex(), "batches": batch_names,
        "batch_ids": [BOOK.id(n).hex() for n in batch_names], "gold": gold_name,
        "weights": [{"account": a.hex(), "weight": w} for a, w in sorted(weights.items())],
        "fresh_weight": fresh,
        "result": {
            "set_root": res.set_root.hex(), "label": list(res.label), "confidence": list(res.confidence),
            "agreement": list(res.agreement), "votes": list(res.votes),
            "annotators": [{"account": a.account.hex(), "labels": a.labels, "equivocations": a.equivocations,
                            "accuracy": a.accuracy, "score": a.score, "reward": a.reward, "trust": a.trust}
                           for a in res.annotators],
            "equivocations": [[a.hex(), i] for a, i in res.equivocations],
            "alpha": res.alpha, "refund": res.refund, "gold_items": res.gold_items, "fee": res.fee,
            "canonical_hex": canon.hex(), "result_root": res.result_root.hex()},
    }


def gen_tally() -> dict:
    A = ACCOUNTS
    rep = {a: w for a, d, w in GENESIS.reputation if d == ""}
    cases = [
        _tally_case("fresh_only", "task_text", ["batch_a", "batch_b", "batch_c"], None, {},
                    note="every annotator fresh: relative weights all ONE"),
        _tally_case("expert_and_equivocator", "task_text",
                    ["batch_a", "batch_b", "batch_c", "batch_d1", "batch_d2", "batch_expert"], None, rep,
                    note="the genesis expert (weight ONE) with four fresh annotators; annotator-d equivocates on item 0"),
        _tally_case("gold_revealed", "task_gold_mixed_items", ["batch_gold_a", "batch_gold_b", "batch_gold_c"],
                    "gold_reveal", {}, note="gold items 0 and 2 are scored against the gold answers"),
        _tally_case("no_batches", "task_text", [], None, {}, note="nothing to aggregate: the whole bounty is refunded"),
        _all_votes_equivocated(rep),
        _tally_case("gold_reputable_requester", "task_gold_mixed_items", ["batch_gold_a", "batch_gold_b", "batch_gold_c"],
                    "gold_reveal", {A["requester"].pk: 1 << 16},
                    note="gold_revealed with a requester of weight ONE: the requester of a pinned gold reveal is "
                         "a witness, so each annotator's trust is (64 + 64 + 65536) // 3"),
        _tally_case("fee_and_penalty", "task_text",
                    ["batch_a", "batch_b", "batch_c", "batch_d1", "batch_d2", "batch_expert"], None, rep,
                    note="expert_and_equivocator under a genesis with ledger_fee_bps 250: a fee of 25 of the 1000, "
                         "975 split; annotator-d's equivocated item costs it ten labels' worth of pay",
                    params={"ledger_fee_bps": 250}),
    ]
    assert cases[-1]["result"]["fee"] == 25
    assert {a["trust"] for a in cases[-2]["result"]["annotators"]} == {(64 + 64 + (1 << 16)) // 3}
    return {"format": FORMAT_VERSION, "network_id": NET.hex(), "ONE": 1 << 16, "cases": cases}


def _all_votes_equivocated(rep: dict) -> dict:
    """PROTOCOL.md 10.1/10.2/10.5: an annotator none of whose votes count keeps its row, and its
    weight still sets the scale of the others."""
    names = ["batch_a", "batch_b", "batch_c", "batch_expert", "batch_expert_conflict"]
    case = _tally_case("all_votes_equivocated", "task_text", names, None, rep,
                       note="the genesis expert (weight ONE) gives every item two different labels: none of its "
                            "votes count, it keeps a row [account, 0, 6, 0, 0, 0] and its weight still sets the "
                            "scale of 10.2, so the three fresh annotators weigh 64/65536 each: their votes barely "
                            "move the posteriors, nobody beats chance and the whole bounty is refunded")
    without = _tally_case("without", "task_text", names[:3], None, {})["result"]   # the expert out of the scale
    assert (without["label"], without["confidence"]) != (case["result"]["label"], case["result"]["confidence"])
    row = next(a for a in case["result"]["annotators"] if a["account"] == ACCOUNTS["expert"].pk.hex())
    assert (row["labels"], row["equivocations"], row["accuracy"], row["score"], row["reward"]) == (0, 6, 0, 0, 0)
    return case


# --------------------------------------------------------------------------- sync


def gen_sync() -> dict:
    ids = sorted(sha256(b"id" + i.to_bytes(4, "big")) for i in range(300))
    fps = [
        {"ids": [], "fingerprint": sp.compute_fingerprint([]).hex()},
        {"ids": [ids[0].hex()], "fingerprint": sp.compute_fingerprint(ids[:1]).hex()},
        {"ids": [i.hex() for i in ids[:5]], "fingerprint": sp.compute_fingerprint(ids[:5]).hex()},
        {"ids": [(b"\xff" * 32).hex(), (b"\xff" * 31 + b"\x02").hex()],
         "fingerprint": sp.compute_fingerprint([b"\xff" * 32, b"\xff" * 31 + b"\x02"]).hex(),
         "note": "the sum wraps modulo 2^256"},
    ]
    tid = BOOK.id("task_text")
    frames = _sync_frames(tid, ids)
    bad = [
        {"name": "unknown_request_kind", "hex": pack([7, b""]).hex(), "error": "unknown sync request kind 7"},
        {"name": "summary_limit_zero", "hex": pack([0, b"", 0]).hex(), "error": "summary request must be"},
        {"name": "summary_limit_too_big", "hex": pack([0, b"", 1025]).hex(), "error": "summary request must be"},
        {"name": "range_task_id_short", "hex": pack([1, b"x", b"", None]).hex(), "error": "range request must be"},
        {"name": "get_no_ids", "hex": pack([2, []]).hex(), "error": "get request must be"},
        {"name": "get_short_id", "hex": pack([2, [b"abc"]]).hex(), "error": "get request must be"},
        {"name": "bound_too_long", "hex": pack([1, tid, bytes(33), None]).hex(), "error": "sync request"},
    ]
    for b in bad:
        try:
            sp.decode_request(bytes.fromhex(b["hex"]))
        except sp.SyncProtocolError as e:
            if b["error"] not in str(e):
                raise SystemExit(f"gen-vectors: sync case {b['name']}: got {e}")
            b["full_error"] = str(e)
        else:
            raise SystemExit(f"gen-vectors: sync case {b['name']} decoded")
    for f in frames:
        if f["name"].endswith("_request") or "_request_" in f["name"]:
            sp.decode_request(bytes.fromhex(f["hex"]))      # the reference decoder accepts every frame listed
    # request/response framing on the libp2p stream (node/net/host.py)
    get_req = sp.encode_get_request(ids[:1])
    summary = sp.encode_summary_response([], None)
    framing = [
        {"name": "request", "body_hex": get_req.hex(), "stream_hex": (uvarint(len(get_req)) + get_req).hex()},
        {"name": "response_ok", "body_hex": summary.hex(),
         "stream_hex": (uvarint(1 + len(summary)) + b"\x00" + summary).hex()},
        {"name": "response_error", "body_hex": b"unknown sync request kind 7".hex(),
         "stream_hex": (uvarint(1 + 27) + b"\x01" + b"unknown sync request kind 7").hex()},
        {"name": "long_request_prefix", "body_len": 300, "prefix_hex": uvarint(300).hex(),
         "note": "unsigned LEB128: 300 = 0xac 0x02"},
    ]
    return {"format": FORMAT_VERSION, "fp_tag_hex": sp.FP_TAG.hex(),
            "inputs_note": "frames[].inputs: requests: kind and fields; SUMMARY answer: rows [task_id, count, "
                           "fingerprint] and next_cursor; RANGE answer: the responder's sorted ids of the task and "
                           "the request's lo, hi; GET answer: the envelopes, by name from messages.json. Bytes in "
                           "hex (\"\" = empty), nil as null",
            "constants": {"LEAF_IDS": sp.LEAF_IDS, "FANOUT": sp.FANOUT, "MAX_SUMMARY_TASKS": sp.MAX_SUMMARY_TASKS,
                          "MAX_GET_IDS": sp.MAX_GET_IDS, "MAX_REQUEST_BYTES": sp.MAX_REQUEST_BYTES,
                          "MAX_RESPONSE_BYTES": sp.MAX_RESPONSE_BYTES},
            "fingerprints": fps, "frames": frames, "bad_requests": bad, "framing": framing}


def _hex_or_none(b: bytes | None):
    return None if b is None else b.hex()


def _sync_frames(tid: bytes, ids: list[bytes]) -> list[dict]:
    """Request and response frames, each with the inputs it is built from (PROTOCOL.md 8.2)."""
    def request(name, kind, **f):
        build = {sp.REQ_SUMMARY: lambda: sp.encode_summary_request(f["cursor"], f["limit"]),
                 sp.REQ_RANGE: lambda: sp.encode_range_request(f["task_id"], f["lo"], f["hi"]),
                 sp.REQ_GET: lambda: sp.encode_get_request(f["ids"])}[kind]
        inputs = {"kind": kind, **{k: [i.hex() for i in v] if k == "ids" else
                                   _hex_or_none(v) if v is None or isinstance(v, bytes) else v for k, v in f.items()}}
        return {"name": name, "hex": build().hex(), "inputs": inputs}

    def summary(name, rows, nxt, note=None):
        out = {"name": name, "hex": sp.encode_summary_response(rows, nxt).hex()}
        return {**out, **({"note": note} if note else {}),
                "inputs": {"rows": [[t.hex(), c, fp.hex()] for t, c, fp in rows], "next_cursor": _hex_or_none(nxt)}}

    def ranged(name, held, lo, hi, note=None, ids_field=False):
        out = {"name": name, "hex": sp.encode_range_response(held, lo, hi).hex()}
        if ids_field:                                   # the field of revision 1.0, kept for its readers
            out["ids"] = [i.hex() for i in held]
        return {**out, **({"note": note} if note else {}),
                "inputs": {"ids": [i.hex() for i in held], "lo": lo.hex(), "hi": _hex_or_none(hi)}}

    def get(name, names):
        return {"name": name, "hex": sp.encode_get_response([BOOK.msgs[n][1].raw for n in names]).hex(),
                "inputs": {"envelopes": names}}

    fp = sp.compute_fingerprint
    gid = BOOK.id("task_gold_mixed_items")
    first, second = sorted([tid, gid])
    lo, hi = ids[5][:16], ids[290][:16]
    assert sp.range_slice(ids, lo, hi) == (5, 290)
    return [
        request("summary_request_first_page", sp.REQ_SUMMARY, cursor=b"", limit=1024),
        request("summary_request_after_cursor", sp.REQ_SUMMARY, cursor=tid, limit=16),
        request("range_request_whole", sp.REQ_RANGE, task_id=tid, lo=b"", hi=None),
        request("range_request_bounded", sp.REQ_RANGE, task_id=tid, lo=ids[10], hi=ids[20]),
        request("get_request", sp.REQ_GET, ids=ids[:3]),
        summary("summary_response", [(tid, 5, fp(ids[:5]))], None),
        ranged("range_response_ids", ids[:5], b"", None, ids_field=True),
        ranged("range_response_split", ids, b"", None, ids_field=True,
               note="300 ids > LEAF_IDS (128): 16 sub-ranges of ceil(300/16) = 19 ids (the last 15)"),
        get("get_response", ["batch_a"]),
        summary("summary_response_two_rows", [(first, 1, fp([first])), (second, 300, fp(ids))], second,
                note="a full page (limit 2) with more tasks after it: next_cursor = the last task id of the page"),
        ranged("range_response_split_bounded", ids, lo, hi,
               note="bounds of 16 bytes, neither an id: 285 ids in [lo, hi) -> 16 pieces of ceil(285/16) = 18 "
                    "(the last 15); the first piece starts at the request's lo, the last ends at its hi"),
        ranged("range_response_empty", [], b"", None, note="the responder holds no id of the task"),
        get("get_response_two", ["batch_a", "batch_b"]),
    ]


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


# --------------------------------------------------------------------------- finality


def gen_finality() -> dict:
    tid = BOOK.id("task_text")
    task = BOOK.body("task_text")
    vals = {v: w for v, w in GENESIS.validators}
    leaders = [{"round": r, "leader": finality.compute_leader(tid, r, vals).hex()} for r in range(8)]
    rounds = [{"now_ms": t, "round": finality.compute_round(task.deadline, t, P), "horizon": _horizon(t)} for t in
              (task.deadline, task.deadline + P.grace_period_ms - 1, task.deadline + P.grace_period_ms,
               task.deadline + P.grace_period_ms + P.round_timeout_ms, task.deadline + P.grace_period_ms + 10 * P.round_timeout_ms + 1)]
    pre = [BOOK.msgs[f"attestation_precommit_{i}"][1] for i in range(4)]
    certs = []
    for name, signers in (("quorum_by_weight", [1, 2, 3]), ("no_quorum", [0, 1, 2]), ("all_four", [0, 1, 2, 3])):
        c = finality.Certificate(tid, 0, pre[0].body.set_root, pre[0].body.result_root, tuple(pre[i] for i in signers))
        enc_c = finality.encode_certificate(c)
        weight = sum(vals[pre[i].body.validator] for i in signers)
        certs.append({"signers": [VALIDATORS[i].name for i in signers], "weight": weight,
                      "total_weight": GENESIS.total_validator_weight, "encoded_hex": enc_c.hex(),
                      "valid": finality.verify_certificate(finality.decode_certificate(enc_c, P), vals, NET),
                      "name": name})
    quorum = [{"weight": w, "total": t, "quorum": finality.is_quorum(w, t)} for w, t in
              ((6, 10), (7, 10), (2, 3), (3, 3), (201, 300), (200, 300))]
    early, malformed = _certificates_beyond_the_rules(pre)
    return {"format": FORMAT_VERSION, "task_id": tid.hex(), "deadline": task.deadline,
            "leader_tag_hex": finality.LEADER_TAG.hex(),
            "validators": [{"account": a.hex(), "weight": w} for a, w in GENESIS.validators],
            "grace_period_ms": P.grace_period_ms, "round_timeout_ms": P.round_timeout_ms,
            "clock_skew_ms": P.clock_skew_ms, "horizon_rule": "max(round, 0) + clock_skew_ms // round_timeout_ms + 1",
            "leaders": leaders, "rounds": rounds, "quorum": quorum, "certificates": certs + [early],
            "malformed_certificates": malformed}


def _horizon(now_ms: int) -> int:
    """Highest round a node accepts from others at ``now_ms`` (PROTOCOL.md 11; tests/test_vectors.py
    checks it against the state machine's behaviour)."""
    return finality.compute_horizon(finality.compute_round(BOOK.body("task_text").deadline, now_ms, P), P)


def _certificates_beyond_the_rules(pre: list) -> tuple[dict, list[dict]]:
    """A valid certificate whose precommits are stamped before their round (verification does
    not look at created_at), and certificates that fail to decode, with the reference's reason."""
    tid = BOOK.id("task_text")
    deadline = BOOK.body("task_text").deadline
    vals = dict(GENESIS.validators)
    set_root, result_root = pre[0].body.set_root, pre[0].body.result_root

    def precommit(i, round_, root=result_root, ids=()):
        v = VALIDATORS[i]
        return sign_message(Attestation(v.pk, tid, T0 + 64_000 + i, round_, PHASE_PRECOMMIT, set_root, root, ids),
                            v.key, NET)

    start = finality.compute_round_start(deadline, 1, P)
    early = [precommit(i, 1) for i in range(4)]
    assert all(m.body.created_at < start for m in early)
    enc = finality.encode_certificate(finality.Certificate(tid, 1, set_root, result_root, tuple(early)))
    valid = {"name": "precommits_stamped_before_their_round", "signers": [v.name for v in VALIDATORS],
             "weight": sum(vals.values()), "total_weight": GENESIS.total_validator_weight, "encoded_hex": enc.hex(),
             "valid": finality.verify_certificate(finality.decode_certificate(enc, P), vals, NET),
             "round": 1, "round_start_ms": start,
             "note": "round-1 precommits stamped in round 0 (each alone would be REJECTed by 6.2): verification "
                     "does not look at created_at, so the certificate is valid"}
    order = sorted(range(4), key=lambda i: VALIDATORS[i].pk)    # a certificate lists them by validator key
    raws = [pre[i].raw for i in order]
    other = precommit(order[1], 0, root=sha256(b"labelmesh-vectors/v1/another result root"))
    bad = [
        ("version_2", pack([2, raws]), ""),
        ("version_true", pack([True, raws]), "a boolean is not the integer 1"),
        ("three_elements", pack([1, raws, 0]), ""),
        ("no_precommit", pack([1, []]), ""),
        ("envelope_not_bin", pack([1, [[1, 2]]]), ""),
        ("str_inside", pack([1, ["x"]]), "no str at all"),
        ("too_many_envelopes", pack([1, [b"\x00"] * 1001]), "1001 elements: over the array limit of 1000"),
        ("not_an_envelope", pack([1, [b"\x01\x02"]]), ""),
        ("a_prevote", pack([1, [BOOK.msgs["attestation_prevote"][1].raw]]), ""),
        ("precommit_with_ids", pack([1, [precommit(0, 0, ids=BOOK.body("attestation_prevote").batch_ids).raw]]), ""),
        ("unsorted", pack([1, raws[::-1]]), "the envelopes of all_four in descending validator order"),
        ("same_validator_twice", pack([1, [raws[0], raws[0]]]), ""),
        ("mixed_rounds", pack([1, [raws[0], early[order[1]].raw]]),
         "sorted by validator, but the first precommit is of round 0 and the second of round 1"),
        ("mixed_values", pack([1, [raws[0], other.raw]]),
         "sorted by validator, round 0 both, but two different result roots"),
    ]
    malformed = []
    for name, data, note in bad:
        try:
            finality.decode_certificate(data, P)
        except DecodeError as e:
            malformed.append({"name": name, "encoded_hex": data.hex(), "error": str(e), "note": note})
        else:
            raise SystemExit(f"gen-vectors: malformed certificate {name} decoded")
    return valid, malformed


# --------------------------------------------------------------------------- reputation


def gen_reputation() -> dict:
    from protocol import reputation as rp
    A = ACCOUNTS
    ONE = rp.ONE

    def outcome(name, deadline, domain, k, rows):
        return rp.TaskOutcome(task_id=sha256(b"labelmesh-vectors/v1/task/" + name.encode()), deadline=deadline,
                              domain=domain, n_classes=k,
                              annotators=tuple(rp.AnnotatorOutcome(A[a].pk, labels, score, eq, trust)
                                               for a, labels, score, eq, trust in rows))
    # trust (the result's per-annotator field, 10.4): ONE next to the expert, a fraction next to
    # half-reputable witnesses, a fresh key's weight among fresh keys, 0 for a lone annotator;
    # annotator-b's gain on t1 is negative (below chance), floored toward -inf
    outcomes = [
        outcome("t1", T0 - 3_600_000, "animals", 3, [("expert", 100, 95 * ONE, 0, 21867),
                                                     ("annotator-a", 100, 60 * ONE, 0, ONE * 2 // 3),
                                                     ("annotator-b", 50, 10 * ONE, 0, 32789),
                                                     ("annotator-d", 40, 30 * ONE, 2, 32789)]),
        outcome("t2", T0 - 1_800_000, "animals", 2, [("expert", 20, 19 * ONE + ONE // 3, 0, P.fresh_weight),
                                                     ("annotator-c", 20, 10 * ONE, 0, ONE)]),
        outcome("t3", T0 - 60_000, "animals", 3, [("annotator-a", 500, 500 * ONE, 0, 0)]),
        outcome("t4", T0 - 7_200_000, "", 4, [("annotator-b", 80, 70 * ONE, 1, 40000)]),
        # the outsider's gain on t5 is -327679 * 1 / ONE: floored to -5 (not -4), which makes its
        # earned reputation in "plants" (4044 - 5) // 40 = 100, not 4040 // 40 = 101
        outcome("t5", T0 - 2_400_000, "plants", 2, [("outsider", 10, 1, 0, 1)]),
        outcome("t6", T0 - 2_000_000, "plants", 2, [("outsider", 10, 5 * ONE + 4044, 0, ONE)]),
    ]
    created_at = T0
    window = [o for o in outcomes if rp.is_in_window(o, created_at, P)]
    earned = rp.compute_earned(window)
    weights = []
    for a in ("expert", "annotator-a", "annotator-b", "annotator-c", "annotator-d", "outsider"):
        for d in ("animals", ""):
            weights.append({"account": A[a].pk.hex(), "name": a, "domain": d,
                            "weight": rp.compute_weight(A[a].pk, d, earned, GENESIS.reputation, P)})
    return {"format": FORMAT_VERSION, "ONE": ONE, "PRIOR_LABELS": rp.PRIOR_LABELS,
            "EQUIVOCATION_PENALTY": rp.EQUIVOCATION_PENALTY, "reputation_lag_ms": P.reputation_lag_ms,
            "fresh_weight": P.fresh_weight, "max_weight": P.max_weight,
            "genesis_reputation": [{"account": a.hex(), "domain": d, "weight": w} for a, d, w in GENESIS.reputation],
            "outcomes": [{"task_id": o.task_id.hex(), "deadline": o.deadline, "domain": o.domain, "n_classes": o.n_classes,
                          "annotators": [{"account": x.account.hex(), "labels": x.labels, "score": x.score,
                                          "equivocations": x.equivocations, "trust": x.trust} for x in o.annotators]}
                         for o in outcomes],
            "created_at": created_at,
            "in_window": [o.task_id.hex() for o in window],
            "earned": [{"account": a.hex(), "domain": d, "earned": v} for (a, d), v in sorted(earned.items())],
            "weights": weights, "genesis_weights": _genesis_weights(earned)}


def _genesis_weights(earned: dict) -> dict:
    """Prior weights over a genesis reputation list of its own (PROTOCOL.md 12): each entry of
    domain d or "" counts once; ``double_counted`` is the literal reading of revision 1.0's
    formula, earned + genesis(a, d) + genesis(a, ""), which counts "" twice for d = ""."""
    A, ONE = ACCOUNTS, rp.ONE
    entries = [("expert", "", ONE), ("annotator-a", "animals", ONE // 2), ("annotator-a", "", 1000),
               ("annotator-b", "", 500), ("annotator-b", "", 700), ("annotator-c", "animals", P.max_weight),
               ("annotator-c", "", P.max_weight), ("annotator-d", "", 0)]
    g = make_genesis("reputation", T0, [(VALIDATORS[0].pk, 1)], reputation=[(A[n].pk, d, w) for n, d, w in entries])
    cases = []
    for name in ("expert", "annotator-a", "annotator-b", "annotator-c", "annotator-d", "outsider"):
        a = A[name].pk
        for d in ("", "animals", "plants"):
            genesis = {x: sum(w for acc, dom, w in g.reputation if acc == a and dom == x) for x in (d, "")}
            literal = earned.get((a, d), 0) + genesis[d] + genesis[""]
            cases.append({"account": a.hex(), "name": name, "domain": d,
                          "weight": rp.compute_weight(a, d, earned, g.reputation, P),
                          "double_counted": min(P.max_weight, literal) or P.fresh_weight})
    assert any(c["weight"] != c["double_counted"] for c in cases)
    return {"note": "prior weights over this genesis reputation list and the earned reputation above; each "
                    "genesis entry counts once (domain d or \"\"); double_counted is what the literal reading "
                    "earned + genesis(a, d) + genesis(a, \"\") of revision 1.0 would give, for contrast",
            "genesis_reputation": [{"account": a.hex(), "domain": d, "weight": w} for a, d, w in g.reputation],
            "cases": cases}


# --------------------------------------------------------------------------- gossip bundles


def gen_bundles() -> dict:
    from protocol.bundle import BUNDLE_TAG, MAX_BUNDLE_ENVELOPES, MAX_GOSSIP_PAYLOAD_BYTES, encode_bundle

    raw = {name: m.raw for name, (_, m) in BOOK.msgs.items()}
    a, b, c = raw["batch_a"], raw["batch_b"], raw["batch_c"]
    valid = [
        {"name": "plain_envelope", "payload_hex": a.hex(), "envelopes": ["batch_a"],
         "note": "not a bundle: the payload is the envelope itself"},
        {"name": "bundle_of_one", "payload_hex": encode_bundle([a]).hex(), "envelopes": ["batch_a"]},
        {"name": "bundle_of_three", "payload_hex": encode_bundle([a, b, c]).hex(),
         "envelopes": ["batch_a", "batch_b", "batch_c"], "note": "order is kept"},
    ]
    bad = [
        ("duplicate_envelope", enc([BUNDLE_TAG, [a, a]]), "the same envelope twice"),
        ("empty", enc([BUNDLE_TAG, []]), "no envelope"),
        ("three_elements", enc([BUNDLE_TAG, [a], 0]), "3 elements: not a bundle, and not an envelope either"),
        ("tag_not_zero", enc([1, [a]]), "an unknown tag: not a bundle, and not an envelope either"),
        ("envelope_not_bin", enc([BUNDLE_TAG, [[1, 2]]]), "an envelope must be bin, not an array"),
        ("non_canonical", bytes([0x92, 0x00, 0x91, 0xd0, 0x05]), "an int8 where a fixint is canonical"),
        ("trailing_bytes", encode_bundle([a]) + b"\x00", "bytes after the bundle"),
        ("too_many", enc([BUNDLE_TAG, [bytes([0x92, 0xc4, 1, i & 0xff, 0xc4, 1, i >> 8]) for i in range(MAX_BUNDLE_ENVELOPES + 1)]]),
         f"more than {MAX_BUNDLE_ENVELOPES} envelopes"),
    ]
    return {"format": FORMAT_VERSION, "network_id": NET.hex(), "bundle_tag": BUNDLE_TAG,
            "max_envelopes": MAX_BUNDLE_ENVELOPES, "max_payload_bytes": MAX_GOSSIP_PAYLOAD_BYTES,
            "note": "invalid: splitting the payload, or decoding one of its envelopes, fails (REJECT)",
            "valid": valid,
            "invalid": [{"name": n, "payload_hex": p.hex(), "why": w} for n, p, w in bad]}


# --------------------------------------------------------------------------- keep rule

def gen_keep() -> dict:
    """protocol/keep.py: which of a task's batches a node keeps (PROTOCOL.md 6.3). The rule
    reads only ids and (item, label) pairs, so the cases use plain ids, not signed batches."""
    from protocol.keep import AnnotatorVotes, compute_kept_batches

    def bid(name: str) -> bytes:
        return sha256(b"labelmesh-vectors/v1/keep/" + name.encode())

    def case(name: str, rows: list, note: str) -> dict:
        batches = [(bid(n), AnnotationBatch(annotator=ACCOUNTS[a].pk, task_id=bytes(32), created_at=0,
                                            labels=tuple(pairs))) for n, a, pairs in rows]
        kept = compute_kept_batches(batches)
        # the same batches arriving in the listed order, one at a time: what each displaces
        votes: dict[bytes, AnnotatorVotes] = {}
        arrivals = []
        for (n, _, _), (i, b) in zip(rows, batches):
            ok, gone = votes.setdefault(b.annotator, AnnotatorVotes()).add_batch(i, b.labels)
            arrivals.append({"batch": n, "kept": ok, "displaces": sorted(g.hex() for g in gone)})
        return {"name": name, "note": note,
                "batches": [{"name": n, "id": i.hex(), "annotator": b.annotator.hex(),
                             "labels": [list(p) for p in b.labels]} for (n, _, _), (i, b) in zip(rows, batches)],
                "kept": sorted(i.hex() for i in kept), "arrivals": arrivals}

    ids = {n: bid(n) for n in "abcdefgh"}
    order = sorted(ids, key=ids.get)  # names by ascending id, to build cases with known orders
    lo, mid, hi = order[0], order[3], order[7]
    rng = np.random.default_rng(22)
    flood = [(f"f{k}", "annotator-a", [(int(rng.integers(0, 4)), int(rng.integers(0, 3)))]) for k in range(60)]
    cases = [
        case("distinct_items_all_kept", [(n, "annotator-a", [(k, k % 3)]) for k, n in enumerate("abcdefgh")],
             "an annotator that never labels an item twice keeps every batch"),
        case("same_label_smallest_id_wins", [(hi, "annotator-a", [(0, 1)]), (mid, "annotator-a", [(0, 1)]),
                                             (lo, "annotator-a", [(0, 1)])],
             "three batches with the same label: only the smallest id is kept; each arrival displaces the last"),
        case("new_item_keeps_a_batch", [(lo, "annotator-a", [(0, 1)]), (hi, "annotator-a", [(0, 1), (5, 2)])],
             "a repeat that also labels a new item is kept (it owns the new label)"),
        case("third_label_pushes_out_the_largest", [(lo, "annotator-a", [(0, 2)]), (mid, "annotator-a", [(0, 1)]),
                                                    (hi, "annotator-a", [(0, 0)])],
             "labels 2, 1, 0 for one item: the two smallest (0, 1) count; the batch of label 2 is displaced"),
        case("annotators_are_independent", [(lo, "annotator-a", [(0, 1)]), (hi, "annotator-b", [(0, 1)])],
             "the same label from two annotators: both kept"),
        case("flood_of_one_annotator", flood, "60 one-label batches on 4 items and 3 labels: at most 2 per item kept"),
    ]
    return {"format": FORMAT_VERSION,
            "rule": "per (task, annotator): the counted labels of an item are the two smallest label indexes the "
                    "annotator gave it; the owner of a counted (item, label) is the batch with the smallest id that "
                    "carries it; a batch is kept iff it owns at least one counted label",
            "gold_rule": "of a task's valid gold reveals, the one with the smallest id is kept",
            "cases": cases}


# --------------------------------------------------------------------------- main

def gen_ledger() -> dict:
    """Ledger scenarios (PROTOCOL.md 16): genesis balances, tasks, orders, votes and releases
    -> the state every node must reach, whatever the order of arrival."""
    A, V = ACCOUNTS, VALIDATORS
    weights = {v.pk: w for v, w in zip(V, [1, 2, 3, 4])}   # total 10: a quorum needs > 20/3, i.e. 7
    tid = BOOK.id("task_text")
    task = BOOK.body("task_text")
    scenarios = []

    def order(acct, seq, amount, dest, dest_type=DEST_ACCOUNT, t=0):
        m = sign_message(Transfer(acct.pk, seq, T0 + t, amount, dest_type, dest), acct.key, NET)
        return m

    def vote(v, *orders, t=0):
        triples = tuple(sorted((o.body.sender, o.body.seq, o.compute_id(NET)) for o in orders))
        return sign_message(LedgerVote(v.pk, T0 + t, triples), v.key, NET)

    def scenario(name, note, *, balances, orders, votes, tasks=(), releases=(), params=None):
        p = P.with_overrides(params or {})
        st = compute_ledger([(acct.pk, c) for acct, c in balances], weights, p, tasks=[(t, r.pk, b) for t, r, b in tasks],
                            orders=[(m.compute_id(NET), m.body) for m in orders], votes=[m.body for m in votes],
                            releases=releases)
        assert st.check_supply()
        scenarios.append({
            "name": name, "note": note, "params": params or {},
            "balances": [[a.pk.hex(), jint(c)] for a, c in balances],
            "tasks": [{"task_id": t.hex(), "requester": r.pk.hex(), "bounty": jint(b)} for t, r, b in tasks],
            "orders": [{"id": m.compute_id(NET).hex(), "envelope_hex": m.raw.hex(), "body": body_json(m.body)}
                       for m in orders],
            "votes": [{"id": m.compute_id(NET).hex(), "envelope_hex": m.raw.hex(), "body": body_json(m.body)}
                      for m in votes],
            "releases": [{"task_id": r.task_id.hex(), "requester": r.requester.hex(), "time": jint(r.time),
                          "rewards": [[a.hex(), jint(c)] for a, c in r.rewards], "fee": jint(r.fee)}
                         for r in releases],
            "expected": {
                "balances": [[a.hex(), jint(c)] for a, c in sorted(st.balance.items()) if c],
                "escrow": [[t.hex(), jint(c)] for t, c in sorted(st.escrow.items()) if c],
                "burned": jint(st.burned), "supply": jint(st.supply),
                "next_seq": [[a.hex(), n] for a, n in sorted(st.next_seq.items())],
                "applied": sorted(o.hex() for o in st.applied),
                "certified_not_applied": sorted(o.hex() for s, o in st.certified.items() if o not in st.applied),
                "released": sorted(t.hex() for t in st.released),
                "funded": sorted(t.hex() for t, _, _ in tasks if st.is_funded(t)),
                "evidence": [[v.hex(), s.hex(), n, [i.hex() for i in ids]] for v, s, n, ids in st.get_evidence()],
            }})

    req, a, b = A["requester"], A["annotator-a"], A["annotator-b"]
    pay = order(req, 0, 500, a.pk)
    scenario("transfer_certified", "validators 3+4 = 7 of 10 > 2/3: applied", balances=[(req, 1000)],
             orders=[pay], votes=[vote(V[2], pay), vote(V[3], pay)])
    scenario("transfer_no_quorum", "validators 2+4 = 6 of 10: not certified, nothing moves",
             balances=[(req, 1000)], orders=[pay], votes=[vote(V[1], pay), vote(V[3], pay)])
    x, y = order(req, 0, 800, a.pk), order(req, 0, 800, b.pk)
    scenario("double_spend_one_wins", "two orders for slot 0: x gets 7 of 10, y 3 (validator-2 alone) -- "
             "only x takes effect", balances=[(req, 1000)], orders=[x, y],
             votes=[vote(V[2], y), vote(V[0], x), vote(V[1], x), vote(V[3], x)])
    chain_b = order(a, 0, 300, b.pk)
    scenario("waits_for_credit", "annotator-a's order is certified but a holds nothing until the requester's "
             "transfer to it is applied", balances=[(req, 1000)], orders=[chain_b, pay],
             votes=[vote(v, chain_b, pay) for v in V[2:]])
    scenario("certified_but_uncovered", "annotator-a pays 300 with no credits at all: certified (by a faulty "
             "quorum), never applied", balances=[(req, 1000)], orders=[chain_b], votes=[vote(v, chain_b) for v in V])
    esc = order(req, 0, task.bounty, tid, DEST_ESCROW)
    rel = compute_release(tid, req.pk, task.deadline, task.bounty, [(a.pk, 600), (b.pk, 250)], P)
    scenario("escrow_and_release", "the bounty escrowed, the task certified: rewards paid, 150 refunded",
             balances=[(req, 5000)], tasks=[(tid, req, task.bounty)], orders=[esc],
             votes=[vote(v, esc) for v in V[2:]], releases=[rel])
    scenario("release_waits_for_escrow", "a release without a certified escrow pays nothing",
             balances=[(req, 5000)], tasks=[(tid, req, task.bounty)], orders=[esc], votes=[vote(V[3], esc)],
             releases=[rel])
    fee_p = {"ledger_fee_bps": 250, "ledger_fee_to": 1}
    pf = P.with_overrides(fee_p)
    rel_fee = compute_release(tid, req.pk, task.deadline, task.bounty, [(a.pk, 500), (b.pk, 400)], pf)
    scenario("fee_to_validators", "2.5% of 1000 = 25 split 2/5/7/10 by weight, 1 burned", params=fee_p,
             balances=[(req, 5000)], tasks=[(tid, req, task.bounty)], orders=[esc],
             votes=[vote(v, esc) for v in V[2:]], releases=[rel_fee])
    scenario("validator_equivocation", "validator-3 signs both orders of slot 0 (evidence); x still certified "
             "by 3+4", balances=[(req, 1000)], orders=[x, y],
             votes=[vote(V[3], x), vote(V[3], y), vote(V[2], x)])
    return {"format": FORMAT_VERSION, "genesis": "vectors", "network_id": NET.hex(),
            "validators": [[v.pk.hex(), w] for v, w in zip(V, [1, 2, 3, 4])], "scenarios": scenarios}


def gen_replica() -> dict:
    """PROTOCOL.md 7.2 (domain topics) and 8.4 (CERTIFIED): a certificate and the result
    bytes R it certifies, as a node that does not hold the batches checks them."""
    from protocol import replica

    domains = ["", "animals", "radiology", "médecine/ü", "x" * 256]
    topics = [{"domain": d, "tag": replica.domain_tag(d), "topic": replica.domain_topic(NET, d)} for d in domains]
    assert topics[1]["topic"] == f"/labelmesh/{NET.hex()[:16]}/domain/{topics[1]['tag']}/1"
    tid = BOOK.id("task_text")
    res = compute_task_result(tid, BOOK.body("task_text"), {BOOK.id(n): BOOK.body(n) for n in
                              ("batch_a", "batch_b", "batch_c")}, None, lambda a: P.fresh_weight, P)
    r_bytes = replica.encode_result(res)
    assert replica.compute_result_root(r_bytes) == res.result_root
    order = sorted((1, 2, 3), key=lambda i: VALIDATORS[i].pk)  # finality.json's quorum_by_weight signers
    pre = [sign_message(Attestation(VALIDATORS[i].pk, tid, T0 + 70_000 + i, 0, PHASE_PRECOMMIT, res.set_root,
                                    res.result_root, ()), VALIDATORS[i].key, NET) for i in order]
    cert = finality.encode_certificate(finality.Certificate(tid, 0, res.set_root, res.result_root, tuple(pre)))
    vals = dict(GENESIS.validators)
    forged = bytearray(r_bytes)
    forged[-1] ^= 1  # the fee field
    other = BOOK.id("task_gold_mixed_items")
    cases = []
    for name, task_id, c, r, note in (
            ("valid", tid, cert, r_bytes, "validators 1, 2, 3 (more than 2/3 of the weight) precommitted "
                                          "(set_root, result_root), as in finality.json's quorum_by_weight"),
            ("result_changed", tid, cert, bytes(forged), "one byte of R changed: it no longer hashes to the root"),
            ("another_task", other, cert, r_bytes, "the certificate and R of task_text offered for another task"),
            ("no_quorum", tid, finality.encode_certificate(finality.Certificate(tid, 0, res.set_root, res.result_root,
                                                                                tuple(pre[:2]))), r_bytes,
             "two of those validators: not more than 2/3 of the weight")):
        try:
            replica.check_certified(task_id, c, r, vals, NET, P)
            ok, err = True, None
        except DecodeError as e:
            ok, err = False, str(e)
        cases.append({"name": name, "task_id": task_id.hex(), "certificate_hex": c.hex(), "result_hex": r.hex(),
                      "valid": ok, **({"error": err} if err else {}), "note": note})
    assert [c["valid"] for c in cases] == [True, False, False, False], [(c["name"], c.get("error")) for c in cases]
    req = sp.encode_certified_request([tid, other])
    assert sp.decode_request(req).ids == (tid, other)
    resp = sp.encode_certified_response([(tid, cert, r_bytes)])
    assert sp.decode_certified_response(resp) == [(tid, cert, r_bytes)]
    bad = {"name": "certified_too_many", "hex": pack([3, [tid] * (sp.MAX_CERTIFIED_TASKS + 1)]).hex(),
           "error": "certified request must be"}
    try:
        sp.decode_request(bytes.fromhex(bad["hex"]))
        raise SystemExit("gen-vectors: a CERTIFIED request over the limit decoded")
    except sp.SyncProtocolError as e:
        bad["full_error"] = str(e)
    return {"format": FORMAT_VERSION, "network_id": NET.hex(), "domain_topic_tag_hex": replica.DOMAIN_TOPIC_TAG.hex(),
            "domain_topics": topics, "result_root_tag_hex": RESULT_ROOT_TAG.hex(),
            "result": {"task_id": tid.hex(), "batches": ["batch_a", "batch_b", "batch_c"], "canonical_hex": r_bytes.hex(),
                       "set_root": res.set_root.hex(), "result_root": res.result_root.hex(),
                       "note": "R = the canonical result of tally.json's fresh_only case"},
            "certified_checks": cases,
            "frames": [{"name": "certified_request", "hex": req.hex(),
                        "inputs": {"kind": sp.REQ_CERTIFIED, "ids": [tid.hex(), other.hex()]}},
                       {"name": "certified_response", "hex": resp.hex(),
                        "inputs": {"rows": [[tid.hex(), cert.hex(), r_bytes.hex()]]}}],
            "bad_requests": [bad],
            "constants": {"MAX_CERTIFIED_TASKS": sp.MAX_CERTIFIED_TASKS, "MAX_CERTIFIED_BIN": sp.MAX_CERTIFIED_BIN}}


GENERATORS = {
    "codec.json": gen_codec,
    "genesis.json": gen_genesis,
    "messages.json": gen_messages,
    "invalid.json": gen_invalid,
    "roots.json": gen_roots,
    "aggregate.json": gen_aggregate,
    "tally.json": gen_tally,
    "sync.json": gen_sync,
    "finality.json": gen_finality,
    "reputation.json": gen_reputation,
    "bundles.json": gen_bundles,
    "ledger.json": gen_ledger,
    "keep.json": gen_keep,
    "replica.json": gen_replica,
}


def render_all() -> dict[str, str]:
    out = {}
    for fname, fn in GENERATORS.items():
        doc = {"generated_by": "scripts/gen-vectors", "file": fname, **fn()}
        out[fname] = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gen-vectors",
                                 description="Regenerate the labelmesh test vectors from the reference code.")
    ap.add_argument("--out", default=str(ROOT / "tests" / "vectors"), help="output directory")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    args = ap.parse_args(argv)
    out = Path(args.out)
    files = render_all()
    changed = [f for f, text in files.items()
               if not (out / f).exists() or (out / f).read_text(encoding="utf-8") != text]
    if args.check:
        for f in changed:
            print(f"would change: {out / f}")
        if not changed:
            print(f"{len(files)} vector files up to date in {out}")
        return 1 if changed else 0
    out.mkdir(parents=True, exist_ok=True)
    for f, text in files.items():
        (out / f).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files to {out} ({len(changed)} changed: {', '.join(changed) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

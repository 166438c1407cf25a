"""Replay tests/vectors/*.json against the reference code.

The vectors are written by ``scripts/gen-vectors`` (``devtools/vectors.py``) (fixed seeds, no clock). Every
field is checked here by recomputing it with the protocol code, so a change to the
wire format, the signed bytes, the ids, validation outcomes, the aggregation, the
tally, the sync frames or the finality rules fails a test below; if the change is
intended, run ``scripts/gen-vectors`` and commit the diff (other implementations
then see exactly what changed). PROTOCOL.md describes every vector file.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nacl.signing
import numpy as np
import pytest

from protocol import aggregate, finality, sync as sp
from protocol.codec import pack, sha256
from protocol.errors import DecodeError
from protocol.genesis import genesis_from_json
from protocol.messages import (
    DOMAIN_TAGS, GOLD_COMMIT_TAG, KIND_NAMES, SET_ROOT_TAG, AnnotationBatch, Attestation, GoldReveal, Item,
    LabelSchema, LedgerVote, Outcome, TaskAnnouncement, Transfer, check_message, compute_gold_commitment, compute_set_root,
    decode_message, sign_message, validate_basic, validate_in_context, verify_signature,
)
from protocol.params import Params
from protocol.tally import RESULT_ROOT_TAG, compute_task_result

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
FILES = ["codec.json", "genesis.json", "messages.json", "invalid.json", "roots.json", "aggregate.json", "tally.json",
         "sync.json", "finality.json", "reputation.json", "bundles.json", "ledger.json",
         "keep.json", "replica.json"]


def load(name: str) -> dict:
    doc = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    assert doc["format"] == 1 and doc["file"] == name
    return doc


def jint(v) -> int:
    """Integers above 2^53 are stored as decimal strings (JSON readers lose them otherwise)."""
    return int(v) if isinstance(v, str) else v


GEN = load("genesis.json")
GENESIS = genesis_from_json(json.dumps(GEN["cases"][0]["json"]))
NET = GENESIS.network_id
P = GENESIS.params
MSGS = {m["name"]: m for m in load("messages.json")["messages"]}


def raw_of(name: str) -> bytes:
    return bytes.fromhex(MSGS[name]["envelope_hex"])


def body_of(name: str):
    return decode_message(raw_of(name), P).body


def id_of(name: str) -> bytes:
    return bytes.fromhex(MSGS[name]["id"])


def body_from_json(kind: int, b: dict):
    h = bytes.fromhex
    pairs = lambda xs: tuple((int(i), int(l)) for i, l in xs)  # noqa: E731
    if kind == 1:
        def item(x):
            if x["type"] == 0:
                return Item(0, text=x["text"])
            if x["type"] == 1:
                return Item(1, payload=h(x["payload"]), media_type=x["media_type"])
            return Item(2, digest=h(x["sha256"]), size=jint(x["size"]), media_type=x["media_type"])
        s = b["schema"]
        return TaskAnnouncement(
            requester=h(b["requester"]), nonce=jint(b["nonce"]), created_at=jint(b["created_at"]),
            deadline=jint(b["deadline"]), title=b["title"], schema=LabelSchema(s["type"], s["domain"], tuple(s["labels"])),
            items=tuple(item(x) for x in b["items"]), redundancy=b["redundancy"], bounty=jint(b["bounty"]),
            gold_commitment=None if b["gold_commitment"] is None else h(b["gold_commitment"]),
            reward_rule=b["reward_rule"])
    if kind == 2:
        return AnnotationBatch(h(b["annotator"]), h(b["task_id"]), jint(b["created_at"]), pairs(b["labels"]))
    if kind == 3:
        return GoldReveal(h(b["requester"]), h(b["task_id"]), jint(b["created_at"]), h(b["salt"]), pairs(b["answers"]))
    if kind == 5:
        return Transfer(h(b["sender"]), jint(b["seq"]), jint(b["created_at"]), jint(b["amount"]), b["dest_type"],
                        h(b["dest"]))
    if kind == 6:
        return LedgerVote(h(b["validator"]), jint(b["created_at"]),
                          tuple((h(s), jint(n), h(o)) for s, n, o in b["votes"]))
    return Attestation(h(b["validator"]), h(b["task_id"]), jint(b["created_at"]), b["round"], b["phase"],
                       h(b["set_root"]), h(b["result_root"]), tuple(h(i) for i in b["batch_ids"]))


# --------------------------------------------------------------------------- the generator


def test_committed_vectors_are_what_the_generator_writes(tmp_path):
    """The committed files are current: regenerating from the code changes nothing."""
    r = subprocess.run([sys.executable, "-m", "devtools.vectors", "--out", str(tmp_path)],  # scripts/gen-vectors
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    stale = [f for f in FILES if (tmp_path / f).read_text(encoding="utf-8") != (VECTORS / f).read_text(encoding="utf-8")]
    assert not stale, (f"tests/vectors/{stale} differ from what the code produces now: a wire-format or "
                       f"consensus-rule change. If intended, run scripts/gen-vectors and commit the diff.")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)


# --------------------------------------------------------------------------- genesis


@pytest.mark.parametrize("case", GEN["cases"], ids=lambda c: c["name"])
def test_genesis_network_id(case):
    g = genesis_from_json(json.dumps(case["json"]))
    assert g.canonical_bytes().hex() == case["canonical_hex"]
    assert hashlib.sha256(bytes.fromhex(GEN["genesis_tag_hex"]) + g.canonical_bytes()).hexdigest() == case["network_id"]
    assert g.network_id.hex() == case["network_id"]
    from node.core.node import topic_for
    for kind, name in KIND_NAMES.items():
        assert topic_for(g.network_id, kind) == case["topics"][name]
    assert {f: getattr(g.params, f) for f in case["params"]} == case["params"]


CODEC = load("codec.json")


@pytest.mark.parametrize("case", CODEC["cases"], ids=lambda c: c["name"])
def test_codec_decoder_boundaries(case):
    """Section 2 alone: depth 8 is allowed and 9 refused; every limit at and one past its boundary."""
    from protocol.codec import MAX_DEPTH, unpack
    assert CODEC["max_depth"] == MAX_DEPTH
    data = bytes.fromhex(case["hex"])
    if case["ok"]:
        assert pack(unpack(data, **CODEC["limits"])) == data
    else:
        with pytest.raises(DecodeError) as e:
            unpack(data, **CODEC["limits"])
        assert str(e.value) == case["error"]


def test_codec_depth_vectors_are_what_they_say():
    """depth_8 is 9 nested arrays, depth_9 is 10 (so the boundary is where the text puts it)."""
    cases = {c["name"]: bytes.fromhex(c["hex"]) for c in CODEC["cases"]}
    assert cases["depth_8"] == b"\x91" * 8 + b"\x90" and cases["depth_9"] == b"\x91" * 9 + b"\x90"


@pytest.mark.parametrize("case", GEN["invalid"], ids=lambda c: c["name"])
def test_invalid_genesis_is_refused(case):
    from protocol.errors import GenesisError
    with pytest.raises(GenesisError) as e:
        genesis_from_json(json.dumps(case["json"]))
    assert str(e.value) == case["error"]


def test_genesis_name_limit_counts_code_points():
    """The 64-character name of the vectors is 192 UTF-8 bytes and 96 UTF-16 code units."""
    name = next(c for c in GEN["cases"] if c["name"] == "name_64_code_points")["json"]["name"]
    assert len(name) == 64 and len(name.encode("utf-8")) > 64 and len(name.encode("utf-16-le")) // 2 > 64
    assert len(next(c for c in GEN["invalid"] if c["name"] == "name_65_code_points")["json"]["name"]) == 65


def test_vector_accounts_derive_from_their_seeds():
    for a in GEN["accounts"]:
        assert bytes(nacl.signing.SigningKey(bytes.fromhex(a["seed"])).verify_key).hex() == a["public_key"]


# --------------------------------------------------------------------------- valid messages


@pytest.mark.parametrize("name", list(MSGS))
def test_valid_message_bytes_signature_and_id(name):
    v = MSGS[name]
    key = nacl.signing.SigningKey(bytes.fromhex(v["signer"]["seed"]))
    assert bytes(key.verify_key).hex() == v["signer"]["public_key"]
    body = body_from_json(v["kind"], v["body"])
    assert body.kind == v["kind"] and KIND_NAMES[body.kind] == v["kind_name"]
    m = sign_message(body, key, NET)                     # ed25519 is deterministic: same bytes, same signature
    assert m.body_bytes.hex() == v["body_hex"]
    assert DOMAIN_TAGS[body.kind].hex() == v["domain_tag_hex"]
    assert m.signed_bytes(NET).hex() == v["signed_bytes_hex"] == v["domain_tag_hex"] + v["network_id"] + v["body_hex"]
    assert m.signature.hex() == v["signature_hex"]
    assert m.raw.hex() == v["envelope_hex"]
    assert m.compute_id(NET).hex() == v["id"] == hashlib.sha256(bytes.fromhex(v["signed_bytes_hex"])).hexdigest()
    d = decode_message(bytes.fromhex(v["envelope_hex"]), P)
    assert d.body == body and verify_signature(d, NET)
    assert validate_basic(d, P).ok
    from node.core.node import topic_for
    assert topic_for(NET, body.kind) == v["topic"]


def test_messages_cover_every_kind():
    assert {m["kind"] for m in MSGS.values()} == set(KIND_NAMES)


# --------------------------------------------------------------------------- invalid messages

INVALID = load("invalid.json")
TASKS = {name: (bytes.fromhex(tid), body_of(name)) for name, tid in INVALID["task_names"].items()}


class _Ctx:
    def __init__(self, names):
        self.tasks = {TASKS[n][0]: TASKS[n][1] for n in names}

    def get_task(self, task_id):
        return self.tasks.get(task_id)

    def validator_weight(self, account):
        return GENESIS.validator_weight(account)


def _stage(raw: bytes, ctx, now_ms: int) -> str:
    try:
        msg = decode_message(raw, P)
    except DecodeError:
        return "decode"
    if not validate_basic(msg, P).ok:
        return "basic"
    if not verify_signature(msg, NET):
        return "signature"
    return "accept" if validate_in_context(msg, ctx, now_ms, P).ok else "context"


@pytest.mark.parametrize("case", INVALID["cases"], ids=lambda c: c["name"])
def test_validation_outcome(case):
    raw = bytes.fromhex(case["envelope_hex"])
    ctx = _Ctx(case["context"]["tasks"])
    now = case["context"]["now_ms"]
    v, _ = check_message(raw, ctx, NET, now, P)
    assert v.outcome is Outcome[case["expected"]], v.reason
    assert case["reason"] in v.reason and v.reason == case["full_reason"]
    assert _stage(raw, ctx, now) == case["stage"]


@pytest.mark.parametrize("case", INVALID["param_cases"]["cases"], ids=lambda c: c["name"])
def test_validation_outcome_under_another_genesis(case):
    """Section 5.6 vs 5.2 under a genesis whose max_inline_item_bytes (16) is the tighter limit."""
    g = genesis_from_json(json.dumps(next(c for c in GEN["cases"]
                                          if c["name"] == INVALID["param_cases"]["genesis"])["json"]))

    class Ctx:
        def get_task(self, task_id):
            return None

        def validator_weight(self, account):
            return g.validator_weight(account)

    raw = bytes.fromhex(case["envelope_hex"])
    v, _ = check_message(raw, Ctx(), g.network_id, case["context"]["now_ms"], g.params)
    assert v.outcome is Outcome[case["expected"]] and v.reason == case["full_reason"]
    try:
        msg = decode_message(raw, g.params)
    except DecodeError:
        stage = "decode"
    else:
        stage = "basic" if not validate_basic(msg, g.params).ok else "accept"
    assert stage == case["stage"]


def test_invalid_vectors_cover_every_stage_and_outcome():
    assert {c["stage"] for c in INVALID["cases"]} == set(INVALID["stages"])
    assert {c["expected"] for c in INVALID["cases"]} == {"ACCEPT", "REJECT", "IGNORE"}


def test_task_ids_in_invalid_json_match_messages():
    for name, tid in INVALID["task_names"].items():
        assert MSGS[name]["id"] == tid


# --------------------------------------------------------------------------- roots


def test_set_roots_and_gold_commitments():
    doc = load("roots.json")
    assert SET_ROOT_TAG.hex() == doc["set_root_tag_hex"] and GOLD_COMMIT_TAG.hex() == doc["gold_commit_tag_hex"]
    assert RESULT_ROOT_TAG.hex() == doc["result_root_tag_hex"]
    for c in doc["set_roots"]:
        tid = bytes.fromhex(c["task_id"])
        ids = [bytes.fromhex(i) for i in c["batch_ids"]]
        assert compute_set_root(tid, ids).hex() == c["set_root"]
        want = hashlib.sha256(SET_ROOT_TAG + tid + b"".join(sorted(ids))).hexdigest()
        assert want == c["set_root"]
    for c in doc["gold_commitments"]:
        salt = bytes.fromhex(c["salt"])
        answers = [tuple(p) for p in c["answers"]]
        assert pack([x for p in sorted(answers) for x in p]).hex() == c["answers_msgpack_hex"]
        assert compute_gold_commitment(salt, answers).hex() == c["commitment"]
        assert sha256(GOLD_COMMIT_TAG + salt + bytes.fromhex(c["answers_msgpack_hex"])).hex() == c["commitment"]


# --------------------------------------------------------------------------- aggregation

AGG = load("aggregate.json")


def test_aggregate_constants():
    c = AGG["constants"]
    assert (c["ONE"], c["WEIGHT_ONE"], c["PROB_ONE"], c["LOG_ONE"]) == (aggregate.ONE, aggregate.WEIGHT_ONE,
                                                                        aggregate.PROB_ONE, aggregate.LOG_ONE)
    assert (c["CONFUSION_PRIOR"], c["CLASS_PRIOR"], c["CONSENSUS_ITERATIONS"], c["LOG2E_Q32"]) == (
        aggregate.CONFUSION_PRIOR, aggregate.CLASS_PRIOR, aggregate.CONSENSUS_ITERATIONS, aggregate.LOG2E_Q32)
    assert (c["GOLD_FOLDS"], c["GOLD_SELECT_MARGIN"], c["GOLD_MODELS"]) == (
        aggregate.GOLD_FOLDS, aggregate.GOLD_SELECT_MARGIN,
        [[int(m.use_map), m.pooled_votes] for m in aggregate.GOLD_MODELS])
    for table, name in ((aggregate._LOG2_TABLE, "log2_table_sha256"), (aggregate._EXP2_HI, "exp2_hi_table_sha256"),
                        (aggregate._EXP2_LO, "exp2_lo_table_sha256")):
        assert hashlib.sha256(table.astype("<i8").tobytes()).hexdigest() == c[name]


def test_aggregate_encoding_layout():
    """Appendix A.8: the field order of encode_result, read back from the encoding of every case."""
    assert AGG["layout"] == ["version", "ONE", "label", "confidence", "agreement", "annotator_accuracy", "alpha"]
    for case in AGG["cases"]:
        for est in ("consensus", "plurality"):
            r = case[est]
            fields = aggregate.msgpack.unpackb(bytes.fromhex(r["encoded_hex"]))
            assert dict(zip(AGG["layout"], fields)) == {"version": 1, "ONE": aggregate.ONE, **{
                k: r[k] for k in AGG["layout"][2:]}}


@pytest.mark.parametrize("case", AGG["cases"], ids=lambda c: c["name"])
def test_aggregate_outputs(case):
    i = case["input"]
    votes = i["votes"]
    inp = aggregate.AggregateInput(
        n_items=i["n_items"], n_classes=i["n_classes"], n_annotators=i["n_annotators"],
        item=np.array([v[0] for v in votes], dtype=np.int64), annotator=np.array([v[1] for v in votes], dtype=np.int64),
        label=np.array([v[2] for v in votes], dtype=np.int64), prior_weight=np.array(i["prior_weight"], dtype=np.int64),
        gold=None if i["gold"] is None else {k: v for k, v in i["gold"]})
    for est, fn in (("consensus", aggregate.compute_consensus), ("plurality", aggregate.compute_weighted_plurality)):
        r = fn(inp)
        want = case[est]
        assert [int(x) for x in r.label] == want["label"], est
        assert [int(x) for x in r.confidence] == want["confidence"], est
        assert [int(x) for x in r.agreement] == want["agreement"], est
        assert [int(x) for x in r.annotator_accuracy] == want["annotator_accuracy"], est
        assert int(r.alpha) == want["alpha"], est
        assert aggregate.encode_result(r).hex() == want["encoded_hex"], est
    ei, ea = aggregate.compute_equivocations(inp)
    assert [[int(x), int(y)] for x, y in zip(ei, ea)] == case["equivocations"]


# --------------------------------------------------------------------------- tally

TALLY = load("tally.json")


@pytest.mark.parametrize("case", TALLY["cases"], ids=lambda c: c["name"])
def test_tally_result_root(case):
    assert [MSGS[n]["id"] for n in case["batches"]] == case["batch_ids"]
    task = body_of(case["task"])
    assert MSGS[case["task"]]["id"] == case["task_id"]
    batches = {id_of(n): body_of(n) for n in case["batches"]}
    gold = body_of(case["gold"]) if case["gold"] else None
    weights = {bytes.fromhex(w["account"]): w["weight"] for w in case["weights"]}
    assert case["fresh_weight"] == P.fresh_weight
    gold_id = id_of(case["gold"]) if case["gold"] else None
    params = Params().with_overrides({**dict(GENESIS.param_overrides), **case.get("params", {})})
    res = compute_task_result(bytes.fromhex(case["task_id"]), task, batches, gold,
                              lambda a: weights.get(a, P.fresh_weight), params, gold_id=gold_id)
    want = case["result"]
    assert res.set_root.hex() == want["set_root"]
    assert list(res.label) == want["label"] and list(res.confidence) == want["confidence"]
    assert list(res.agreement) == want["agreement"] and list(res.votes) == want["votes"]
    assert [{"account": a.account.hex(), "labels": a.labels, "equivocations": a.equivocations,
             "accuracy": a.accuracy, "score": a.score, "reward": a.reward, "trust": a.trust}
            for a in res.annotators] == want["annotators"]
    pinned = [bytes.fromhex(i) for i in case["batch_ids"]] + ([gold_id] if gold_id else [])
    assert compute_set_root(bytes.fromhex(case["task_id"]), pinned).hex() == want["set_root"]
    assert [[a.hex(), i] for a, i in res.equivocations] == want["equivocations"]
    assert (res.alpha, res.refund, res.gold_items, res.fee) == (want["alpha"], want["refund"], want["gold_items"],
                                                                want["fee"])
    assert want["fee"] == task.bounty * params.ledger_fee_bps // 10_000
    assert sum(a["reward"] for a in want["annotators"]) + want["refund"] + want["fee"] == task.bounty
    assert pack(res.canonical()).hex() == want["canonical_hex"]
    assert res.result_root.hex() == want["result_root"]
    assert sha256(RESULT_ROOT_TAG + bytes.fromhex(want["canonical_hex"])).hex() == want["result_root"]


def test_tally_annotator_without_counted_vote_has_a_row_and_sets_the_scale():
    """10.1/10.2/10.5: an annotator whose every vote is an equivocation keeps a row, and its
    weight still scales the others (leaving it out of the scale gives another result)."""
    case = next(c for c in TALLY["cases"] if c["name"] == "all_votes_equivocated")
    expert = MSGS["batch_expert"]["signer"]["public_key"]
    rows = {a["account"]: a for a in case["result"]["annotators"]}
    assert {k: rows[expert][k] for k in ("labels", "accuracy", "score", "reward")} == {
        "labels": 0, "accuracy": 0, "score": 0, "reward": 0}
    assert rows[expert]["equivocations"] == len(body_of("batch_expert").labels)
    task = body_of(case["task"])
    batches = {id_of(n): body_of(n) for n in case["batches"] if n not in ("batch_expert", "batch_expert_conflict")}
    without = compute_task_result(bytes.fromhex(case["task_id"]), task, batches, None, lambda a: P.fresh_weight, P)
    assert list(without.confidence) != case["result"]["confidence"]


# --------------------------------------------------------------------------- sync

SYNC = load("sync.json")


def test_sync_fingerprints():
    assert sp.FP_TAG.hex() == SYNC["fp_tag_hex"]
    for c in SYNC["fingerprints"]:
        assert sp.compute_fingerprint([bytes.fromhex(i) for i in c["ids"]]).hex() == c["fingerprint"]
    k = SYNC["constants"]
    assert (k["LEAF_IDS"], k["FANOUT"], k["MAX_SUMMARY_TASKS"], k["MAX_GET_IDS"], k["MAX_REQUEST_BYTES"],
            k["MAX_RESPONSE_BYTES"]) == (sp.LEAF_IDS, sp.FANOUT, sp.MAX_SUMMARY_TASKS, sp.MAX_GET_IDS,
                                         sp.MAX_REQUEST_BYTES, sp.MAX_RESPONSE_BYTES)


def test_sync_frames():
    frames = {f["name"]: f for f in SYNC["frames"]}
    for name, f in frames.items():
        data = bytes.fromhex(f["hex"])
        if "request" in name:
            r = sp.decode_request(data)
            again = {sp.REQ_SUMMARY: lambda: sp.encode_summary_request(r.cursor, r.limit),
                     sp.REQ_RANGE: lambda: sp.encode_range_request(r.task_id, r.lo, r.hi),
                     sp.REQ_GET: lambda: sp.encode_get_request(r.ids)}[r.kind]()
            assert again == data, name
    rows, nxt = sp.decode_summary_response(bytes.fromhex(frames["summary_response"]["hex"]))
    assert sp.encode_summary_response(rows, nxt).hex() == frames["summary_response"]["hex"]
    for name in ("range_response_ids", "range_response_split"):
        ids = [bytes.fromhex(i) for i in frames[name]["ids"]]
        assert sp.encode_range_response(ids, b"", None).hex() == frames[name]["hex"]
        mode, payload = sp.decode_range_response(bytes.fromhex(frames[name]["hex"]))
        assert mode == ("ids" if name.endswith("ids") else "split")
        if mode == "split":
            assert len(payload) == sp.FANOUT and sum(p[2] for p in payload) == len(ids)
            assert sp.compare_split(ids, payload) == []
    got = sp.decode_get_response(bytes.fromhex(frames["get_response"]["hex"]), P.max_message_bytes)
    assert got == [raw_of("batch_a")]


def _bound(x):
    return None if x is None else bytes.fromhex(x)


@pytest.mark.parametrize("frame", SYNC["frames"], ids=lambda f: f["name"])
def test_sync_frame_rebuilt_from_its_inputs(frame):
    i, name = frame["inputs"], frame["name"]
    if "request" in name:
        built = {sp.REQ_SUMMARY: lambda: sp.encode_summary_request(_bound(i["cursor"]), i["limit"]),
                 sp.REQ_RANGE: lambda: sp.encode_range_request(bytes.fromhex(i["task_id"]), _bound(i["lo"]),
                                                               _bound(i["hi"])),
                 sp.REQ_GET: lambda: sp.encode_get_request([bytes.fromhex(x) for x in i["ids"]])}[i["kind"]]()
        assert sp.decode_request(built).kind == i["kind"]
    elif name.startswith("summary_response"):
        built = sp.encode_summary_response([(bytes.fromhex(t), c, bytes.fromhex(fp)) for t, c, fp in i["rows"]],
                                           _bound(i["next_cursor"]))
        assert sp.decode_summary_response(built) == ([(bytes.fromhex(t), c, bytes.fromhex(fp))
                                                      for t, c, fp in i["rows"]], _bound(i["next_cursor"]))
    elif name.startswith("range_response"):
        ids = [bytes.fromhex(x) for x in i["ids"]]
        built = sp.encode_range_response(ids, _bound(i["lo"]), _bound(i["hi"]))
        mode, parts = sp.decode_range_response(built)
        if mode == "split":
            assert (parts[0][0], parts[-1][1]) == (_bound(i["lo"]), _bound(i["hi"]))
            a, b = sp.range_slice(ids, _bound(i["lo"]), _bound(i["hi"]))
            assert sum(p[2] for p in parts) == b - a and sp.compare_split(ids, parts) == []
    else:
        built = sp.encode_get_response([raw_of(n) for n in i["envelopes"]])
        assert sp.decode_get_response(built, P.max_message_bytes) == [raw_of(n) for n in i["envelopes"]]
    assert built.hex() == frame["hex"]


@pytest.mark.parametrize("case", SYNC["bad_requests"], ids=lambda c: c["name"])
def test_sync_bad_requests(case):
    with pytest.raises(sp.SyncProtocolError) as e:
        sp.decode_request(bytes.fromhex(case["hex"]))
    assert case["error"] in str(e.value) and str(e.value) == case["full_error"]


def test_stream_framing():
    from libp2p.utils.varint import encode_uvarint   # what node/net/host.py frames with
    for f in SYNC["framing"]:
        if "body_len" in f:
            assert encode_uvarint(f["body_len"]).hex() == f["prefix_hex"]
            continue
        body = bytes.fromhex(f["body_hex"])
        status = {"request": b"", "response_ok": b"\x00", "response_error": b"\x01"}[f["name"]]
        assert (encode_uvarint(len(status + body)) + status + body).hex() == f["stream_hex"]


# --------------------------------------------------------------------------- finality

FIN = load("finality.json")


def test_finality_leaders_rounds_quorum():
    vals = {bytes.fromhex(v["account"]): v["weight"] for v in FIN["validators"]}
    assert vals == dict(GENESIS.validators)
    assert finality.LEADER_TAG.hex() == FIN["leader_tag_hex"]
    tid = bytes.fromhex(FIN["task_id"])
    for c in FIN["leaders"]:
        assert finality.compute_leader(tid, c["round"], vals).hex() == c["leader"]
    for c in FIN["rounds"]:
        assert finality.compute_round(FIN["deadline"], c["now_ms"], P) == c["round"]
    for c in FIN["quorum"]:
        assert finality.is_quorum(c["weight"], c["total"]) is c["quorum"]


def test_finality_round_horizon():
    """Section 11: round -1 before round 0; a node accepts rounds up to max(round, 0) + skew // T + 1
    (an attestation at the horizon is recorded, one round past it is IGNOREd)."""
    vals = dict(GENESIS.validators)
    tid = bytes.fromhex(FIN["task_id"])
    v1 = next(a for a in GEN["accounts"] if a["name"] == "validator-1")
    key = nacl.signing.SigningKey(bytes.fromhex(v1["seed"]))
    assert {c["round"] for c in FIN["rounds"]} >= {-1, 0}
    for c in FIN["rounds"]:
        assert c["horizon"] == max(c["round"], 0) + FIN["clock_skew_ms"] // FIN["round_timeout_ms"] + 1
        for r, want in ((c["horizon"], Outcome.ACCEPT), (c["horizon"] + 1, Outcome.IGNORE)):
            fin = finality.TaskFinality(tid, vals, None, FIN["deadline"], P)
            fin.on_tick(c["now_ms"], None)
            att = Attestation(key.verify_key.encode(), tid, c["now_ms"], r, 1, bytes(32), bytes(32), ())
            v = fin.on_attestation(sign_message(att, key, NET))
            assert v.outcome is want, (c, r, v.reason)


@pytest.mark.parametrize("case", FIN["certificates"][3:], ids=lambda c: c["name"])
def test_finality_certificates_beyond_the_first_three(case):
    """A certificate's validity does not depend on its precommits' created_at (section 11)."""
    cert = finality.decode_certificate(bytes.fromhex(case["encoded_hex"]), P)
    assert finality.encode_certificate(cert).hex() == case["encoded_hex"]
    assert finality.verify_certificate(cert, dict(GENESIS.validators), NET) is case["valid"]
    assert sum(dict(GENESIS.validators)[m.body.validator] for m in cert.attestations) == case["weight"]
    if "round_start_ms" in case:
        assert case["round_start_ms"] == finality.compute_round_start(FIN["deadline"], cert.round, P)
        assert all(m.body.created_at < case["round_start_ms"] for m in cert.attestations) and case["valid"]


@pytest.mark.parametrize("case", FIN["malformed_certificates"], ids=lambda c: c["name"])
def test_malformed_certificates_fail_to_decode(case):
    with pytest.raises(DecodeError) as e:
        finality.decode_certificate(bytes.fromhex(case["encoded_hex"]), P)
    assert str(e.value) == case["error"]


@pytest.mark.parametrize("k", range(3))
def test_finality_certificates(k):
    c = FIN["certificates"][k]
    vals = dict(GENESIS.validators)
    cert = finality.decode_certificate(bytes.fromhex(c["encoded_hex"]), P)
    assert finality.encode_certificate(cert).hex() == c["encoded_hex"]
    assert finality.verify_certificate(cert, vals, NET) is c["valid"]
    assert finality.is_quorum(c["weight"], c["total_weight"]) is c["valid"]
    want = [MSGS[f"attestation_precommit_{int(n.split('-')[1])}"]["envelope_hex"] for n in c["signers"]]
    assert sorted(m.raw.hex() for m in cert.attestations) == sorted(want)


# --------------------------------------------------------------------------- reputation


def test_reputation_window_earned_and_weights():
    from protocol import reputation as rp
    doc = load("reputation.json")
    assert (doc["ONE"], doc["PRIOR_LABELS"], doc["EQUIVOCATION_PENALTY"]) == (rp.ONE, rp.PRIOR_LABELS,
                                                                          rp.EQUIVOCATION_PENALTY)
    assert (doc["reputation_lag_ms"], doc["fresh_weight"], doc["max_weight"]) == (P.reputation_lag_ms, P.fresh_weight,
                                                                                  P.max_weight)
    assert doc["genesis_reputation"] == [{"account": a.hex(), "domain": d, "weight": w} for a, d, w in GENESIS.reputation]
    outcomes = [rp.TaskOutcome(bytes.fromhex(o["task_id"]), o["deadline"], o["domain"], o["n_classes"],
                               tuple(rp.AnnotatorOutcome(bytes.fromhex(a["account"]), a["labels"], a["score"],
                                                         a["equivocations"], a["trust"]) for a in o["annotators"]))
                for o in doc["outcomes"]]
    window = [o for o in outcomes if rp.is_in_window(o, doc["created_at"], P)]
    assert [o.task_id.hex() for o in window] == doc["in_window"]
    earned = rp.compute_earned(window)
    assert [{"account": a.hex(), "domain": d, "earned": v} for (a, d), v in sorted(earned.items())] == doc["earned"]
    assert rp.compute_snapshot(outcomes, doc["created_at"], P) == earned
    for w in doc["weights"]:
        assert rp.compute_weight(bytes.fromhex(w["account"]), w["domain"], earned, GENESIS.reputation, P) == w["weight"]
    gw = doc["genesis_weights"]
    entries = [(bytes.fromhex(e["account"]), e["domain"], e["weight"]) for e in gw["genesis_reputation"]]
    for w in gw["cases"]:
        a = bytes.fromhex(w["account"])
        assert rp.compute_weight(a, w["domain"], earned, entries, P) == w["weight"]
        once = min(P.max_weight, earned.get((a, w["domain"]), 0) + sum(
            x for acc, d, x in entries if acc == a and d in {w["domain"], ""}))
        assert w["weight"] == (once or P.fresh_weight)
    # the vector tells the two readings of revision 1.0's formula apart
    assert any(w["domain"] == "" and w["weight"] != w["double_counted"] for w in gw["cases"])


# --------------------------------------------------------------------------- gossip bundles

BUNDLES = load("bundles.json")


@pytest.mark.parametrize("case", BUNDLES["valid"], ids=lambda c: c["name"])
def test_bundle_vectors_split_into_their_envelopes(case):
    from protocol.bundle import split_payload

    got = split_payload(bytes.fromhex(case["payload_hex"]), P)
    assert [e.hex() for e in got] == [MSGS[n]["envelope_hex"] for n in case["envelopes"]]
    assert [decode_message(e, P).compute_id(NET).hex() for e in got] == [MSGS[n]["id"] for n in case["envelopes"]]


@pytest.mark.parametrize("case", BUNDLES["invalid"], ids=lambda c: c["name"])
def test_invalid_bundle_vectors_fail_to_decode(case):
    from protocol.bundle import split_payload

    with pytest.raises(DecodeError):
        for raw in split_payload(bytes.fromhex(case["payload_hex"]), P):
            decode_message(raw, P)


# --------------------------------------------------------------------------- ledger (PROTOCOL.md 16)

LEDGER = load("ledger.json")


@pytest.mark.parametrize("sc", LEDGER["scenarios"], ids=lambda s: s["name"])
def test_ledger_scenarios_in_every_order(sc):
    """Each scenario's inputs (decoded from their envelopes, signatures checked) give the
    expected state, fed from scratch in the file's order and incrementally in 50 random
    orders."""
    import random

    from protocol.ledger import LedgerState, Release
    from protocol.params import Params

    h = bytes.fromhex
    params = Params().with_overrides({**dict(GENESIS.param_overrides), **sc["params"]})
    validators = {h(a): w for a, w in LEDGER["validators"]}
    balances = [(h(a), jint(c)) for a, c in sc["balances"]]
    inputs = [("task", (h(t["task_id"]), h(t["requester"]), jint(t["bounty"]))) for t in sc["tasks"]]
    for kind in ("orders", "votes"):
        for m in sc[kind]:
            msg = decode_message(h(m["envelope_hex"]), params)
            assert verify_signature(msg, NET) and msg.compute_id(NET).hex() == m["id"]
            assert msg.body == body_from_json(msg.kind, m["body"])
            inputs.append(("order", (msg.compute_id(NET), msg.body)) if kind == "orders" else ("vote", msg.body))
    for r in sc["releases"]:
        inputs.append(("release", Release(h(r["task_id"]), h(r["requester"]), jint(r["time"]),
                                          tuple((h(a), jint(c)) for a, c in r["rewards"]), jint(r["fee"]))))
    e = sc["expected"]
    rng = random.Random(sc["name"])
    orders = [list(inputs)] + [rng.sample(inputs, len(inputs)) for _ in range(50)]
    for seq in orders:
        st = LedgerState(balances, validators, params)
        for kind, x in seq:
            {"task": lambda x: st.add_task(*x), "order": lambda x: st.add_order(*x), "vote": st.add_vote,
             "release": st.add_release}[kind](x)
            assert st.check_supply()
        assert [[a.hex(), c] for a, c in sorted(st.balance.items()) if c] == [[a, jint(c)] for a, c in e["balances"]]
        assert [[t.hex(), c] for t, c in sorted(st.escrow.items()) if c] == [[t, jint(c)] for t, c in e["escrow"]]
        assert st.burned == jint(e["burned"]) and st.supply == jint(e["supply"])
        assert [[a.hex(), n] for a, n in sorted(st.next_seq.items())] == e["next_seq"]
        assert sorted(o.hex() for o in st.applied) == e["applied"]
        assert sorted(t.hex() for t in st.released) == e["released"]
        assert [[v.hex(), s.hex(), n, [i.hex() for i in ids]] for v, s, n, ids in st.get_evidence()] == e["evidence"]


# --------------------------------------------------------------------------- keep rule

KEEP = load("keep.json")


@pytest.mark.parametrize("case", KEEP["cases"], ids=lambda c: c["name"])
def test_keep_rule(case):
    from protocol.keep import AnnotatorVotes, compute_kept_batches
    from protocol.messages import AnnotationBatch

    rows = [(bytes.fromhex(b["id"]), AnnotationBatch(annotator=bytes.fromhex(b["annotator"]), task_id=bytes(32),
                                                     created_at=0, labels=tuple(map(tuple, b["labels"]))))
            for b in case["batches"]]
    assert sorted(i.hex() for i in compute_kept_batches(rows)) == case["kept"]
    votes: dict = {}
    for (i, b), want in zip(rows, case["arrivals"]):
        ok, gone = votes.setdefault(b.annotator, AnnotatorVotes()).add_batch(i, b.labels)
        assert (ok, sorted(g.hex() for g in gone)) == (want["kept"], want["displaces"])


def test_replica_vectors_replay():
    """replica.json: domain topics, and (certificate, R) checked as a node without the batches does."""
    from protocol import replica
    from protocol import sync as sp

    doc = load("replica.json")
    net = bytes.fromhex(doc["network_id"])
    for c in doc["domain_topics"]:
        assert (replica.domain_tag(c["domain"]), replica.domain_topic(net, c["domain"])) == (c["tag"], c["topic"])
    r = bytes.fromhex(doc["result"]["canonical_hex"])
    assert replica.compute_result_root(r).hex() == doc["result"]["result_root"]
    assert replica.decode_result(r).set_root.hex() == doc["result"]["set_root"]
    for c in doc["certified_checks"]:
        args = [bytes.fromhex(c[k]) for k in ("task_id", "certificate_hex", "result_hex")]
        try:
            replica.check_certified(*args, dict(GENESIS.validators), net, GENESIS.params)
            assert c["valid"], c["name"]
        except DecodeError as e:
            assert not c["valid"] and str(e) == c["error"], c["name"]
    req, resp = doc["frames"]
    assert sp.encode_certified_request([bytes.fromhex(i) for i in req["inputs"]["ids"]]).hex() == req["hex"]
    rows = [tuple(bytes.fromhex(x) for x in row) for row in resp["inputs"]["rows"]]
    assert sp.encode_certified_response(rows).hex() == resp["hex"]
    assert sp.decode_certified_response(bytes.fromhex(resp["hex"])) == rows
    for b in doc["bad_requests"]:
        with pytest.raises(sp.SyncProtocolError, match=b["error"]):
            sp.decode_request(bytes.fromhex(b["hex"]))

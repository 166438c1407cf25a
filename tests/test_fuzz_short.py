"""Short fuzz runs for CI: hypothesis over every decoder and validator (tests/fuzz_targets.py),
the classic hostile shapes (deep nesting, huge length prefixes, truncation, trailing
bytes) with a memory bound, and a few seconds of coverage-guided atheris per target
when atheris is installed. The long campaign is ``scripts/fuzz``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from . import fuzz_targets as ft

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- strategies

_leaf = st.one_of(st.integers(-2**63, 2**64 - 1), st.binary(max_size=40), st.text(max_size=20), st.none(),
                  st.booleans())
_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=6), max_leaves=30)


@st.composite
def mutated(draw, seeds):
    """A seed with a few byte-level mutations: flips, inserts, deletes, truncation, splices."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 5))
        pos = draw(st.integers(0, max(0, len(data))))
        if op == 0 and data:
            data[pos % len(data)] ^= draw(st.integers(1, 255))
        elif op == 1:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == 2 and data:
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == 3:
            data = data[:pos]
        elif op == 4:
            data[pos:pos] = draw(st.sampled_from([b"\xc6\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdb\x7f\xff\xff\xff",
                                                  b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff", b"\x91" * 64, b"\xc1"]))
        else:
            other = draw(st.sampled_from(seeds))
            cut = draw(st.integers(0, len(other)))
            data = data[:pos] + other[cut:]
    return bytes(data)


def inputs(target: str, structured=None):
    parts = [mutated(ft.SEEDS[target]), st.binary(max_size=400)]
    if structured is not None:
        parts.append(structured)
    return st.one_of(*parts)


def packed_values():
    return _value.map(lambda v: msgpack.packb(v, use_bin_type=True))


@st.composite
def message_shaped(draw):
    """[body, sig] envelopes whose body is [kind, 1, signer, <random fields>] (gets past the first checks)."""
    kind = draw(st.integers(0, 5))
    fields = [kind, draw(st.sampled_from([1, 1, 1, 2])), draw(st.binary(min_size=32, max_size=32))]
    fields += draw(st.lists(_value, max_size=11))
    body = msgpack.packb(fields, use_bin_type=True)
    return msgpack.packb([body, draw(st.binary(min_size=64, max_size=64))], use_bin_type=True)


FAST = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


# --------------------------------------------------------------------------- hypothesis runs


@FAST
@given(data=st.one_of(inputs("message", packed_values()), message_shaped()))
def test_fuzz_message(data):
    ft.fuzz_message(data)


@FAST
@given(data=inputs("certificate", packed_values()))
def test_fuzz_certificate(data):
    ft.fuzz_certificate(data)


@FAST
@given(data=inputs("sync_request", packed_values()))
def test_fuzz_sync_request(data):
    ft.fuzz_sync_request(data)


@FAST
@given(data=inputs("sync_summary", packed_values()))
def test_fuzz_sync_summary(data):
    ft.fuzz_sync_summary(data)


@FAST
@given(data=inputs("sync_range", packed_values()))
def test_fuzz_sync_range(data):
    ft.fuzz_sync_range(data)


@FAST
@given(data=inputs("sync_get", packed_values()))
def test_fuzz_sync_get(data):
    ft.fuzz_sync_get(data)


@FAST
@given(data=inputs("sync_certified", packed_values()))
def test_fuzz_sync_certified(data):
    ft.fuzz_sync_certified(data)


def test_the_certified_seed_verifies():
    """fuzz_sync_certified's seed is a real proof: the target can tell a forgery from it."""
    assert ft.fuzz_sync_certified(ft.SYNC_CERTIFIED_SEEDS[0]) == "verified"
    assert ft.fuzz_sync_certified(ft.SYNC_CERTIFIED_SEEDS[1]) == "rejected"


@FAST
@given(data=inputs("blobs", packed_values().map(lambda b: b"\x01" + b)))
def test_fuzz_blobs(data):
    ft.fuzz_blobs(data)


_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                               st.text(max_size=30)),
                     lambda inner: st.one_of(st.lists(inner, max_size=5),
                                             st.dictionaries(st.text(max_size=12), inner, max_size=5)),
                     max_leaves=25)


@st.composite
def genesis_docs(draw):
    d = json.loads(ft.GENESIS_JSON)
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.sampled_from(sorted(d) + ["extra"]))
        d[k] = draw(_json)
    return json.dumps(d).encode()


@FAST
@given(data=st.one_of(inputs("genesis"), genesis_docs()))
def test_fuzz_genesis(data):
    ft.fuzz_genesis(data)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=inputs("config", st.text(max_size=200).map(str.encode)))
def test_fuzz_config(data):
    ft.fuzz_config(data)


_cell = st.one_of(st.text(max_size=12), st.sampled_from(["1e-99999999", "1E+999", "1/0", "nan", "inf", "-1", "0.5",
                                                          "9" * 999, "1_000", "\ufeffw", "\x00"]))


@st.composite
def csv_docs(draw):
    which = draw(st.integers(0, 2))
    header = [b"worker,task,label", b"task,label", b"worker,weight"][which]
    rows = draw(st.lists(st.lists(_cell, min_size=1, max_size=4), max_size=8))
    body = "\n".join(",".join(r) for r in rows)
    return bytes([which]) + header + b"\n" + body.encode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(inputs("csv"), csv_docs()))
def test_fuzz_csv(data):
    ft.fuzz_csv(data)


@st.composite
def rpc_requests(draw):
    method = draw(st.sampled_from(["node_info", "task_get", "task_post", "annotations_submit", "consensus_get",
                                   "tasks_list", "rewards_get", "reputation_get", "task_export", "certificate_get",
                                   "gold_reveal", "annotations_list", "account_list", "sync_status", "peers_list",
                                   "no_such"]))
    params = draw(st.one_of(st.dictionaries(st.sampled_from(
        ["task_id", "account", "labels", "items", "raw", "limit", "offset", "title", "duration_s", "deadline_ms",
         "bounty", "redundancy", "nonce", "gold", "format", "domain", "items"]), _json, max_size=6),
        _json))
    if draw(st.booleans()):
        params = dict(params) if isinstance(params, dict) else {}
        params.setdefault("task_id", ft.TASK_ID.hex())
        params.setdefault("account", "alice")
    req = {"jsonrpc": draw(st.sampled_from(["2.0", "2.0", "1.0", None])), "method": method, "params": params}
    if draw(st.booleans()):
        req["id"] = draw(st.one_of(st.integers(-5, 5), st.text(max_size=5), st.none(), st.booleans(), st.floats()))
    if draw(st.integers(0, 5)) == 0:
        req = [req] * draw(st.integers(0, 70))
    return json.dumps(req).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(inputs("rpc"), rpc_requests()))
def test_fuzz_rpc(data):
    ft.fuzz_rpc(data)


# --------------------------------------------------------------------------- classic hostile shapes


def _decoders():
    P = ft.P
    from protocol import sync as sp
    from protocol.finality import decode_certificate
    from protocol.messages import decode_message
    return [("message", lambda d: decode_message(d, P)), ("certificate", lambda d: decode_certificate(d, P)),
            ("sync_request", sp.decode_request), ("sync_summary", sp.decode_summary_response),
            ("sync_range", sp.decode_range_response),
            ("sync_get", lambda d: sp.decode_get_response(d, P.max_message_bytes))]


HUGE_PREFIXES = [b"\xc6\xff\xff\xff\xff", b"\xc5\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff",
                 b"\xdf\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\x92\xc6\x7f\xff\xff\xff",
                 b"\x91" * 100_000 + b"\xc0", b"\xdd\x00\x01\x00\x00" + b"\xc0" * 10]


def test_huge_length_prefixes_and_deep_nesting_allocate_nothing():
    """A 5-byte input announcing 4 GiB (or 100,000 levels of nesting) is refused with a
    DecodeError before anything big is allocated."""
    from protocol.errors import DecodeError
    tried = 0
    for name, dec in _decoders():
        for data in HUGE_PREFIXES:
            tracemalloc.start()
            try:
                with pytest.raises(DecodeError):
                    dec(data)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < 4 * len(data) + (1 << 20), (name, data[:8], peak)
            tried += 1
    assert tried == len(_decoders()) * len(HUGE_PREFIXES)


def test_every_truncation_and_trailing_byte_of_every_seed_is_refused():
    fns = {"message": ft.fuzz_message, "certificate": ft.fuzz_certificate, "sync_request": ft.fuzz_sync_request,
           "sync_summary": ft.fuzz_sync_summary, "sync_range": ft.fuzz_sync_range, "sync_get": ft.fuzz_sync_get}
    tried = 0
    for name, fn in fns.items():
        for seed in ft.SEEDS[name]:
            for cut in range(len(seed)):
                assert fn(seed[:cut]) == "decode_error", (name, cut)
                tried += 1
            for extra in (b"\x00", b"\xc0", seed[:1]):
                assert fn(seed + extra) == "decode_error", name
                tried += 1
    assert tried > 1000


@pytest.mark.timeout(60)
def test_csv_weight_with_a_giant_exponent_is_refused_not_computed(tmp_path):
    """``Fraction("1e-99999999")`` computes a 100-million-digit power of ten (it hangs);
    the reader refuses such exponents first."""
    from node.cli.aggregate import OfflineError, read_reputation
    p = tmp_path / "rep.csv"
    p.write_text("worker,weight\nw1,1e-99999999\n")
    with pytest.raises(OfflineError, match="exponent"):
        read_reputation(str(p))


def test_json_inputs_nested_too_deeply_are_declared_errors(tmp_path):
    from node.config import load_config
    from protocol.errors import LabelmeshError
    from protocol.genesis import genesis_from_json
    with pytest.raises(LabelmeshError):
        genesis_from_json("[" * 100_000)
    (tmp_path / "config.toml").write_text("a = " + "[" * 100_000)
    with pytest.raises(LabelmeshError):
        load_config(tmp_path)
    (tmp_path / "config.toml").write_bytes(b"genesis = \"\xff\xfe\"\n")
    with pytest.raises(LabelmeshError):
        load_config(tmp_path)


# --------------------------------------------------------------------------- atheris (coverage-guided)

try:
    import atheris  # noqa: F401
    HAVE_ATHERIS = True
except ImportError:
    HAVE_ATHERIS = False


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris is not installed (pip install -e '.[fuzz]')")
@pytest.mark.parametrize("target", sorted(ft.TARGETS))
def test_atheris_short_run(target, tmp_path):
    """A few seconds of libFuzzer per target: no crash, no hang (-timeout), bounded RSS,
    and nothing invalid accepted. Counts land in the stats file."""
    stats = tmp_path / "stats.json"
    seconds = os.environ.get("LABELMESH_FUZZ_CI_SECONDS", "3")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_targets", target, str(tmp_path / "corpus"),
         f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048", "-max_len=8192",
         f"-artifact_prefix={tmp_path}/"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "LABELMESH_FUZZ_STATS": str(stats)})
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    s = json.loads(stats.read_text())
    assert s["inputs"] > 0 and s.get("accepted_invalid", 0) == 0, s

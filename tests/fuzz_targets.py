"""Fuzz targets: every decoder and validator that reads hostile bytes.

How it works
------------
Each target is ``fn(data: bytes) -> str``. It feeds ``data`` to one decoder (and
the validators behind it), swallows only the errors that decoder *declares*
(``protocol.errors.LabelmeshError`` subclasses, JSON-RPC error objects) and checks
the invariants that must hold for every input:

* nothing but the declared errors comes out (anything else propagates: a crash);
* whatever a decoder accepts re-encodes to exactly the same bytes (one value, one
  encoding);
* a message is ACCEPTed only if it is one of the validly signed seeds (mutated
  bytes are never accepted: ``accepted_invalid`` stays 0);
* no hang and bounded memory are enforced by the driver (libFuzzer ``-timeout`` and
  ``-rss_limit_mb`` in ``scripts/fuzz``; pytest-timeout and tracemalloc in CI).

The return value names the outcome ("accepted", "rejected", "ignored", ...) for
the statistics in ``STATS``. The same targets are driven by hypothesis in
``tests/test_fuzz_short.py`` (CI) and by atheris (coverage-guided) here:

    python -m tests.fuzz_targets TARGET [libFuzzer flags...]    # see scripts/fuzz

``SEEDS[target]`` are valid inputs the mutators start from (every message kind,
every sync frame, a certificate, a genesis, CSVs, a config, RPC requests).
"""
from __future__ import annotations

import collections
import io
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

from protocol import sync as sp
from protocol.codec import pack
from protocol.errors import DecodeError, LabelmeshError
from protocol.finality import Certificate, decode_certificate, encode_certificate, verify_certificate
from protocol.genesis import genesis_from_json, make_genesis
from protocol.messages import (
    PHASE_PRECOMMIT, PHASE_PREVOTE, Attestation, GoldReveal, Outcome, check_message,
    compute_gold_commitment, compute_set_root, decode_message, validate_basic,
)

from .helpers import T0, DictContext, key, make_batch, make_task, pk, signed

VALIDATORS = [1000 + i for i in range(4)]
GENESIS = make_genesis("fuzz", T0, [(pk(v), 1) for v in VALIDATORS], [(pk(7), "", 1 << 16)], [(pk(1), 10**9)])
NET = GENESIS.network_id
P = GENESIS.params

# Outcome counts per target: {"inputs": n, "<outcome>": n, "accepted_invalid": n}.
STATS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


# --------------------------------------------------------------------------- seeds


def _message_seeds():
    salt = bytes(range(32))
    gold = [(0, 1), (2, 0)]
    task = make_task(n_items=6, gold_commitment=compute_gold_commitment(salt, gold))
    tm = signed(task, 1, NET)
    tid = tm.compute_id(NET)
    batch = signed(make_batch(5, tid, [(0, 1), (1, 2), (4, 0)]), 5, NET)
    reveal = signed(GoldReveal(pk(1), tid, task.deadline, salt, tuple(gold)), 1, NET)
    ids = tuple(sorted([batch.compute_id(NET)]))
    round0 = task.deadline + P.grace_period_ms  # attestations are never signed before their round
    prevote = signed(Attestation(pk(1000), tid, round0 + 10, 0, PHASE_PREVOTE,
                                 compute_set_root(tid, ids), bytes(32), ids), 1000, NET)
    precommits = [signed(Attestation(pk(v), tid, round0 + 20, 0, PHASE_PRECOMMIT,
                                     compute_set_root(tid, ids), bytes(32), ()), v, NET) for v in VALIDATORS]
    return task, tid, [tm, batch, reveal, prevote, *precommits], precommits


TASK, TASK_ID, _MSGS, _PRECOMMITS = _message_seeds()
VALID_MESSAGES = {m.raw for m in _MSGS}
NOW = TASK.deadline + 1000  # every seed is valid at this time (the reveal needs deadline passed)


def _context() -> DictContext:
    return DictContext(GENESIS, {TASK_ID: TASK})


CERT = Certificate(TASK_ID, 0, _PRECOMMITS[0].body.set_root, bytes(32),
                   tuple(sorted(_PRECOMMITS, key=lambda m: m.body.validator)))
CERT_BYTES = encode_certificate(CERT)

_IDS = sorted(bytes([i]) * 32 for i in range(1, 40))
SYNC_REQUEST_SEEDS = [sp.encode_summary_request(b"", 100), sp.encode_summary_request(TASK_ID, 1),
                      sp.encode_range_request(TASK_ID, b"", None), sp.encode_range_request(TASK_ID, _IDS[3], _IDS[9]),
                      sp.encode_get_request(_IDS[:5]), sp.encode_certified_request([TASK_ID, _IDS[0]])]


def _certified_seed() -> tuple[bytes, bytes]:
    """A certificate and the result bytes R it proves (PROTOCOL.md 17): a result-shaped R
    over the seed task's set, precommitted by every validator."""
    from protocol.replica import compute_result_root

    set_root = _PRECOMMITS[0].body.set_root
    r = pack([TASK_ID, set_root, [1, 2, -1, 0, 0, 0], [65536] * 6, [65536] * 6, [1, 1, 0, 1, 0, 0],
              [[pk(5), 3, 0, 65536, 196608, 0, 64]], [], 0, 0, 0, 0])
    pre = [signed(Attestation(pk(v), TASK_ID, m.body.created_at, 0, PHASE_PRECOMMIT, set_root, compute_result_root(r),
                              ()), v, NET) for v, m in zip(VALIDATORS, _PRECOMMITS)]
    cert = Certificate(TASK_ID, 0, set_root, compute_result_root(r), tuple(sorted(pre, key=lambda m: m.body.validator)))
    return encode_certificate(cert), r


CERTIFIED_CERT, CERTIFIED_R = _certified_seed()
SYNC_SUMMARY_SEEDS = [sp.encode_summary_response([(TASK_ID, 7, bytes(16)), (_IDS[0], 1, b"\x01" * 16)], None),
                      sp.encode_summary_response([(TASK_ID, 0, bytes(16))], TASK_ID)]
SYNC_RANGE_SEEDS = [sp.encode_range_response(_IDS[:10], b"", None),
                    sp.encode_range_response(sorted(bytes([i, j]) * 16 for i in range(20) for j in range(10)), b"", None)]
SYNC_GET_SEEDS = [sp.encode_get_response([m.raw for m in _MSGS[:3]]), sp.encode_get_response([])]
SYNC_CERTIFIED_SEEDS = [sp.encode_certified_response([(TASK_ID, CERTIFIED_CERT, CERTIFIED_R)]),
                        sp.encode_certified_response([(TASK_ID, CERT_BYTES, CERTIFIED_R), (_IDS[0], b"", b"")])]

from protocol import blobs as bp  # noqa: E402  (the blob fetch protocol's frames)

BLOB_SEEDS = [b"\x00" + bp.encode_blob_request(bytes(32), 0, 1024), b"\x01" + bp.encode_blob_data(10, b"0123456789"),
              b"\x01" + bp.encode_blob_missing("not held"), b"\x01" + bp.encode_blob_data(3000, b"x" * 1024)]

GENESIS_JSON = GENESIS.to_json().encode()
CONFIG_SEEDS = [b'genesis = "genesis.json"\nlisten = ["/ip4/127.0.0.1/tcp/0"]\nbootstrap = []\n'
                b'rpc_socket = "node.sock"\nlog_level = "info"\nlog_format = "text"\nvalidator_account = ""\n']
CSV_SEEDS = [b"\x00worker,task,label\nw1,t1,cat\nw2,t1,dog\nw1,t2,1\n",
             b"\x01task,label\nt1,cat\nt2,dog\n",
             b"\x02worker,weight\nw1,0.5\nw2,2\nw3,1/3\n"]
RPC_SEEDS = [json.dumps(x).encode() for x in [
    {"jsonrpc": "2.0", "id": 1, "method": "node_info"},
    {"jsonrpc": "2.0", "id": 2, "method": "task_get", "params": {"task_id": TASK_ID.hex()}},
    {"jsonrpc": "2.0", "id": 3, "method": "annotations_submit", "params": {"raw": _MSGS[1].raw.hex()}},
    {"jsonrpc": "2.0", "id": 4, "method": "task_post", "params": {"raw": _MSGS[0].raw.hex()}},
    {"jsonrpc": "2.0", "id": 5, "method": "task_post", "params": {
        "account": "alice", "title": "t", "labels": ["a", "b"], "items": ["x", {"text": "y"}], "duration_s": 60}},
    {"jsonrpc": "2.0", "id": 6, "method": "annotations_submit", "params": {
        "account": "alice", "task_id": TASK_ID.hex(), "labels": [[0, "a"], [1, 2]]}},
    {"jsonrpc": "2.0", "id": 7, "method": "consensus_get", "params": {"task_id": TASK_ID.hex(), "items": True}},
    {"jsonrpc": "2.0", "id": 8, "method": "tasks_list", "params": {"limit": 5, "offset": 0}},
    {"jsonrpc": "2.0", "id": 9, "method": "rewards_get", "params": {"account": pk(5).hex()}},
    {"jsonrpc": "2.0", "id": 10, "method": "task_export", "params": {"task_id": TASK_ID.hex(), "format": "csv"}},
    [{"jsonrpc": "2.0", "id": 11, "method": "rpc_methods"}, {"jsonrpc": "2.0", "method": "peers_list"}],
]]

SEEDS: dict[str, list[bytes]] = {
    "message": sorted(VALID_MESSAGES),
    "certificate": [CERT_BYTES],
    "sync_request": SYNC_REQUEST_SEEDS,
    "sync_summary": SYNC_SUMMARY_SEEDS,
    "sync_range": SYNC_RANGE_SEEDS,
    "sync_get": SYNC_GET_SEEDS,
    "sync_certified": SYNC_CERTIFIED_SEEDS,
    "genesis": [GENESIS_JSON],
    "config": CONFIG_SEEDS,
    "csv": CSV_SEEDS,
    "rpc": RPC_SEEDS,
    "blobs": BLOB_SEEDS,
}


def _count(target: str, outcome: str) -> str:
    s = STATS[target]
    s["inputs"] += 1
    s[outcome] += 1
    return outcome


# --------------------------------------------------------------------------- targets


def fuzz_message(data: bytes) -> str:
    """decode_message -> validate_basic -> check_message (the whole gossip pipeline, pure)."""
    try:
        msg = decode_message(data, P)
    except DecodeError:
        return _count("message", "decode_error")
    # One message, one encoding: the decoded value re-encodes to the very same bytes.
    assert pack(msg.body.body_fields()) == msg.body_bytes, "body re-encodes differently"
    assert pack([msg.body_bytes, msg.signature]) == data, "envelope re-encodes differently"
    validate_basic(msg, P)
    verdict, _ = check_message(data, _context(), NET, NOW, P)
    assert verdict.outcome in (Outcome.ACCEPT, Outcome.REJECT, Outcome.IGNORE)
    if verdict.ok and data not in VALID_MESSAGES:
        STATS["message"]["accepted_invalid"] += 1
        raise AssertionError(f"a mutated message was ACCEPTed: {data.hex()}")
    return _count("message", verdict.outcome.value)


def fuzz_certificate(data: bytes) -> str:
    try:
        cert = decode_certificate(data, P)
    except DecodeError:
        return _count("certificate", "decode_error")
    assert encode_certificate(cert) == data, "certificate re-encodes differently"
    ok = verify_certificate(cert, dict(GENESIS.validators), NET)
    if ok and data != CERT_BYTES:
        STATS["certificate"]["accepted_invalid"] += 1
        raise AssertionError(f"a mutated certificate verified: {data.hex()}")
    return _count("certificate", "verified" if ok else "rejected")


def fuzz_sync_request(data: bytes) -> str:
    try:
        r = sp.decode_request(data)
    except sp.SyncProtocolError:
        return _count("sync_request", "decode_error")
    if r.kind == sp.REQ_SUMMARY:
        again = sp.encode_summary_request(r.cursor, r.limit)
    elif r.kind == sp.REQ_RANGE:
        again = sp.encode_range_request(r.task_id, r.lo, r.hi)
    elif r.kind == sp.REQ_CERTIFIED:
        again = sp.encode_certified_request(r.ids)
    else:
        again = sp.encode_get_request(r.ids)
    assert again == data, "sync request re-encodes differently"
    return _count("sync_request", "accepted")


def fuzz_sync_summary(data: bytes) -> str:
    try:
        rows, nxt = sp.decode_summary_response(data)
    except sp.SyncProtocolError:
        return _count("sync_summary", "decode_error")
    assert sp.encode_summary_response(rows, nxt) == data, "summary response re-encodes differently"
    return _count("sync_summary", "accepted")


def fuzz_sync_range(data: bytes) -> str:
    try:
        mode, payload = sp.decode_range_response(data)
    except sp.SyncProtocolError:
        return _count("sync_range", "decode_error")
    if mode == "ids":
        again = pack([sp.RESP_IDS, payload])
    else:
        again = pack([sp.RESP_SPLIT, [list(p) for p in payload]])
        sp.compare_split(_IDS, payload)  # what the client does with a split: must not raise
    assert again == data, "range response re-encodes differently"
    return _count("sync_range", "accepted")


def fuzz_sync_get(data: bytes) -> str:
    try:
        raws = sp.decode_get_response(data, P.max_message_bytes)
    except sp.SyncProtocolError:
        return _count("sync_get", "decode_error")
    assert sp.encode_get_response(raws) == data, "get response re-encodes differently"
    for raw in raws[:4]:
        fuzz_message(raw)  # the fetched messages go through the same pipeline
    return _count("sync_get", "accepted")


def fuzz_sync_certified(data: bytes) -> str:
    """A CERTIFIED answer, each row checked as a node without the batches checks it
    (protocol/replica.py check_certified): only the seed's one true (certificate, R) passes."""
    from protocol.replica import check_certified

    try:
        rows = sp.decode_certified_response(data)
    except sp.SyncProtocolError:
        return _count("sync_certified", "decode_error")
    assert sp.encode_certified_response(rows) == data, "certified response re-encodes differently"
    ok = 0
    for tid, cert, r in rows[:4]:
        try:
            check_certified(tid, cert, r, dict(GENESIS.validators), NET, P)
        except DecodeError:
            continue
        if (tid, cert, r) != (TASK_ID, CERTIFIED_CERT, CERTIFIED_R):
            STATS["sync_certified"]["accepted_invalid"] += 1
            raise AssertionError(f"a mutated certified result verified: {data.hex()}")
        ok += 1
    return _count("sync_certified", "verified" if ok else "rejected")


def fuzz_blobs(data: bytes) -> str:
    """Blob request / response frames; the first byte picks which (responses are read
    as the answer to offset 0, length 1024 of a blob of at most 1 MiB)."""
    which, body = (data[0] % 2, data[1:]) if data else (0, b"")
    try:
        if which == 0:
            digest, offset, length = bp.decode_blob_request(body)
            assert bp.encode_blob_request(digest, offset, length) == body, "blob request re-encodes differently"
        else:
            r = bp.decode_blob_response(body, 0, 1024, 1 << 20)
            if isinstance(r, str):
                assert type(r) is str
            else:
                assert bp.encode_blob_data(*r) == body, "blob response re-encodes differently"
    except bp.BlobProtocolError:
        return _count("blobs", "decode_error")
    return _count("blobs", "accepted")


def fuzz_genesis(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _count("genesis", "not_utf8")
    try:
        g = genesis_from_json(text)
    except LabelmeshError:
        return _count("genesis", "rejected")
    again = genesis_from_json(g.to_json())
    assert again.network_id == g.network_id and again == g, "genesis JSON round trip changed it"
    return _count("genesis", "accepted")


_tmp_dir: Path | None = None


def _scratch() -> Path:
    global _tmp_dir
    if _tmp_dir is None:
        _tmp_dir = Path(tempfile.mkdtemp(prefix="lmfuzz"))
    return _tmp_dir


def fuzz_config(data: bytes) -> str:
    from node.config import CONFIG_FILE, load_config

    d = _scratch() / "cfg"
    d.mkdir(exist_ok=True)
    (d / CONFIG_FILE).write_bytes(data)
    try:
        cfg = load_config(d)
    except LabelmeshError:
        return _count("config", "rejected")
    assert cfg.validate() is cfg
    return _count("config", "accepted")


def fuzz_csv(data: bytes) -> str:
    """The three CSV readers of ``labelmesh aggregate``; the first byte picks one."""
    from node.cli.aggregate import OfflineError, read_answers, read_gold, read_reputation

    which, body = (data[0] % 3, data[1:]) if data else (0, b"")
    p = _scratch() / "in.csv"
    p.write_bytes(body)
    try:
        if which == 0:
            read_answers(str(p))
        elif which == 1:
            read_gold(str(p), ["cat", "dog", "1"])
        else:
            read_reputation(str(p))
    except OfflineError as e:
        assert isinstance(e, LabelmeshError), "OfflineError must derive from LabelmeshError"
        return _count("csv", "rejected")
    return _count("csv", "accepted")


# ---- RPC: a real Node (no network) on a trio loop in a helper thread


class _RpcHarness:
    def __init__(self) -> None:
        import trio

        from node.app import Node
        from node.keystore import Keystore
        from node.rpc.methods import METHODS
        from node.rpc.server import RpcServer
        from tests.test_inprocess import FakeClock

        d = _scratch() / "rpcnode"
        ks = Keystore(d)
        if not ks.list():
            ks.create("alice", seed=bytes(key(1)))
        self.node = Node(d, GENESIS, p2p_factory=None, keystore=ks, clock=FakeClock(NOW))
        self.server = RpcServer(self.node, d / "unused.sock", METHODS)
        self._ready = threading.Event()
        self.token = None

        async def main():
            async with trio.open_nursery() as nursery:
                await nursery.start(self.node.writer.run)
                self.token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await trio.sleep_forever()

        threading.Thread(target=trio.run, args=(main,), daemon=True, name="fuzz-rpc").start()
        self._ready.wait(30)
        import trio.from_thread
        self._run = trio.from_thread.run
        for raw in sorted(VALID_MESSAGES):  # give the methods a task and a batch to find
            self._run(self.node.ingest, raw, "rpc", trio_token=self.token)

    def handle(self, line: bytes):
        return self._run(self.server.handle_line, line, trio_token=self.token)


_rpc: _RpcHarness | None = None
RPC_CODES = {-32700, -32600, -32601, -32602, -32000, -32001, -32002, -32003, -32004}


def _check_reply(obj) -> None:
    assert isinstance(obj, dict) and obj.get("jsonrpc") == "2.0", f"not a JSON-RPC response: {obj!r}"
    if "error" in obj:
        code = obj["error"]["code"]
        assert code in RPC_CODES, f"unexpected JSON-RPC error (a bug if -32603): {obj['error']}"
    else:
        assert "result" in obj


def fuzz_rpc(data: bytes) -> str:
    """``RpcServer.handle_line`` on one line: only JSON-RPC results or declared errors."""
    global _rpc
    if _rpc is None:
        _rpc = _RpcHarness()
    reply = _rpc.handle(data)
    if reply is None:
        return _count("rpc", "notification")
    json.dumps(reply)  # what the server sends must be serialisable
    replies = reply if isinstance(reply, list) else [reply]
    for r in replies:
        _check_reply(r)
    return _count("rpc", "error" if any("error" in r for r in replies) else "result")


TARGETS = {
    "message": fuzz_message,
    "certificate": fuzz_certificate,
    "sync_request": fuzz_sync_request,
    "sync_summary": fuzz_sync_summary,
    "sync_range": fuzz_sync_range,
    "sync_get": fuzz_sync_get,
    "sync_certified": fuzz_sync_certified,
    "genesis": fuzz_genesis,
    "config": fuzz_config,
    "csv": fuzz_csv,
    "rpc": fuzz_rpc,
    "blobs": fuzz_blobs,
}


# --------------------------------------------------------------------------- atheris driver


def _instrument_project(atheris) -> int:
    """Coverage instrumentation for our own code only (``instrument_all`` would also
    patch numpy, trio, nacl...: ~15 s of start-up for no useful signal)."""
    import types

    seen: set[int] = set()
    n = 0

    def visit(obj, depth=0):
        nonlocal n
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        if isinstance(obj, types.FunctionType):
            if obj.__module__ and obj.__module__.split(".")[0] in ("protocol", "node", "tests"):
                atheris.instrument_func(obj)
                n += 1
        elif isinstance(obj, type) and obj.__module__.split(".")[0] in ("protocol", "node", "tests"):
            for v in vars(obj).values():
                visit(getattr(v, "__func__", v) if not isinstance(v, property) else v.fget, depth + 1)

    for mod_name, mod in list(sys.modules.items()):
        if mod is not None and mod_name.split(".")[0] in ("protocol", "node", "tests"):
            for v in list(vars(mod).values()):
                visit(v)
    return n


def main(argv: list[str]) -> int:
    """``python -m tests.fuzz_targets TARGET [libFuzzer flags]``: coverage-guided fuzzing with atheris.

    Writes the seeds into the corpus directory (first positional libFuzzer arg, if
    given) and the outcome counts to ``$LABELMESH_FUZZ_STATS`` (JSON) every 2,000
    inputs and at exit.
    """
    if len(argv) < 2 or argv[1] not in TARGETS:
        print(f"usage: python -m tests.fuzz_targets TARGET [libFuzzer flags]; targets: {', '.join(TARGETS)}",
              file=sys.stderr)
        return 2
    import atexit

    import atheris

    name = argv[1]
    fn = TARGETS[name]
    stats_path = os.environ.get("LABELMESH_FUZZ_STATS")
    corpus = [a for a in argv[2:] if not a.startswith("-")]
    for c in corpus[:1]:
        Path(c).mkdir(parents=True, exist_ok=True)
        for k, seed in enumerate(SEEDS[name]):
            (Path(c) / f"seed-{k}").write_bytes(seed)

    def dump() -> None:
        if stats_path:
            Path(stats_path).write_text(json.dumps({"target": name, **STATS[name]}))

    atexit.register(dump)

    def one(data: bytes) -> None:
        fn(data)
        if STATS[name]["inputs"] % 2000 == 0:
            dump()

    if name == "rpc":
        fuzz_rpc(RPC_SEEDS[0])  # start the node before instrumentation counts coverage
    _instrument_project(atheris)
    atheris.Setup([argv[0], *argv[2:]], one)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

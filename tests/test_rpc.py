"""The JSON-RPC socket of a real node (no network): errors, limits, the main flows."""
from __future__ import annotations

import json
import os
import stat

import pytest
import trio

from node.app import Node
from node.rpc import server as rpcmod
from node.rpc import wire as rpcwire
from node.rpc.wire import encode_reply
from node.keystore import Keystore
from protocol.genesis import make_genesis

from .helpers import T0, key, pk, make_batch, signed
from .helpers import FakeClock, RpcConn


@pytest.fixture
async def node(short_dir, nursery):
    ks = Keystore(short_dir)
    ks.create("alice", seed=bytes(key(1)))
    g = make_genesis("rpc", T0, [(pk(1000), 1)], [], [(pk(1), 10**9)])
    clock = FakeClock()
    n = Node(short_dir, g, p2p_factory=None, keystore=ks, clock=clock, rpc_socket=short_dir / "node.sock",
             validator_key=key(1000))  # the one validator: it certifies escrows
    await nursery.start(n.run)
    n.test_clock = clock
    return n


async def connect(node) -> RpcConn:
    return await RpcConn.open(node.rpc_socket)


async def test_socket_mode_0600(node):
    st = os.stat(node.rpc_socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


async def test_node_info(node):
    c = await connect(node)
    r = await c.call("node_info")
    assert r["result"]["pid"] == os.getpid()
    assert r["result"]["network_id"] == node.network_id.hex()


async def test_protocol_errors(node):
    c = await connect(node)
    await c.send(b"{not json\n")
    assert (await c.recv())["error"]["code"] == -32700
    assert (await c.call("no_such_method"))["error"]["code"] == -32601
    assert (await c.call("task_get", {"task_id": "zz"}))["error"]["code"] == -32602
    assert (await c.call("task_get", {}))["error"]["code"] == -32602
    assert (await c.call("task_get", {"task_id": "00" * 32}))["error"]["code"] == -32001
    await c.send(b'{"id": 1, "method": "node_info"}\n')  # missing jsonrpc
    assert (await c.recv())["error"]["code"] == -32600
    await c.send(b"[]\n")
    assert (await c.recv())["error"]["code"] == -32600
    await c.send(b"42\n")
    assert (await c.recv())["error"]["code"] == -32600
    await c.send(json.dumps([{"jsonrpc": "2.0", "id": i, "method": "node_info"} for i in range(3)]).encode() + b"\n")
    batch = await c.recv()
    assert [x["id"] for x in batch] == [0, 1, 2]
    too_many = [{"jsonrpc": "2.0", "id": i, "method": "node_info"} for i in range(rpcmod.MAX_BATCH + 1)]
    await c.send(json.dumps(too_many).encode() + b"\n")
    assert (await c.recv())["error"]["code"] == -32600
    # a notification gets no reply; the next call still works
    await c.send(b'{"jsonrpc": "2.0", "method": "node_info"}\n')
    assert (await c.call("node_info", id_=7))["id"] == 7


async def test_oversized_request_refused_node_survives(node, monkeypatch):
    monkeypatch.setattr(rpcmod, "MAX_REQUEST_BYTES", 1000)
    c = await connect(node)
    await c.send(b'{"jsonrpc": "2.0", "id": 1, "method": "node_info", "params": {"x": "' + b"a" * 5000)
    r = await c.recv()
    assert r["error"]["code"] == -32600 and "larger" in r["error"]["message"]
    c2 = await connect(node)
    assert "result" in await c2.call("node_info")


async def test_client_disconnect_mid_request(node):
    for _ in range(20):
        s = await trio.open_unix_socket(str(node.rpc_socket))
        await s.send_all(b'{"jsonrpc": "2.0", "id": 1, "method": "tasks_li')
        await s.aclose()
    c = await connect(node)
    assert "result" in await c.call("tasks_list")


async def test_post_label_consensus_flow(node):
    c = await connect(node)
    r = await c.call("task_post", {"account": "alice", "title": "t", "labels": ["yes", "no"],
                                   "items": ["a", "b", {"text": "c"}], "duration_s": 60, "bounty": 100})
    assert r["result"]["funded"] and r["result"]["escrow"]["status"] == "applied"
    tid = r["result"]["task_id"]
    assert (await c.call("tasks_list"))["result"]["tasks"][0]["task_id"] == tid
    assert len((await c.call("task_get", {"task_id": tid}))["result"]["items"]) == 3
    r = await c.call("annotations_submit", {"account": "alice", "task_id": tid, "labels": [[0, "yes"], [1, "no"], [2, 0]]})
    assert r["result"]["status"] == "accepted" and r["result"]["labels"] == 3
    bad = await c.call("annotations_submit", {"account": "alice", "task_id": tid, "labels": [[0, "maybe"]]})
    assert bad["error"]["code"] == -32602 and "unknown label" in bad["error"]["message"]
    out = await c.call("annotations_submit", {"account": "alice", "task_id": tid, "labels": [[9, 0]]})
    assert out["error"]["code"] == -32002 and "out of range" in out["error"]["message"]
    # pre-signed batches, one duplicate
    m = signed(make_batch(7, bytes.fromhex(tid), [(0, 0), (1, 1)], created_at=T0), 7, node.network_id)
    r = await c.call("annotations_submit", {"raw": [m.raw.hex(), m.raw.hex()]})
    assert [x["status"] for x in r["result"]["results"]] == ["accepted", "duplicate"]
    lst = (await c.call("annotations_list", {"task_id": tid}))["result"]
    assert lst["total"] == 2
    cons = (await c.call("consensus_get", {"task_id": tid}))["result"]
    assert cons["task_id"] == tid and len(cons["set_root"]) == 64 and len(cons["result_root"]) == 64
    assert [it["label"] for it in cons["items"]] == ["yes", "no", "yes"]
    assert (await c.call("account_list"))["result"]["accounts"][0]["name"] == "alice"
    unknown = await c.call("annotations_submit", {"account": "bob", "task_id": tid, "labels": [[0, 0]]})
    assert unknown["error"]["code"] == -32001


async def test_consensus_get_reports_the_task_result(node):
    """docs/rpc.md consensus_get: every annotator's labels, equivocations, score and reward as in
    the task result (PROTOCOL.md 10.5), also for an annotator none of whose votes count, and an
    item without a label as label null / label_index -1."""
    c = await connect(node)
    tid = (await c.call("task_post", {"account": "alice", "title": "t", "labels": ["yes", "no"],
                                      "items": ["a", "b", "c"], "duration_s": 60, "bounty": 1000}))["result"]["task_id"]
    await c.call("annotations_submit", {"account": "alice", "task_id": tid, "labels": [[0, "yes"], [1, "no"]]})
    t = bytes.fromhex(tid)
    batches = [signed(make_batch(7, t, [(0, 0), (1, 1)]), 7, node.network_id),
               signed(make_batch(8, t, [(0, 0)]), 8, node.network_id),                     # 8 says yes and no
               signed(make_batch(8, t, [(0, 1)], created_at=T0 + 2000), 8, node.network_id)]  # on item 0
    r = await c.call("annotations_submit", {"raw": [m.raw.hex() for m in batches]})
    # the third is kept but overlaps its annotator's earlier batch on item 0 (the keep rule, docs/rpc.md)
    assert [x["status"] for x in r["result"]["results"]] == ["accepted", "accepted", "accepted_overlapping"]
    cons = (await c.call("consensus_get", {"task_id": tid}))["result"]
    res = node.task_result(t)
    assert cons["result_root"] == res.result_root.hex() and cons["gold_items"] == res.gold_items == 0
    assert cons["annotators"] == [
        {"account": a.account.hex(), "labels": a.labels, "equivocations": a.equivocations, "accuracy": a.accuracy,
         "accuracy_f": round(a.accuracy / 65536, 4), "score": a.score, "score_f": round(a.score / 65536, 4),
         "reward": a.reward} for a in res.annotators]
    by_account = {a["account"]: a for a in cons["annotators"]}
    assert {k: by_account[pk(8).hex()][k] for k in ("labels", "equivocations", "score", "reward")} == {
        "labels": 0, "equivocations": 1, "score": 0, "reward": 0}
    assert by_account[pk(7).hex()]["score"] > 0
    assert cons["equivocations"] == [{"account": pk(8).hex(), "item": 0}]
    assert cons["items"][2] == {"item": 2, "label": None, "label_index": -1, "confidence": 0, "confidence_f": 0.0,
                                "agreement": 0, "agreement_f": 0.0, "votes": 0}


async def test_garbage_raw_rejected(node):
    c = await connect(node)
    r = await c.call("annotations_submit", {"raw": "00ff"})
    assert r["error"]["code"] == -32002
    r = await c.call("annotations_submit", {"raw": "zz"})
    assert r["error"]["code"] == -32602


def test_api_fixed_point_one_is_the_tally_one():
    # the RPC methods take it from protocol.reputation, so that an idle node never loads numpy
    from node.rpc import methods as api
    from protocol import tally

    assert api.ONE == tally.ONE


@pytest.mark.parametrize("method,params,code", [
    ("certificate_get", {"task_id": "zz"}, -32602),
    ("certificate_get", {"task_id": "00" * 32}, -32001),
    ("gold_reveal", {}, -32602),
    ("gold_reveal", {"task_id": "00" * 32}, -32001),
    ("gold_reveal", {"raw": "00ff"}, -32002),
    ("rewards_get", {"account": "nobody"}, -32001),
    ("rewards_get", {"task_id": 5}, -32602),
    ("reputation_get", {"domain": 7}, -32602),
    ("task_export", {"task_id": "00" * 32}, -32001),
    ("messages_arrival", {}, -32602),
    ("messages_arrival", {"ids": ["zz"]}, -32602),
    ("messages_arrival", {"ids": ["00"] * 10_001}, -32602),
    ("annotations_list", {"task_id": 5}, -32602),
    ("tasks_list", {"limit": -1}, -32602),
])
async def test_bad_params_get_clear_errors(node, method, params, code):
    c = await connect(node)
    r = await c.call(method, params)
    assert r["error"]["code"] == code, r
    assert r["error"]["message"]
    assert "result" in await c.call("node_info")  # and the node is still fine


async def test_task_export_rejects_unknown_format(node):
    c = await connect(node)
    tid = (await c.call("task_post", {"account": "alice", "labels": ["a", "b"], "items": ["x"]}))["result"]["task_id"]
    r = await c.call("task_export", {"task_id": tid, "format": "xml"})
    assert r["error"]["code"] == -32602 and "format" in r["error"]["message"]


def test_every_method_is_documented():
    from pathlib import Path

    from node.rpc.methods import METHODS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "rpc.md").read_text()
    assert [m for m in METHODS if f"\n### {m}" not in doc] == []


async def test_replies_with_a_long_string_are_encoded_off_the_event_loop(node, monkeypatch):
    """task_export's content (and blob_get's data) can be tens of MB: such a reply is
    JSON-encoded in a worker thread, in slices, and the bytes sent are exactly
    json.dumps of the reply; small replies are encoded on the loop as before."""
    import threading

    calls: list[tuple[bool, bytes]] = []
    encode = encode_reply

    def recording(obj):
        chunks = encode(obj)
        calls.append((threading.current_thread() is threading.main_thread(), b"".join(chunks)))
        return chunks

    monkeypatch.setattr(rpcmod, "encode_reply", recording)
    monkeypatch.setattr(rpcwire, "THREAD_ENCODE_CHARS", 1000)
    monkeypatch.setattr(rpcwire, "_ESCAPE_SLICE", 100)  # many slices,
    monkeypatch.setattr(rpcwire, "_SEND_CHUNK", 700)  # and many chunks sent
    c = await connect(node)
    tid = (await c.call("task_post", {"account": "alice", "labels": ["a", "b"],
                                      "items": [f'item "{i}"\n' for i in range(200)]}))["result"]["task_id"]
    calls.clear()
    small = await c.call("node_info")
    big = await c.call("task_export", {"task_id": tid, "format": "csv"})
    assert len(big["result"]["content"]) >= 1000
    await c.send(json.dumps([{"jsonrpc": "2.0", "id": 7, "method": "node_info"},
                             {"jsonrpc": "2.0", "id": 8, "method": "task_export",
                              "params": {"task_id": tid, "format": "csv"}}]).encode() + b"\n")
    batch = await c.recv()
    assert [on_loop for on_loop, _ in calls] == [False, False]  # node_info never got here
    assert calls[0][1] == json.dumps(big, separators=(",", ":")).encode() + b"\n"
    assert calls[1][1] == json.dumps(batch, separators=(",", ":")).encode() + b"\n"
    assert batch[1]["result"] == big["result"] and batch[0]["result"] == small["result"]
    assert 'item ""199""' in big["result"]["content"]  # csv quoting survived the slicing


async def test_annotations_list_pages_are_bounded_by_labels_too(node, monkeypatch):
    """A page ends after the batch that reaches MAX_PAGE_LABELS labels (at least one
    batch per page); next_offset walks every batch exactly once; a page read in the
    worker thread is the same as one read on the loop, and its reply is encoded off the
    loop, an entry at a time."""
    import threading

    from node.rpc.methods import annotations as api

    c = await connect(node)
    tid = (await c.call("task_post", {"account": "alice", "labels": ["a", "b"], "items": [str(i) for i in range(8)],
                                      "duration_s": 60}))["result"]["task_id"]
    raws = [signed(make_batch(100 + k, bytes.fromhex(tid), [(i, (i + k) % 2) for i in range(1 + k % 4)],
                              created_at=T0), 100 + k, node.network_id).raw.hex() for k in range(30)]
    assert all(x["status"] == "accepted" for x in (await c.call("annotations_submit", {"raw": raws}))["result"]["results"])
    monkeypatch.setattr(api, "MAX_PAGE_LABELS", 5)
    seen, offset, pages = [], 0, 0
    while offset is not None:
        page = (await c.call("annotations_list", {"task_id": tid, "limit": 10_000, "offset": offset}))["result"]
        labels = [len(b["labels"]) for b in page["batches"]]
        assert sum(labels[:-1]) < 5 <= sum(labels) or page["next_offset"] is None
        seen += [b["batch_id"] for b in page["batches"]]
        offset, pages = page["next_offset"], pages + 1
    assert len(seen) == len(set(seen)) == page["total"] == 30 and pages > 5
    monkeypatch.setattr(api, "MAX_PAGE_LABELS", 10**9)
    inline = (await c.call("annotations_list", {"task_id": tid, "limit": 10_000}))["result"]
    assert inline["next_offset"] is None and [b["batch_id"] for b in inline["batches"]] == seen

    calls = []
    encode = encode_reply
    monkeypatch.setattr(rpcmod, "encode_reply", lambda obj: calls.append(threading.current_thread()) or encode(obj))
    monkeypatch.setattr(rpcwire, "THREAD_ENCODE_ITEMS", 30)
    monkeypatch.setattr(api, "LIST_THREAD_MIN_BATCHES", 1)
    threaded = (await c.call("annotations_list", {"task_id": tid, "limit": 10_000}))["result"]
    assert threaded == inline
    assert len(calls) == 1 and calls[0] is not threading.main_thread()

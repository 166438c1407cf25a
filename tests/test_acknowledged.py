"""Acknowledged means kept (issue #22): in-process nodes on the fake network, fake protocol clock.

A network split in two while annotators submit through both sides: an honest annotator
far past the old per-annotator cap of 1,024 batches on each side, and one that repeats
itself and labels items three ways on both sides. After the heal every node holds the
same set -- the keep rule's function of the union (protocol/keep.py) --, every node
computes the same roots, the validators certify that set, and nothing acknowledged is
lost: every batch of the honest annotator, and every label of the other one.
"""
from __future__ import annotations

import json
import random

import trio

from protocol.keep import compute_kept_batches
from protocol.messages import Outcome, decode_message

from node.core.verdicts import KEPT_OVERLAPPING, SURPLUS

from .fakenet import FakeNet
from .helpers import T0, FakeClock, advance, make_batch, make_task, signed, wait_for
from .test_certify import genesis, start

HONEST, REPEATER = 70, 71
PER_SIDE = 1_100   # one-label batches of the honest annotator through each side (old cap: 1,024 per node)
REPEATS = 150      # one- or two-label batches of the repeater through each side
HOT_ITEMS = 12     # ... all on the first items


async def submit(node, msgs):
    """Through one node's ingest, as annotations_submit {raw: [...]} does: (msg, verdict)."""
    out = []
    for k in range(0, len(msgs), 50):
        chunk = msgs[k:k + 50]
        res = await node.ingest_many([m.raw for m in chunk], "rpc", publish=True)
        out += [(m, v) for m, (v, _) in zip(chunk, res)]
    return out


def batch_ids(node, tid):
    return set(node.task_batches(tid))


async def test_a_partition_with_annotators_over_the_bound_converges_and_loses_nothing_acknowledged(tmp_path):
    g = genesis()
    net = FakeNet(seed=22)
    clock = FakeClock()
    rng = random.Random(22)
    nid = g.network_id
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        nodes = await start(nursery, tmp_path, net, g, clock)  # 4 validators
        net.connect_all()
        task = make_task(n_items=2 * PER_SIDE + 100, duration_ms=600_000)
        _, tid = await nodes[0].ingest(signed(task, 1, nid).raw, "rpc", publish=True)
        await wait_for(lambda: all(tid in n.tasks for n in nodes))
        net.partition(["v0", "v1"], ["v2", "v3"])

        honest = {0: [], 1: []}
        repeats = {0: [], 1: []}
        for side in (0, 1):
            for k in range(PER_SIDE):
                item = side * PER_SIDE + k
                honest[side].append(signed(make_batch(HONEST, tid, [(item, rng.randrange(3))],
                                                      created_at=T0 + 1 + k), HONEST, nid))
            for k in range(REPEATS):
                items = rng.sample(range(HOT_ITEMS), rng.choice((1, 1, 2)))
                repeats[side].append(signed(make_batch(REPEATER, tid, [(i, rng.randrange(3)) for i in items],
                                                       created_at=T0 + 1 + rng.randrange(10_000)), REPEATER, nid))
        acked = []  # (msg, verdict) acknowledged (stored) by some node
        for side in (0, 1):
            mixed = honest[side] + repeats[side]
            rng.shuffle(mixed)
            for k in range(0, len(mixed), 100):
                node = nodes[2 * side + rng.randrange(2)]
                acked += [(m, v) for m, v in await submit(node, mixed[k:k + 100])
                          if v.outcome is Outcome.ACCEPT]
        statuses = [v for _, v in acked]
        assert all(v.outcome is Outcome.ACCEPT for v in statuses)
        assert statuses.count(KEPT_OVERLAPPING) > 0  # the repeater was told

        # each side alone holds more of the honest annotator's batches than the old cap
        await wait_for(lambda: all(len(batch_ids(n, tid)) > 1_024 for n in nodes), 60)
        assert batch_ids(nodes[0], tid) != batch_ids(nodes[3], tid)

        net.connect_all()
        everything = [(m.compute_id(nid), m.body) for side in (0, 1) for m in honest[side] + repeats[side]]
        want = compute_kept_batches(everything)
        await wait_for(lambda: all(batch_ids(n, tid) == want for n in nodes), 120)

        # nothing acknowledged is lost: every honest batch; every label of the repeater
        held = batch_ids(nodes[0], tid)
        assert all(m.compute_id(nid) in held for side in (0, 1) for m in honest[side])
        kept_votes = {}
        for bid in held:
            b = nodes[0].task_batches(tid, [bid])[bid]
            for item, label in b.labels:
                kept_votes.setdefault((b.annotator, item), set()).add(label)
        for m, _ in acked:
            for item, label in m.body.labels:
                got = kept_votes[(m.body.annotator, item)]
                assert label in got or len(got) >= 2  # kept, or the item shows the equivocation
        # the repeater keeps at most two batches per item it labelled
        repeater = repeats[0][0].body.annotator
        assert sum(1 for b in held if nodes[0].task_batches(tid, [b])[b].annotator == repeater) <= 2 * HOT_ITEMS
        assert len({n.task_result(tid).result_root for n in nodes}) == 1
        assert len({n.task_result(tid).set_root for n in nodes}) == 1
        counts = {tuple(sorted(n.store.count_by_kind().items())) for n in nodes}
        assert len(counts) == 1

        clock.now = task.deadline  # nothing more to submit: on to finality
        async with trio.open_nursery() as clk:
            clk.start_soon(advance, clock, task.deadline + 400_000)
            await wait_for(lambda: all(n.finality.is_certified(tid) for n in nodes), 60)
            clk.cancel_scope.cancel()
        certs = {n.finality.tasks[tid].certificate.value for n in nodes}
        assert len(certs) == 1
        _, res = nodes[1].finality.certified_result(tid)
        assert res is not None and set(res.batch_ids) == want
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ RPC and CLI: retry, verify, sign offline

from .test_ops import genesis as ops_genesis, make_data_dir, run_cli, start_ops_node  # noqa: E402
from .helpers import RpcConn, key, pk  # noqa: E402


async def call(node, method, params=None):
    c = await RpcConn.open(node.rpc_socket)
    return await c.call(method, params or {})


async def post_task(node, n_items=5, duration_s=60):
    r = await call(node, "task_post", {"account": "alice", "title": "t", "labels": ["a", "b", "c"],
                                       "items": [f"i{k}" for k in range(n_items)], "duration_s": duration_s})
    return r["result"]


async def test_a_retry_with_the_same_created_at_is_the_same_batch(short_dir, nursery):
    clock = FakeClock()
    g = ops_genesis()
    node = await start_ops_node(nursery, make_data_dir(short_dir / "n", g), g, clock, metrics_listen="")
    tid = (await post_task(node))["task_id"]
    p = {"account": "ann1", "task_id": tid, "labels": [[0, "a"], [1, 2]], "created_at": T0 + 5}
    first = (await call(node, "annotations_submit", p))["result"]
    clock.now += 1000  # the retry comes later: the node's clock is not what signs it
    again = (await call(node, "annotations_submit", p))["result"]
    assert first["status"] == "accepted" and again["status"] == "duplicate"
    assert again["batch_id"] == first["batch_id"] and again["created_at"] == T0 + 5
    assert len(node.task_batches(bytes.fromhex(tid))) == 1
    # without created_at a retry is another batch with the same labels: never stored twice (the
    # keep rule keeps the one with the smaller id), and the client is told which way it went
    p2 = {"account": "ann2", "task_id": tid, "labels": [[3, 1]]}
    a = (await call(node, "annotations_submit", p2))["result"]
    clock.now += 1000
    b = (await call(node, "annotations_submit", p2))["result"]
    assert a["batch_id"] != b["batch_id"]
    assert (a["status"], b["status"]) in {("accepted", "redundant"), ("accepted", "accepted_overlapping")}
    ann2 = [x for x in node.task_batches(bytes.fromhex(tid)).values() if x.annotator == pk(52)]
    assert len(ann2) == 1
    for bad in (-1, 1 << 63, "soon", True, 1.5):
        r = await call(node, "annotations_submit", {**p, "created_at": bad})
        assert r["error"]["code"] == -32602 and "created_at" in r["error"]["message"]
    r = await call(node, "annotations_submit", {**p, "created_at": clock.now + 10**9})  # far ahead of the clock
    assert r["error"]["code"] == -32002 and "future" in r["error"]["message"]


async def test_messages_held_reads_the_store_and_survives_a_restart(short_dir):
    g = ops_genesis()
    dd = make_data_dir(short_dir / "n", g)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        node = await start_ops_node(nursery, dd, g, clock, metrics_listen="")
        tid = (await post_task(node))["task_id"]
        bid = (await call(node, "annotations_submit", {"account": "ann1", "task_id": tid, "labels": [[0, 1]]}))[
            "result"]["batch_id"]
        ids = [tid, bid, "00" * 32]
        r = (await call(node, "messages_held", {"ids": ids}))["result"]
        assert r == {"held": [True, True, False], "count": 2}
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        node = await start_ops_node(nursery, dd, g, clock, metrics_listen="")
        assert (await call(node, "messages_held", {"ids": ids}))["result"] == {"held": [True, True, False], "count": 2}
        for bad in ({}, {"ids": []}, {"ids": "ab"}, {"ids": ["00" * 32] * 10_001}, {"ids": ["zz" * 32]},
                    {"ids": ["00" * 31]}, {"ids": [7]}):
            r = await call(node, "messages_held", bad)
            assert r["error"]["code"] == -32602 and "ids" in r["error"]["message"], bad
        nursery.cancel_scope.cancel()


async def test_certificate_get_pages_through_the_pinned_ids(short_dir, nursery):
    clock = FakeClock()
    g = ops_genesis()
    node = await start_ops_node(nursery, make_data_dir(short_dir / "n", g), g, clock, metrics_listen="")
    task = await post_task(node, duration_s=5)
    tid = task["task_id"]
    want = set()
    for n, who in enumerate(("ann1", "ann2", "ann3")):
        want.add((await call(node, "annotations_submit", {"account": who, "task_id": tid,
                                                          "labels": [[n, 1]]}))["result"]["batch_id"])
    r = (await call(node, "certificate_get", {"task_id": tid, "ids": True}))["result"]
    assert r["certified"] is False and r["pinned"] is None
    async with trio.open_nursery() as clk:
        clk.start_soon(advance, clock, task["deadline_ms"] + 30_000)
        await wait_for(lambda: node.finality.is_certified(bytes.fromhex(tid)), 30)
        clk.cancel_scope.cancel()
    got, offset = [], 0
    while offset is not None:
        page = (await call(node, "certificate_get", {"task_id": tid, "ids": True, "limit": 2, "offset": offset}))[
            "result"]["pinned"]
        got += page["ids"]
        offset = page["next_offset"]
    assert page["total"] == 3 and got == sorted(want)
    assert "pinned" not in (await call(node, "certificate_get", {"task_id": tid}))["result"]
    for bad in ({"ids": "yes"}, {"ids": True, "limit": 0}, {"ids": True, "limit": 10_001}, {"ids": True, "offset": -1}):
        r = await call(node, "certificate_get", {"task_id": tid, **bad})
        assert r["error"]["code"] == -32602, bad


async def test_sign_offline_then_any_node_accepts_the_raw_batch(short_dir, nursery, capsys):
    g = ops_genesis()
    node = await start_ops_node(nursery, make_data_dir(short_dir / "n", g), g, FakeClock(), metrics_listen="")
    tid = (await post_task(node))["task_id"]
    # a data dir with the annotator's key and the genesis, and no node running on it
    offline = make_data_dir(short_dir / "offline", g)
    code, out, err = await run_cli(capsys, "sign", tid, 0, "b", 2, 0, "--labels", "a,b,c", "--account", "ann3",
                                   "--created-at", T0 + 7, "--data-dir", offline, "--json")
    assert code == 0, err
    signed_ = json.loads(out)
    assert signed_["labels"] == 2 and signed_["annotator"] == pk(53).hex() and signed_["network_id"] == g.network_id.hex()
    m = decode_message(bytes.fromhex(signed_["raw"]), g.params)
    assert m.body.labels == ((0, 1), (2, 0)) and m.body.created_at == T0 + 7
    r = (await call(node, "annotations_submit", {"raw": signed_["raw"]}))["result"]
    assert r == {"batch_id": signed_["batch_id"], "status": "accepted", "labels": 2}
    # the genesis can also come from a file, without any config in the data dir
    bare = short_dir / "bare"
    bare.mkdir()
    from node.keystore import Keystore
    Keystore(bare).create("default", seed=bytes(key(53)))
    (short_dir / "g.json").write_text(g.to_json())
    code, out, _ = await run_cli(capsys, "sign", tid, 0, 1, 2, 0, "--created-at", T0 + 7, "--data-dir", bare,
                                 "--genesis", short_dir / "g.json")
    assert code == 0 and out.strip() == signed_["raw"]  # same key, labels and time: the same bytes
    # bad input: one clear line each, exit status 2, nothing printed on stdout
    for argv, why in [((tid, 0), "pairs"), (("abc", 0, 1), "64 hex"), ((tid, "x", 1), "integer"),
                      ((tid, 0, "dog"), "--labels"), ((tid, 0, 1, 0, 2), "twice"), ((tid, 0, 1, "--account", "nobody"), "nobody"),
                      ((tid, 0, 1, "--created-at", -5), "created-at")]:
        code, out, err = await run_cli(capsys, "sign", *argv, "--data-dir", offline)
        assert code == 2 and not out and why in err, (argv, err)
    code, out, err = await run_cli(capsys, "sign", tid, 0, 1, "--data-dir", short_dir / "nothing-here")
    assert code == 2 and "--genesis" in err
    (short_dir / "huge.json").write_text("{" + " " * (70 << 20))
    code, _, err = await run_cli(capsys, "sign", tid, 0, 1, "--data-dir", offline, "--genesis", short_dir / "huge.json")
    assert code == 2 and "not a genesis" in err
    code, out, err = await run_cli(capsys, "sign", tid, 4, 1, "--data-dir", offline, "--account", "ann3",
                                   "--created-at", 0)
    assert code == 0, err  # the signer knows no task: the node judges the time against it (valid: before the deadline)
    assert (await call(node, "annotations_submit", {"raw": out.strip()}))["result"]["status"] == "accepted"


def test_label_sends_the_same_batch_again_when_the_node_does_not_answer(short_dir, capsys):
    """A node that takes the request and never answers, then answers the retry: the CLI
    sends the very same params (created_at included) both times."""
    import socket
    import threading

    from node import cli as cli_main

    dd = short_dir / "n"
    dd.mkdir()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(dd / "node.sock"))
    srv.listen(4)
    seen, hanging = [], []
    tid = "cd" * 32

    def serve():  # label asks for the task (tasks_list, task_items), then submits
        answered = False
        while not answered:
            c, _ = srv.accept()
            req = json.loads(c.makefile("rb").readline())
            if req["method"] == "annotations_submit":
                seen.append(req["params"])
                if len(seen) == 1:
                    hanging.append(c)  # took the request, never answers
                    continue
                res = {"batch_id": "ab" * 32, "status": "duplicate", "labels": 1,
                       "created_at": req["params"]["created_at"]}
                answered = True
            elif req["method"] == "tasks_list":
                res = {"total": 1, "tasks": [{"task_id": tid, "title": "t", "status": "open"}]}
            else:  # task_items: not needed here
                c.sendall(json.dumps({"jsonrpc": "2.0", "id": req["id"],
                                      "error": {"code": -32601, "message": "no"}}).encode() + b"\n")
                c.close()
                continue
            c.sendall(json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": res}).encode() + b"\n")
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    code = cli_main.main(["label", tid, "0", "1", "--data-dir", str(dd), "--timeout", "0.5", "--json"])
    t.join(5)
    srv.close()
    for c in hanging:
        c.close()
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["status"] == "duplicate"
    assert len(seen) == 2 and seen[0] == seen[1] and "created_at" in seen[0]
    assert "sending the same batch again" in err
    assert cli_main.main(["label", "cd" * 32, "0", "1", "--data-dir", str(dd), "--timeout", "0.5"]) == 3  # nobody there
    assert cli_main.main(["label", "cd" * 32, "0", "1", "--data-dir", str(dd), "--timeout", "0"]) == 2
    assert "--timeout" in capsys.readouterr().err


async def test_task_items_counts_follow_the_batches_the_keep_rule_drops(short_dir, nursery):
    """The web UI's index of who labelled what (rpc/methods/labeling.py) reads the task
    again when the keep rule deleted batches, instead of skipping new arrivals."""
    from protocol.messages import AnnotationBatch, sign_message

    g = ops_genesis()
    node = await start_ops_node(nursery, make_data_dir(short_dir / "n", g), g, FakeClock(), metrics_listen="")
    tid = (await post_task(node))["task_id"]

    def bid(created_at, labels):
        b = AnnotationBatch(annotator=pk(52), task_id=bytes.fromhex(tid), created_at=created_at, labels=labels)
        return sign_message(b, key(52), g.network_id).compute_id(g.network_id)

    one, two = ((0, 1),), ((0, 1), (2, 2))
    first, second = next((a, b) for a, b in ((T0 + k, T0 + k + 1) for k in range(100)) if bid(b, two) < bid(a, one))
    p = {"account": "ann2", "task_id": tid}
    r = (await call(node, "annotations_submit", {**p, "labels": [[0, 1]], "created_at": first}))["result"]
    assert r["status"] == "accepted"
    page = (await call(node, "task_items", {"task_id": tid, "account": "ann2"}))["result"]
    assert (page["labelled"], page["batches_used"], page["batches_cap"]) == (1, 1, 10)
    r = (await call(node, "annotations_submit", {**p, "labels": [[0, 1], [2, 2]], "created_at": second}))["result"]
    assert r["status"] == "accepted_overlapping" and not node.store.has(bid(first, one))  # the first one is dropped
    page = (await call(node, "task_items", {"task_id": tid, "account": "ann2"}))["result"]
    assert (page["labelled"], page["batches_used"]) == (2, 1)

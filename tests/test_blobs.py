"""Blob transfer: pure frames, the file store, in-process fetch/prefetch/verification, and a real devnet."""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path

import pytest
import trio

from node.rpc import methods as api
from node.storage.blobstore import BlobError, BlobInputError, BlobStore
from node.keystore import Keystore
from node.rpc.errors import INVALID_PARAMS, NOT_FOUND, UNAVAILABLE, RpcError
from protocol import blobs as bp
from protocol.codec import pack

from .fakenet import FakeNet
from .helpers import make_test_genesis
from .helpers import FakeClock, fake_node, wait_for
from .helpers import cli



# ------------------------------------------------------------------ pure frames


def test_request_roundtrip_and_limits():
    d = os.urandom(32)
    assert bp.decode_blob_request(bp.encode_blob_request(d, 5, 100)) == (d, 5, 100)
    for bad in [b"", b"\xc1", pack([d, 0]), pack([d[:31], 0, 1]), pack([d, -1, 1]), pack([d, 0, 0]),
                pack([d, 0, bp.MAX_CHUNK_BYTES + 1]), pack(["x", 0, 1]), pack([d, 0, 1]) + b"\x00",
                b"\x93" + b"\xc4\x20" + d + b"\x00\x01" * 50]:
        with pytest.raises(bp.BlobProtocolError):
            bp.decode_blob_request(bad)


def test_response_must_be_exactly_the_range_asked():
    data = os.urandom(3000)
    ok = bp.encode_blob_data(3000, data[1000:2000])
    assert bp.decode_blob_response(ok, 1000, 1000, 10_000) == (3000, data[1000:2000])
    tail = bp.encode_blob_data(3000, data[2500:])
    assert bp.decode_blob_response(tail, 2500, 1000, 10_000) == (3000, data[2500:])  # clipped to the size
    assert bp.decode_blob_response(bp.encode_blob_missing("not held"), 0, 10, 100) == "not held"
    with pytest.raises(bp.BlobProtocolError):  # one byte short
        bp.decode_blob_response(bp.encode_blob_data(3000, data[1000:1999]), 1000, 1000, 10_000)
    with pytest.raises(bp.BlobProtocolError):  # over the size limit
        bp.decode_blob_response(bp.encode_blob_data(3000, data[:10]), 0, 10, 2999)
    for bad in [b"", pack([]), pack([7, 1, b""]), pack([0, -1, b""]), pack([0, 10, "str"]), pack([1])]:
        with pytest.raises(bp.BlobProtocolError):
            bp.decode_blob_response(bad, 0, 10, 100)


def test_plan_chunks_covers_the_blob_once():
    for size in [0, 1, bp.MAX_CHUNK_BYTES - 1, bp.MAX_CHUNK_BYTES, 3 * bp.MAX_CHUNK_BYTES + 7]:
        plan = bp.plan_chunks(size)
        if size:
            assert sum(n for _, n in plan) == size
            assert [o for o, _ in plan] == list(range(0, size, bp.MAX_CHUNK_BYTES))


# ------------------------------------------------------------------ the file store


def test_blob_store_import_is_content_addressed_and_atomic(tmp_path):
    s = BlobStore(tmp_path / "blobs")
    src = tmp_path / "img.bin"
    data = os.urandom(2_500_000)
    src.write_bytes(data)
    digest, size = s.import_file(src, 64 << 20)
    assert digest == hashlib.sha256(data).digest() and size == len(data)
    assert s.path(digest).read_bytes() == data
    assert s.read(digest, 100, 50) == data[100:150]
    digest2, _ = s.import_file(src, 64 << 20)  # same bytes: stored once
    assert digest2 == digest and s.count == 1
    assert list(s.tmp.iterdir()) == []
    with pytest.raises(BlobInputError, match="max_blob_bytes"):
        s.import_file(src, 1000)
    with pytest.raises(BlobInputError, match="cannot read"):
        s.import_file(tmp_path / "nope", 1000)
    inc = s.begin()
    inc.write(b"not what was promised")
    with pytest.raises(BlobError, match="hash"):
        inc.finish(hashlib.sha256(b"something else").digest())
    assert list(s.tmp.iterdir()) == [] and s.count == 1
    # a crash mid-write leaves a .part file: removed at the next start, never visible as a blob
    (s.tmp / "dead.part").write_bytes(b"half")
    s2 = BlobStore(tmp_path / "blobs")
    assert list(s2.tmp.iterdir()) == [] and s2.count == 1 and s2.bytes == len(data)


# ------------------------------------------------------------------ in-process nodes


async def start(nursery, tmp_path, net, names, clock, g, *, prefetch=True):
    out = []
    for name in names:
        ks = Keystore(tmp_path / name)
        ks.create("req")
        n = fake_node(net, name, tmp_path / name, g, clock=clock, keystore=ks, sync_interval_s=0.2)
        n.blobs.prefetch = prefetch
        await nursery.start(n.run)
        out.append(n)
    return out


async def post_files(node, tmp_path, blobs: list[bytes], extra_items=()):
    items = []
    for k, data in enumerate(blobs):
        p = tmp_path / f"file{k}.png"
        p.write_bytes(data)
        items.append({"file": str(p)})
    r = await api.task_post(node, {"account": "req", "labels": ["a", "b"], "items": items + list(extra_items),
                                   "duration_s": 60, "title": "blobs"})
    return bytes.fromhex(r["task_id"])


async def test_blobs_spread_by_prefetch_and_verify(tmp_path):
    g = make_test_genesis()
    net = FakeNet(seed=11)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        a, b, c = await start(nursery, tmp_path, net, ["a", "b", "c"], clock, g)
        net.connect("a", "b")
        net.connect("b", "c")  # c reaches a's blobs only through b, which serves what it fetched
        blobs = [os.urandom(2 * bp.MAX_CHUNK_BYTES + 12345), b"", os.urandom(10)]
        tid = await post_files(a, tmp_path, blobs)
        task = (await api.task_get(a, {"task_id": tid.hex()}))
        assert [it["size"] for it in task["items"]] == [len(x) for x in blobs]
        assert task["items"][0]["media_type"] == "image/png"
        digests = [hashlib.sha256(x).digest() for x in blobs]
        await wait_for(lambda: all(n.blobs.store.has(d) for n in (b, c) for d in digests), 30)
        for n in (b, c):
            for d, data in zip(digests, blobs):
                assert n.blobs.store.path(d).read_bytes() == data
        assert b.blobs.served_chunks >= 3  # b served c
        await wait_for(lambda: c.blobs.status()["stored"] == 3 and c.blobs.status()["wanted"] == 0, 10)
        info = await api.node_info(c, {})
        assert info["blobs"]["stored_bytes"] == sum(map(len, blobs)) and info["blobs"]["fetching"] == 0
        r = await api.METHODS["blob_get"](c, {"task_id": tid.hex(), "item": 0})
        assert r["source"] == "local" and r["size"] == len(blobs[0])
        nursery.cancel_scope.cancel()


async def test_blob_get_on_demand_and_read_back(tmp_path):
    g = make_test_genesis()
    net = FakeNet(seed=12)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        a, b = await start(nursery, tmp_path, net, ["a", "b"], clock, g, prefetch=False)
        net.connect_all()
        data = os.urandom(bp.MAX_CHUNK_BYTES + 1)
        tid = await post_files(a, tmp_path, [data], extra_items=["inline text"])
        await wait_for(lambda: tid in b.tasks, 10)
        assert not b.blobs.store.has(hashlib.sha256(data).digest())  # no prefetch
        r = await api.METHODS["blob_get"](b, {"task_id": tid.hex(), "item": 0})
        assert r == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "media_type": "image/png",
                     "source": "peer", "peer_id": "a"}
        got = b""
        while len(got) < r["size"]:
            part = await api.METHODS["blob_read"](b, {"sha256": r["sha256"], "offset": len(got)})
            got += bytes.fromhex(part["data"])
        assert got == data
        # bad input: clear errors, never a crash
        for params, code in [({"task_id": tid.hex(), "item": 1}, INVALID_PARAMS),
                             ({"task_id": tid.hex(), "item": 5}, NOT_FOUND), ({}, INVALID_PARAMS),
                             ({"sha256": "zz"}, INVALID_PARAMS)]:
            with pytest.raises(RpcError) as e:
                await api.METHODS["blob_get"](b, params)
            assert e.value.code == code, params
        with pytest.raises(RpcError) as e:
            await api.METHODS["blob_read"](b, {"sha256": "00" * 32})
        assert e.value.code == NOT_FOUND
        with pytest.raises(RpcError) as e:
            await api.METHODS["blob_read"](b, {"sha256": r["sha256"], "length": bp.MAX_CHUNK_BYTES + 1})
        assert e.value.code == INVALID_PARAMS
        nursery.cancel_scope.cancel()


async def test_no_peer_has_the_blob_is_unavailable(tmp_path):
    g = make_test_genesis()
    net = FakeNet(seed=13)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        a, b = await start(nursery, tmp_path, net, ["a", "b"], clock, g)
        net.connect_all()
        ghost = os.urandom(32)
        r = await api.task_post(a, {"account": "req", "labels": ["a", "b"], "duration_s": 60,
                                    "items": [{"sha256": ghost.hex(), "size": 1000}]})
        await wait_for(lambda: bytes.fromhex(r["task_id"]) in b.tasks, 10)
        with pytest.raises(RpcError) as e:
            await api.METHODS["blob_get"](b, {"task_id": r["task_id"], "item": 0})
        assert e.value.code == UNAVAILABLE
        assert "no connected peer has blob" in e.value.message and "asked 1 of 1" in e.value.message
        nursery.cancel_scope.cancel()


async def test_task_post_file_errors(tmp_path):
    g = make_test_genesis(max_blob_bytes=1000)
    net = FakeNet(seed=14)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        (a,) = await start(nursery, tmp_path, net, ["a"], clock, g)
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * 1001)
        for item, msg in [({"file": str(big)}, "max_blob_bytes is 1000"), ({"file": "rel/path.png"}, "absolute"),
                          ({"file": str(tmp_path / "missing")}, "cannot read"), ({"file": 3}, "path string"),
                          ({"file": str(tmp_path)}, "not a regular file")]:
            with pytest.raises(RpcError) as e:
                await api.task_post(a, {"account": "req", "labels": ["a", "b"], "items": [item]})
            assert e.value.code == INVALID_PARAMS and msg in e.value.message, (item, e.value.message)
        assert a.tasks == {} and a.blobs.store.count == 0
        nursery.cancel_scope.cancel()


async def test_lying_peer_is_penalised_and_an_honest_one_serves(tmp_path):
    g = make_test_genesis()
    net = FakeNet(seed=15)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        a, b = await start(nursery, tmp_path, net, ["a", "b"], clock, g, prefetch=False)
        data = os.urandom(3000)
        tid = await post_files(a, tmp_path, [data])
        digest = hashlib.sha256(data).digest()
        evil = net.make("evil")
        evil.running = True
        calls = {"n": 0}

        async def liar(peer, req):
            calls["n"] += 1
            d, off, ln = bp.decode_blob_request(req)
            wrong = bytearray(data)
            wrong[7] ^= 1
            return bp.encode_blob_data(len(wrong), bytes(wrong[off: off + ln]))

        evil.set_request_handler(b.blobs.protocol_id, liar)
        net.connect("b", "evil")
        net.connect("a", "b")
        await wait_for(lambda: tid in b.tasks, 10)
        # only the liar connected: refused after hashing, nothing stored
        net.cut("a", "b")
        with pytest.raises(RpcError) as e:
            await api.METHODS["blob_get"](b, {"task_id": tid.hex(), "item": 0})
        assert e.value.code == UNAVAILABLE and "wrong bytes" in e.value.message
        assert not b.blobs.store.has(digest) and list(b.blobs.store.tmp.iterdir()) == []
        assert b.blobs.peers["evil"].penalty == 1
        # with the honest node back, the blob arrives whoever is asked first
        net.connect("a", "b")
        r = await api.METHODS["blob_get"](b, {"task_id": tid.hex(), "item": 0})
        assert r["peer_id"] == "a"
        assert b.blobs.store.path(digest).read_bytes() == data
        assert calls["n"] <= 2
        nursery.cancel_scope.cancel()


async def test_oversized_announcement_is_refused(tmp_path):
    g = make_test_genesis()
    net = FakeNet(seed=16)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        (b,) = await start(nursery, tmp_path, net, ["b"], clock, g)
        evil = net.make("evil")
        evil.running = True

        async def huge(peer, req):  # claims a blob bigger than the network allows
            d, off, ln = bp.decode_blob_request(req)
            return bp.encode_blob_data(g.params.max_blob_bytes + 1, b"\x00" * ln)

        evil.set_request_handler(b.blobs.protocol_id, huge)
        net.connect("b", "evil")
        with pytest.raises(RpcError) as e:
            await api.METHODS["blob_get"](b, {"sha256": os.urandom(32).hex()})
        assert e.value.code == UNAVAILABLE and "misbehaved" in e.value.message
        # asked for a 10-byte blob: a 64 MiB announcement is refused before any byte is kept
        ghost = os.urandom(32)
        from node.services.blobs import BlobUnavailableError
        with pytest.raises(BlobUnavailableError):
            await b.blobs.ensure(ghost, 10)
        assert b.blobs.peers["evil"].penalty == 2 and b.blobs.store.count == 0
        assert list(b.blobs.store.tmp.iterdir()) == []
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ real devnet over libp2p




@pytest.mark.devnet
def test_devnet_blob_posted_on_one_node_is_fetched_on_another(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="lmblob", dir="/tmp"))
    try:
        cli("devnet", "up", "-n", "3", "--root", str(root))
        data = random.Random(3).randbytes(3 * bp.MAX_CHUNK_BYTES + 5)
        items = tmp_path / "items.jsonl"
        (tmp_path / "scan.jpg").write_bytes(data)
        items.write_text(json.dumps({"file": "scan.jpg"}) + "\n" + json.dumps("a text item") + "\n")
        out = cli("task", "post", str(items), "--labels", "ok,bad", "--account", "requester", "--duration", "600",
                  "--json", "--data-dir", str(root / "node-0"))
        tid = json.loads(out.stdout)["task_id"]
        dest = tmp_path / "got.jpg"
        # node 2 gets it from a peer (prefetch or on demand, whichever comes first)
        r = cli("blob", "get", tid, "0", "--out", str(dest), "--json", "--data-dir", str(root / "node-2"))
        res = json.loads(r.stdout)
        assert dest.read_bytes() == data and res["sha256"] == hashlib.sha256(data).hexdigest()
        r = cli("blob", "get", tid, "1", "--out", str(dest), "--data-dir", str(root / "node-2"), check=False)
        assert r.returncode != 0 and "inline" in r.stderr
        ghost = cli("rpc", "blob_get", json.dumps({"sha256": "ab" * 32}), "--data-dir", str(root / "node-1"),
                    check=False)
        assert ghost.returncode != 0 and "-32004" in ghost.stderr
    finally:
        cli("devnet", "down", "--root", str(root), check=False, timeout=60)
        import shutil
        shutil.rmtree(root, ignore_errors=True)


async def test_prefetch_is_bounded_and_skips_closed_or_huge_tasks(tmp_path):
    g = make_test_genesis()
    net = FakeNet(seed=17)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        net.nursery = nursery
        a, b = await start(nursery, tmp_path, net, ["a", "b"], clock, g)
        running, peak = [0], [0]
        real = b.blobs._fetch

        async def counting(digest, size):
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            try:
                await trio.sleep(0.01)
                return await real(digest, size)
            finally:
                running[0] -= 1

        b.blobs._fetch = counting
        net.connect_all()
        blobs = [os.urandom(100 + k) for k in range(12)]
        tid = await post_files(a, tmp_path, blobs)
        await wait_for(lambda: all(b.blobs.store.has(hashlib.sha256(x).digest()) for x in blobs), 30)
        assert 1 <= peak[0] <= 2  # max_concurrent_fetches
        # a task over the prefetch budget is left for on-demand fetching
        b.blobs.prefetch_max_task_bytes = 1000
        big = [os.urandom(600), os.urandom(601)]
        tid2 = await post_files(a, tmp_path, big)
        await wait_for(lambda: tid2 in b.tasks, 10)
        assert b.blobs.status()["wanted"] == 0
        assert not any(b.blobs.store.has(hashlib.sha256(x).digest()) for x in big)
        # once closed, a task is not prefetched either
        clock.now += 120_000
        b.blobs.prefetch_max_task_bytes = 1 << 30
        b.blobs.on_task(tid2, b.tasks[tid2])
        assert b.blobs.status()["wanted"] == 0
        nursery.cancel_scope.cancel()

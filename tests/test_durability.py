"""Durability on real processes: kill -9 right after an ack, restart and catch-up, a late
joiner, and a full filesystem seen through the RPC socket (slow tier, marked `devnet`).

No timed assertions: every wait is on a condition, bounded.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nacl.signing
import pytest

from devtools.processes import start_node
from node.rpc import RpcCallError, RpcClient
from protocol.messages import AnnotationBatch, compute_set_root, sign_message
from .helpers import cli, poll

pytestmark = pytest.mark.devnet

ROOT = Path(__file__).resolve().parent.parent




def rpc(data_dir: Path, method: str, params=None, timeout: float = 30.0):
    with RpcClient(Path(data_dir) / "node.sock", timeout=timeout) as c:
        return c.call(method, params or {})


wait = functools.partial(poll, interval=0.1, retry_on=(OSError, RpcCallError, ConnectionError))  # node (re)starting


def batch_raw(network_id: bytes, task_id: bytes, annotator: int, n_items: int, created_at: int | None = None,
              labels_per_batch: int | None = None) -> tuple[str, bytes]:
    """A signed batch by simulated annotator ``annotator`` labelling every item; (hex raw, batch id)."""
    sk = nacl.signing.SigningKey(annotator.to_bytes(4, "big") + b"durability" + bytes(18))
    pairs = tuple((i, (i * 7 + annotator) % 2) for i in range(labels_per_batch or n_items))
    b = AnnotationBatch(annotator=bytes(sk.verify_key), task_id=task_id,
                        created_at=created_at or int(time.time() * 1000), labels=pairs)
    m = sign_message(b, sk, network_id)
    return m.raw.hex(), m.compute_id(network_id)


def all_batch_ids(data_dir: Path, task_id: str) -> set[str]:
    out, offset = set(), 0
    while True:
        r = rpc(data_dir, "annotations_list", {"task_id": task_id, "limit": 10_000, "offset": offset})
        out |= {b["batch_id"] for b in r["batches"]}
        offset += len(r["batches"])
        if offset >= r["total"] or not r["batches"]:
            return out


def roots(data_dir: Path, task_id: str) -> tuple[str, str]:
    r = rpc(data_dir, "consensus_get", {"task_id": task_id, "items": False})
    return r["set_root"], r["result_root"]


def _pid(root: Path, i: int) -> int:
    return json.loads((root / "pids.json").read_text())[str(i)]["pid"]


def _gone(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    p = Path(f"/proc/{pid}/stat")
    return not p.exists() or p.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_acked_batches_survive_kill_9_right_after_the_ack(devnet_root):
    root = devnet_root
    cli("devnet", "up", "-n", "1", "--root", str(root))
    dd = root / "node-0"
    nid = bytes.fromhex(json.loads((root / "devnet.json").read_text())["network_id"])
    t = rpc(dd, "task_post", {"account": "requester", "labels": ["a", "b"], "items": [f"x{i}" for i in range(40)],
                              "duration_s": 3600})
    tid = t["task_id"]
    acked: list[bytes] = []
    for rnd in range(3):
        # a burst of acks, then SIGKILL within microseconds of the last one
        with RpcClient(dd / "node.sock") as c:
            for k in range(5):
                raw, bid = batch_raw(nid, bytes.fromhex(tid), 10 * rnd + k, 40)
                r = c.call("annotations_submit", {"raw": raw})
                assert r["status"] == "accepted"
                acked.append(bid)
            pid = _pid(root, 0)
            os.kill(pid, signal.SIGKILL)
        wait(lambda: _gone(pid), 30, "the killed node to exit")
        start_node(root, 0)
        wait(lambda: rpc(dd, "node_info"), 60, "the node to restart")
        held = all_batch_ids(dd, tid)
        assert held == {b.hex() for b in acked}, f"round {rnd}: lost {len(set(b.hex() for b in acked) - held)}"
        set_root, result_root = roots(dd, tid)
        assert set_root == compute_set_root(bytes.fromhex(tid), acked).hex()
        # the result is a pure function of the set: the same roots before and after another kill -9
        pid = _pid(root, 0)
        os.kill(pid, signal.SIGKILL)
        wait(lambda: _gone(pid), 30, "the killed node to exit")
        start_node(root, 0)
        wait(lambda: rpc(dd, "node_info"), 60, "the node to restart")
        assert roots(dd, tid) == (set_root, result_root)
    info = rpc(dd, "node_info")
    assert info["messages"]["by_kind"].get("batch") == len(acked) == 15


def test_killed_node_catches_up_and_a_late_joiner_too(devnet_root, tmp_path):
    root = devnet_root
    cli("devnet", "up", "-n", "3", "--root", str(root))
    meta = json.loads((root / "devnet.json").read_text())
    nid = bytes.fromhex(meta["network_id"])
    dds = [root / f"node-{i}" for i in range(3)]
    t = rpc(dds[0], "task_post", {"account": "requester", "labels": ["a", "b"],
                                  "items": [f"x{i}" for i in range(200)], "duration_s": 3600})
    tid = t["task_id"]
    wait(lambda: all(any(x["task_id"] == tid for x in rpc(d, "tasks_list")["tasks"]) for d in dds), 60,
         "the task on every node")
    pid2 = _pid(root, 2)
    os.kill(pid2, signal.SIGKILL)
    wait(lambda: _gone(pid2), 30, "node 2 to exit")
    ids = set()
    for k in range(60):  # submitted while node 2 is down
        raw, bid = batch_raw(nid, bytes.fromhex(tid), 1000 + k, 200)
        assert rpc(dds[k % 2], "annotations_submit", {"raw": raw})["status"] == "accepted"
        ids.add(bid.hex())
    last_submit = time.monotonic()
    start_node(root, 2)
    wait(lambda: all_batch_ids(dds[2], tid) == ids, 90, "node 2 to catch up after its restart")
    wait(lambda: len({roots(d, tid) for d in dds}) == 1, 60, "identical roots on the three nodes")
    # (after a short outage part of the gap may come from gossipsub's IHAVE/IWANT repair, which
    # keeps the last ~5 heartbeats of messages; sync brings the rest)

    # a late joiner: a fresh data dir initialised from the network's genesis, bootstrapping from
    # node 0, started once the history is older than gossipsub's message cache (5 heartbeats of
    # 1 s), so everything it gets comes through anti-entropy sync
    time.sleep(max(0.0, 8.0 - (time.monotonic() - last_submit)))
    late = tmp_path / "late"
    cli("init", "--data-dir", str(late), "--genesis", str(dds[0] / "genesis.json"), "--account", "joiner",
        "--bootstrap", meta["addrs"]["0"])
    log = open(late / "node.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "run", "--data-dir", str(late)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait(lambda: rpc(late, "node_info")["tasks"] == 1, 90, "the late joiner to learn the task")
        wait(lambda: all_batch_ids(late, tid) == ids, 90, "the late joiner to hold every batch")
        wait(lambda: roots(late, tid) == roots(dds[0], tid), 60, "the late joiner's roots")
        fetched = sum(p["fetched"] for p in rpc(late, "sync_status")["peers"])
        assert fetched >= len(ids), fetched
        out = cli("status", "--data-dir", str(late)).stdout
        assert "sync" in out and "peers synced" in out
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()


def _root_and_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        return False
    r = subprocess.run(["unshare", "-m", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && "
                        "umount $d && rmdir $d"], capture_output=True, timeout=10)
    return r.returncode == 0


@pytest.mark.skipif(not _root_and_unshare(), reason="needs root, unshare and nsenter to mount a private tmpfs")
def test_full_filesystem_gives_32003_then_resumes_without_restart(tmp_path):
    """The node's store directory is a 16 MiB tmpfs in a private mount namespace held by a
    `sleep` process; a ballast file leaves little room. The node runs inside that namespace
    (nsenter), its RPC socket is on the ordinary filesystem."""
    dd = tmp_path / "node"
    cli("init", "--data-dir", str(dd), "--network-name", "fulldisk")
    (dd / "store").mkdir(mode=0o700)
    holder = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs -o size=16m tmpfs "{dd}/store" && head -c 14680064 /dev/zero > "{dd}/store/ballast" '
         f'&& echo ready && exec sleep 3600'], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    node = None
    log_path = dd / "node.log"
    log = open(log_path, "ab")

    def start():
        return subprocess.Popen(["nsenter", "-t", str(holder.pid), "-m", "--", sys.executable, "-m", "node.cli",
                                 "run", "--data-dir", str(dd)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    try:
        assert holder.stdout.readline().strip() == b"ready", holder.stderr.read().decode()
        node = start()
        wait(lambda: rpc(dd, "node_info"), 60, "the node to start")
        info = rpc(dd, "node_info")
        nid = bytes.fromhex(info["network_id"])
        tid = rpc(dd, "task_post", {"account": "default", "labels": ["a", "b"],
                                    "items": [f"x{i}" for i in range(5000)], "duration_s": 3600})["task_id"]
        acked, err = [], None
        for k in range(5000):
            raw, bid = batch_raw(nid, bytes.fromhex(tid), 50_000 + k, 5000)
            try:
                r = rpc(dd, "annotations_submit", {"raw": raw})
            except RpcCallError as e:
                err = e
                break
            assert r["status"] == "accepted"
            acked.append(bid.hex())
        assert err is not None, "the tmpfs never filled up"
        assert err.code == -32003 and "full" in err.message and "free disk space" in err.message.lower()
        assert len(acked) > 0
        wait(lambda: "store full" in log_path.read_text(errors="replace"), 30, "a log line about the full store")
        # nothing half-written: reads work and hold exactly the acknowledged batches
        assert all_batch_ids(dd, tid) == set(acked)
        # again while still full: same clear error, the node keeps serving
        raw_again, bid_again = batch_raw(nid, bytes.fromhex(tid), 40_000, 5000)
        with pytest.raises(RpcCallError) as e2:
            rpc(dd, "annotations_submit", {"raw": raw_again})
        assert e2.value.code == -32003
        assert rpc(dd, "node_info")["pid"] == info["pid"]
        # free the space (the ballast lives in the holder's mount namespace): writes resume, no restart
        os.unlink(f"/proc/{holder.pid}/root{dd}/store/ballast")
        r = rpc(dd, "annotations_submit", {"raw": raw_again})
        assert r["status"] == "accepted"
        acked.append(bid_again.hex())
        assert rpc(dd, "node_info")["pid"] == info["pid"]
        before = roots(dd, tid)
        # and a kill -9 after all that: the store reopens with exactly the acknowledged set
        node.kill()
        node.wait(timeout=30)
        node = start()
        wait(lambda: rpc(dd, "node_info")["pid"] == node.pid, 60, "the node to restart")
        assert all_batch_ids(dd, tid) == set(acked)
        assert roots(dd, tid) == before
    finally:
        if node is not None and node.poll() is None:
            node.kill()
            node.wait(timeout=30)
        holder.kill()
        holder.wait(timeout=30)
        log.close()

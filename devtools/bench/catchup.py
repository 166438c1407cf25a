"""Catch-up: how fast a fresh node joining the network gets the whole history.

Node A (a real ``labelmesh run`` process) holds the history: tasks of 10,000 items
(one per 100,000 labels) and annotation batches of 100 labels by 1,000 annotators,
signed like any submission. To build 10^6 labels quickly the batches are written
straight into A's LMDB store while A is stopped (the bytes are exactly what the
RPC would have stored). Then a fresh node B (empty store, bootstrap = A) starts;
the clock runs from B's process start (so it includes start-up and dialing) until
B's stored-message count equals A's. Each size gets its own fresh B; A's history
grows 10^4 -> 10^5 -> 10^6. B verifies every signature and stores every message,
exactly as from gossip (``Node.ingest_many`` on each 1,024-id chunk).

The limit is the single-core unpack + LMDB put ceiling in records/s (each batch is
one record), as in issues #3 and #6.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import Devnet, dir_bytes, figure, log, make_batches, post_task, wait_until

LABELS_PER_BATCH = 100
N_ITEMS = 10_000
LABELS_PER_TASK = 100_000


def _write_history(net: Devnet, task_ids: list[bytes], have: int, want: int) -> int:
    """Append batches to node 0's store (node stopped) until it holds ``want`` labels."""
    from protocol.messages import KIND_BATCH, decode_message
    from protocol.params import DEFAULT_PARAMS

    from node.storage.layout import Record
    from node.storage.store import Store

    store = Store(net.root / "node-0" / "store")
    try:
        t_base = int(time.time() * 1000) - 60_000
        per_task = LABELS_PER_TASK // LABELS_PER_BATCH
        k = have // LABELS_PER_BATCH
        while k < want // LABELS_PER_BATCH:
            ti = k // per_task
            n = min(per_task - k % per_task, want // LABELS_PER_BATCH - k, 2000)
            raws = make_batches(net.network_id, task_ids[ti], n_msgs=n, labels_per_msg=LABELS_PER_BATCH,
                                n_items=N_ITEMS, n_classes=5, t_base_ms=t_base, first=k, seed=11)
            recs = []
            for r in raws:
                m = decode_message(r, DEFAULT_PARAMS)
                recs.append(Record(msg_id=m.compute_id(net.network_id), kind=KIND_BATCH, task_id=task_ids[ti], raw=r))
            assert all(store.put_records(recs))
            k += n
        return store.count()
    finally:
        store.close()


def _join(net: Devnet, name: str, expect: int, timeout: float) -> dict:
    """Start a fresh node that bootstraps from node 0; time until it holds ``expect`` messages."""
    from node.config import NodeConfig
    from node.keystore import write_private

    dd = (net.root / name).resolve()
    dd.mkdir(mode=0o700)
    (dd / "genesis.json").write_text((net.root / "node-0" / "genesis.json").read_text())
    write_private(dd / "node.key", os.urandom(32).hex().encode())
    addr0 = net.rpc(0, "node_info")["listen_addrs"]
    boot = [a for a in addr0 if "/p2p/" in a][0]
    port = boot.split("/tcp/")[1].split("/")[0]
    NodeConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[boot]).validate()
    (dd / "config.toml").write_text(NodeConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[boot]).to_toml())
    log_f = open(dd / "node.log", "ab")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "run", "--data-dir", str(dd)], stdout=log_f,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    sock = dd / "node.sock"
    try:
        from node.rpc import RpcClient

        def count():
            if not sock.exists():
                return None
            try:
                with RpcClient(sock, timeout=10) as c:
                    return c.call("node_info")["messages"]["stored"]
            except Exception:
                return None

        t_ready = None
        end = t0 + timeout
        got = 0
        while time.monotonic() < end:
            c = count()
            if c is not None:
                t_ready = t_ready or time.monotonic()
                got = c
                if c >= expect:
                    break
            time.sleep(0.05)
        dt = time.monotonic() - t0
        if got < expect:
            raise RuntimeError(f"{name} holds {got} of {expect} messages after {timeout:.0f} s")
        return {"seconds": dt, "ready_s": (t_ready - t0) if t_ready else None, "store_bytes": dir_bytes(dd / "store"),
                "port": port}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(quick: bool, limits: dict) -> list[dict]:
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    figs, rows = [], ["| labels held | batches | seconds (from process start) | of which start-up | labels/s | batches/s | s per 10^5 labels |",
                      "|---:|---:|---:|---:|---:|---:|---:|"]
    with Devnet(1, prefix="lmbc") as net:
        n_tasks = max(1, sizes[-1] // LABELS_PER_TASK)
        task_ids = [bytes.fromhex(post_task(net, 0, N_ITEMS, 5, 3 * 3600, f"catch-up {i}")["task_id"])
                    for i in range(n_tasks)]
        have = 0
        results = []
        for size in sizes:
            net.processes.stop_node(net.root, 0)
            t = time.monotonic()
            stored = _write_history(net, task_ids, have, size)
            have = size
            log(f"catch-up: history of {size:,} labels ({stored:,} messages) written in {time.monotonic() - t:.0f} s")
            net.processes.start_node(net.root, 0)
            wait_until(lambda: _stored(net) == stored, 120, "node 0 to restart", interval=0.2)
            r = _join(net, f"join-{size}", stored, timeout=60 + size / 2_000)
            rate = size / r["seconds"]
            log(f"catch-up: {size:,} labels in {r['seconds']:.1f} s ({r['ready_s']:.1f} s start-up) = {rate:,.0f} labels/s")
            results.append((size, r))
            rows.append(f"| {size:,} | {size // LABELS_PER_BATCH:,} | {r['seconds']:.2f} | {r['ready_s']:.2f} | {rate:,.0f} | "
                        f"{rate / LABELS_PER_BATCH:,.0f} | {r['seconds'] / (size / 100_000):.2f} |")
            tag = {10_000: "1e4", 100_000: "1e5", 1_000_000: "1e6"}[size]
            figs.append(figure(f"catchup_labels_per_s_{tag}", rate, "labels/s", limit=limits["unpack_put"],
                               note=f"{size // LABELS_PER_BATCH:,} batches of 100; includes {r['ready_s']:.1f} s start-up"))
        size, r = results[-1]
        rate = size / r["seconds"]
        figs.insert(0, figure("catchup_labels_per_s", rate, "labels/s", limit=limits["unpack_put"], target=50_000,
                              note=f"joining a network holding {size:,} labels (batches of 100); limit = unpack+put "
                                   "records/s"))
        if len(results) >= 2:
            (s0, r0), (s1, r1) = results[-2], results[-1]
            # growth exponent: time ~ size^k; k = 1 is linear
            import math
            k = math.log(r1["seconds"] / r0["seconds"]) / math.log(s1 / s0)
            figs.append(figure("catchup_scaling_exponent", k, "", target=1.1, higher_is_better=False,
                               note=f"time ~ size^k between {s0:,} and {s1:,} labels (1 = linear; start-up inflates "
                                    "small sizes, so k < 1 is expected)"))
    from .common import DETAILS
    DETAILS["Catch-up runs"] = "\n".join(rows)
    return figs


def _stored(net: Devnet) -> int | None:
    try:
        return net.rpc(0, "node_info", timeout=5)["messages"]["stored"]
    except Exception:
        return None

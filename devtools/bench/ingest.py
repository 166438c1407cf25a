"""Ingest: labels accepted per second by one real node through ``annotations_submit``.

One ``labelmesh run`` process (a one-node devnet: libp2p up, gossip publishing on,
finality and sync services running). The batches are signed before the clock starts
(signing is the annotator's cost, not the node's) and the JSON request lines are
built beforehand too; ``CONNECTIONS`` client threads then send them, up to 1,000
batches per call, and the clock stops when the last reply is in. A label counts only
if the node answered ``accepted`` -- i.e. decoded, verified, validated against the
task and durably group-committed (LMDB ``sync=True``) before replying. The node's CPU
figure includes its signature-helper processes (``node/core/verifier.py``), which are
started by the node on demand like any other part of it.

The limit of each figure is the binding single-core ceiling for that batch size:
``min(labels_per_batch x ed25519 verifies/s, unpack+put records/s)`` -- one verify per
batch, one record stored per batch.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from node.rpc.client import RpcClient, request_line

from .common import (
    CpuMeter, Devnet, children_rss_mb, dir_bytes, figure, log, make_batches, median, post_task,
    rss_mb, rss_split_mb, run_threads,
)

CONNECTIONS = 4
N_ITEMS = 10_000
N_CLASSES = 5
TARGETS = {1: None, 100: 50_000}


def _plan(quick: bool) -> dict[int, int]:
    """Batches per repeat for each batch size."""
    if quick:
        return {1: 10_000, 10: 5_000, 100: 2_000, 1000: 200}
    return {1: 40_000, 10: 20_000, 100: 6_000, 1000: 600}


def _lines(raws: list[bytes]) -> list[bytes]:
    per_call = max(1, min(1000, 250_000 // max(1, len(raws[0]))))
    out = []
    for k in range(0, len(raws), per_call):
        out.append(request_line("annotations_submit", {"raw": [r.hex() for r in raws[k:k + per_call]]}, k))
    return out


def submit_all(sock: Path, lines: list[bytes], connections: int = CONNECTIONS) -> tuple[float, int, int]:
    """Send every line over ``connections`` connections; returns (seconds, accepted, labels accepted)."""
    it = iter(lines)
    lock = threading.Lock()
    counts = {"accepted": 0, "labels": 0, "other": 0}
    clients = [RpcClient(sock, timeout=120.0) for _ in range(connections)]

    def worker(c: RpcClient):
        acc = lab = other = 0
        while True:
            with lock:
                line = next(it, None)
            if line is None:
                break
            r = c.send_line(line)
            if "error" in r:
                raise RuntimeError(f"annotations_submit failed: {r['error']}")
            for x in r["result"]["results"]:
                if x["status"] == "accepted":
                    acc += 1
                    lab += x["labels"]
                else:
                    other += 1
        with lock:
            counts["accepted"] += acc
            counts["labels"] += lab
            counts["other"] += other

    t0 = time.perf_counter()
    run_threads(worker, [(c,) for c in clients])
    dt = time.perf_counter() - t0
    for c in clients:
        c.close()
    if counts["other"]:
        raise RuntimeError(f"{counts['other']} batches were not accepted (duplicates or rejected)")
    return dt, counts["accepted"], counts["labels"]


def run(quick: bool, limits: dict) -> list[dict]:
    plan = _plan(quick)
    repeats = 1 if quick else 3
    figs = []
    with Devnet(1, prefix="lmbi") as net:
        pid = net.pid(0)
        store_dir = net.root / "node-0" / "store"
        t_base = int(time.time() * 1000) - 1000
        first = 0
        for size, n_msgs in plan.items():
            # a task per batch size: each annotator labels each item of a task at most once
            # (honest traffic; the keep rule would decline the repeats as redundant)
            tid = bytes.fromhex(post_task(net, 0, N_ITEMS, N_CLASSES, 3600, f"ingest bench, batches of {size}")["task_id"])
            log(f"ingest: signing {repeats} x {n_msgs:,} batches of {size} labels")
            runs = []
            for _ in range(repeats):
                raws = make_batches(net.network_id, tid, n_msgs=n_msgs, labels_per_msg=size, n_items=N_ITEMS,
                                    n_classes=N_CLASSES, t_base_ms=t_base, first=first)
                first += n_msgs
                runs.append((_lines(raws), sum(len(r) for r in raws)))
            rates, cpus, rss = [], [], []
            bytes_before = dir_bytes(store_dir)
            labels_total = 0
            for lines, _nbytes in runs:
                meter = CpuMeter([pid], children=True).start()  # + the node's signature helpers
                dt, acc, labels = submit_all(net.sock(0), lines)
                cpus.append(meter.stop()[pid])
                helpers = children_rss_mb(pid)  # the node's signature helpers, if running
                rss.append((rss_mb(pid) + helpers, *rss_split_mb(pid), helpers))
                assert acc == n_msgs, (acc, n_msgs)
                labels_total += labels
                rates.append(labels / dt)
                log(f"ingest: batch {size}: {labels:,} labels in {dt:.2f} s = {labels / dt:,.0f} labels/s "
                    f"({acc / dt:,.0f} batches/s), node CPU {cpus[-1]:.0f}%")
            grown = dir_bytes(store_dir) - bytes_before
            limit = min(size * limits["verify"], limits["unpack_put"])
            figs.append(figure(f"ingest_batch_{size}", median(rates), "labels/s", limit=limit, target=TARGETS.get(size),
                               note=f"median of {repeats}; {median(rates) / size:,.0f} batches/s; "
                                    f"node CPU {median(cpus):.0f}% of a core (with its verify helpers)"))
            if size in (1, 100):
                figs.append(figure(f"lmdb_bytes_per_label_batch_{size}", grown / labels_total, "bytes/label",
                                   note="growth of the store directory on disk / labels stored"))
            if size == 100:
                total, anon, mapped, helpers = max(rss)
                figs.append(figure("rss_under_load_mb", total, "MB",
                                   note=f"ingest node after batches of 100 at full speed: {anon:.0f} MB anonymous "
                                        f"(heap), {mapped:.0f} MB file-backed (mostly LMDB pages mapped in), "
                                        f"{helpers:.0f} MB its signature-helper processes"))
                figs.append(figure("cpu_under_load_pct", median(cpus), "% of a core",
                                   note="ingest node at full speed, batches of 100"))
    if TARGETS.get(1) is None:
        for f in figs:
            if f["name"] == "ingest_batch_1":
                f["target"] = round(0.7 * limits["verify"])
                f["meets_target"] = f["value"] >= f["target"]
    return figs

"""Devnets of 3, 5 and 10 real nodes on 127.0.0.1: idle footprint, propagation, finality.

Footprint: after the devnet has meshed and settled, RSS and CPU (% of one core) of
every node over an idle window; the figure is the worst node.

Propagation: batches of 100 labels, signed beforehand, are submitted to node 0 at a
steady offered load (one batch per ``annotations_submit`` call, several client
connections so a slow reply never lowers the offered rate). Each node reports when
it stored each batch (``messages_arrival``); a batch's latency is from the moment
its call was sent to the moment the *last* other node stored it. p50/p99 are over
all batches; a batch not everywhere within the bound counts as lost (and is
reported, never dropped from the statistics silently). "Lost before sync" = batches
that some node got through anti-entropy sync instead of gossip (sync ``fetched``
counters); the highest load of the sweep with none of those and nothing missing is
the "max lossless load".

Finality: once every node holds the same set (bounded wait), a task with an 8 s
deadline gets 2 batches per node through node 0; the figure is
the time from its deadline to the moment every node reports the certificate (the
devnet genesis sets a 3 s grace period, 4 s round timeout).
"""
from __future__ import annotations

import queue
import statistics
import threading
import time

from node.rpc.client import RpcClient, request_line

from .common import (
    CpuMeter, Devnet, figure, log, make_batches, median, percentile, post_task,
    children_rss_mb, rss_mb, rss_split_mb, run_threads, wait_until,
)

LABELS_PER_BATCH = 100
N_ITEMS = 10_000
SENDERS = 8


def _idle_footprint(net: Devnet, window_s: float) -> dict:
    time.sleep(3.0)  # let start-up sync sessions and mesh grafting finish
    pids = net.pids()
    cpu = CpuMeter(pids, children=True).start()  # a node's signature helpers (node/core/verifier.py) count
    time.sleep(window_s)
    cpus = cpu.stop()
    rss = {p: rss_mb(p) + children_rss_mb(p) for p in pids}
    worst = max(rss, key=rss.get)
    return {"rss_max": rss[worst], "rss_median": median(list(rss.values())), "anon_of_max": rss_split_mb(worst)[0],
            "cpu_max": max(cpus.values()), "cpu_median": median(list(cpus.values()))}


def _sync_fetched(net: Devnet) -> list[int]:
    return [net.client(i).call("node_info")["sync"]["fetched"] for i in range(net.n)]


def _arrivals(net: Devnet, i: int, ids: list[str]) -> list:
    out = []
    for k in range(0, len(ids), 5000):
        out += net.client(i).call("messages_arrival", {"ids": ids[k:k + 5000]})["arrival_ms"]
    return out


def propagate(net: Devnet, task_id: bytes, rate: float, duration_s: float, first: int, bound_s: float,
              n_items: int = N_ITEMS) -> dict:
    n_msgs = max(1, int(rate * duration_s))
    raws = make_batches(net.network_id, task_id, n_msgs=n_msgs, labels_per_msg=LABELS_PER_BATCH, n_items=n_items,
                        n_classes=5, t_base_ms=int(time.time() * 1000) - 1000, first=first, seed=3)
    from protocol.messages import decode_message
    from protocol.params import DEFAULT_PARAMS

    ids = [decode_message(r, DEFAULT_PARAMS).compute_id(net.network_id).hex() for r in raws]
    lines = [request_line("annotations_submit", {"raw": [r.hex()]}, k) for k, r in enumerate(raws)]
    fetched0 = _sync_fetched(net)
    sent_ms = [0.0] * n_msgs
    q: queue.Queue = queue.Queue()
    errors = []

    def sender():
        c = RpcClient(net.sock(0), timeout=120.0)
        try:
            while True:
                k = q.get()
                if k is None:
                    return
                sent_ms[k] = time.time() * 1000
                r = c.send_line(lines[k])
                if "error" in r:
                    errors.append(r["error"])
        finally:
            c.close()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
    for t in threads:
        t.start()
    meter = CpuMeter(net.pids(), children=True).start()
    t0 = time.monotonic()
    for k in range(n_msgs):
        delay = t0 + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        q.put(k)
    for _ in threads:
        q.put(None)
    for t in threads:
        t.join()
    ended = time.monotonic()
    offered_s = ended - t0
    cpus = meter.stop()
    rss = max(rss_mb(p) + children_rss_mb(p) for p in net.pids())
    if errors:
        raise RuntimeError(f"annotations_submit failed during propagation: {errors[0]}")
    # Wait (bounded) until every node holds every batch.
    end = time.monotonic() + bound_s
    arr = {}
    while True:
        arr = {i: _arrivals(net, i, ids) for i in range(1, net.n)}
        missing = sum(1 for i in arr for a in arr[i] if a is None)
        if missing == 0 or time.monotonic() > end:
            break
        time.sleep(0.5)
    fetched1 = _sync_fetched(net)
    lat, lost = [], 0
    for k in range(n_msgs):
        last = [arr[i][k] for i in arr]
        if any(a is None for a in last):
            lost += 1
            continue
        lat.append(max(last) - sent_ms[k])
    return {"rate": rate, "achieved_rate": n_msgs / offered_s, "batches": n_msgs, "ended": ended,
            "p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat) if lat else None,
            "via_sync": sum(fetched1) - sum(fetched0), "missing": lost,
            "cpu_median": median(list(cpus.values())), "cpu_max": max(cpus.values()), "rss_max": rss}


def _quiet(net: Devnet, timeout: float) -> bool:
    """Wait (bounded) until every node holds the same number of messages: the backlog of
    an overloaded propagation run must not count against finality."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len({net.client(i).call("node_info")["messages"]["stored"] for i in range(net.n)}) == 1:
            return True
        time.sleep(0.5)
    return False


def finality(net: Devnet) -> dict:
    if not _quiet(net, 90):
        log("network: the devnet did not converge within 90 s before the finality run; measuring anyway")
    task = post_task(net, 0, 50, 3, 8.0, "finality bench")
    tid, deadline = task["task_id"], task["deadline_ms"]
    raws = make_batches(net.network_id, bytes.fromhex(tid), n_msgs=2 * net.n, labels_per_msg=10, n_items=50,
                        n_classes=3, t_base_ms=int(time.time() * 1000) - 500, seed=5)
    net.client(0).call("annotations_submit", {"raw": [r.hex() for r in raws]})
    if time.time() * 1000 > deadline:
        raise RuntimeError("the finality task's deadline passed before its labels were submitted")
    certified = {}
    end = time.monotonic() + 90
    while len(certified) < net.n and time.monotonic() < end:
        for i in range(net.n):
            if i in certified:
                continue
            r = net.client(i).send_line(request_line("certificate_get", {"task_id": tid}))
            if r.get("result", {}).get("certified"):  # an error = the task has not reached node i yet
                certified[i] = time.time() * 1000
        time.sleep(0.05)
    if len(certified) < net.n:
        raise RuntimeError(f"only {len(certified)} of {net.n} nodes certified the task within 90 s")
    times = sorted((t - deadline) / 1000 for t in certified.values())
    return {"all_s": times[-1], "first_s": times[0], "median_s": statistics.median(times)}


def run(quick: bool) -> list[dict]:
    figs = []
    sizes = [3, 10] if quick else [3, 5, 10]
    duration = 5.0 if quick else 10.0
    bound = 20.0 if quick else 30.0
    rows = ["| nodes | offered (batches/s) | achieved | batches | p50 (ms) | p99 (ms) | max (ms) | via sync | missing | CPU median / max (% core) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    idle_done = False
    for n in sizes:
        log(f"network: starting a devnet of {n} nodes")
        t_up = time.monotonic()
        with Devnet(n, prefix="lmbn") as net:
            log(f"network: {n} nodes meshed in {time.monotonic() - t_up:.0f} s")
            if not idle_done or n == 10:
                fp = _idle_footprint(net, 5.0 if quick else 10.0)
                log(f"network: idle n={n}: RSS max {fp['rss_max']:.0f} MB, CPU max {fp['cpu_max']:.1f}%")
                if not idle_done:
                    figs.append(figure("idle_rss_mb", fp["rss_max"], "MB", target=100, higher_is_better=False,
                                       note=f"worst of {n} meshed devnet nodes (median {fp['rss_median']:.0f} MB; "
                                            f"{fp['anon_of_max']:.0f} MB anonymous)"))
                    figs.append(figure("idle_cpu_pct", fp["cpu_max"], "% of a core", target=2.0, higher_is_better=False,
                                       note=f"worst of {n} meshed devnet nodes over {5 if quick else 10} s "
                                            f"(median {fp['cpu_median']:.1f}%)"))
                    idle_done = True
                if n == 10:
                    figs.append(figure("idle_rss_mb_n10", fp["rss_max"], "MB", note="worst node of a 10-node devnet"))
                    figs.append(figure("idle_cpu_pct_n10", fp["cpu_max"], "% of a core",
                                       note="worst node of a 10-node devnet (2 cores shared by all 10)"))
            task = post_task(net, 0, N_ITEMS, 5, 3600, "propagation bench")
            tid = task["task_id"]
            wait_until(lambda: all(any(t["task_id"] == tid for t in net.client(i).call("tasks_list")["tasks"])
                                   for i in range(n)), 30, "the task on every node")
            loads = [100.0] if quick else [10.0, 25.0, 50.0, 100.0, 200.0, 400.0]
            if quick and n == 3:
                loads = [100.0, 200.0]
            lossless, at100, first, still_clean = 0.0, None, 0, True
            for rate in loads:
                r = propagate(net, bytes.fromhex(tid), rate, duration, first, bound)
                first += r["batches"]
                log(f"network: n={n} {rate:.0f}/s (achieved {r['achieved_rate']:.0f}/s): p50 {r['p50']} ms "
                    f"p99 {r['p99']} ms, via sync {r['via_sync']}, missing {r['missing']}")
                rows.append(f"| {n} | {rate:.0f} | {r['achieved_rate']:.0f} | {r['batches']} | {_ms(r['p50'])} | "
                            f"{_ms(r['p99'])} | {_ms(r['max'])} | {r['via_sync']} | {r['missing']} | "
                            f"{r['cpu_median']:.0f} / {r['cpu_max']:.0f} |")
                clean = r["via_sync"] == 0 and r["missing"] == 0 and r["achieved_rate"] >= 0.95 * rate
                if clean and still_clean:
                    lossless = rate
                still_clean = still_clean and clean
                if rate == 100.0:
                    at100 = r
                if not clean and rate >= 100.0:
                    break
            if at100 is not None:
                note = (f"100 batches/s x 100 labels offered to node 0 for {duration:.0f} s; "
                        f"{at100['via_sync']} via sync, {at100['missing']} missing after {bound:.0f} s")
                figs.append(figure(f"propagation_p50_ms_n{n}", at100["p50"], "ms", note=note))
                figs.append(figure(f"propagation_p99_ms_n{n}", at100["p99"], "ms", note=note,
                                   target=500 if n == 10 else None, higher_is_better=False))
                figs.append(figure(f"propagation_lost_after_sync_n{n}", at100["missing"], "batches",
                                   target=0 if n == 10 else None, higher_is_better=False))
                if n == 10:
                    figs.append(figure("rss_under_load_mb_n10", at100["rss_max"], "MB",
                                       note="worst node during the 100 batches/s propagation run"))
                    figs.append(figure("cpu_under_load_pct_n10", at100["cpu_max"], "% of a core",
                                       note=f"worst node (median {at100['cpu_median']:.0f}%) during the 100 batches/s run"))
            figs.append(figure(f"max_lossless_load_n{n}", lossless, "batches/s",
                               note=f"highest load of the sweep {', '.join(f'{x:.0f}' for x in loads)} with "
                                    "nothing fetched by sync and nothing missing (x100 labels)"))
            if n in (5, 10):
                f = finality(net)
                log(f"network: finality n={n}: all nodes {f['all_s']:.2f} s after the deadline "
                    f"(first {f['first_s']:.2f} s)")
                figs.append(figure(f"finality_s_n{n}", f["all_s"], "s", target=6.0, higher_is_better=False,
                                   note=f"deadline -> certificate on every node (first node {f['first_s']:.2f} s); "
                                        "grace 3 s"))
            if n == sizes[-1]:
                # The same nodes idle again after load, certification and consensus (numpy loaded,
                # LMDB pages mapped, caches warm): the footprint of a node that has worked.
                fp = _idle_footprint(net, 5.0 if quick else 10.0)
                figs.append(figure(f"idle_rss_after_load_mb_n{n}", fp["rss_max"], "MB",
                                   note=f"worst node, idle again after the runs above (median {fp['rss_median']:.0f} MB; "
                                        f"{fp['anon_of_max']:.0f} MB anonymous)"))
                figs.append(figure(f"idle_cpu_after_load_pct_n{n}", fp["cpu_max"], "% of a core",
                                   note=f"worst node, idle again after the runs above (median {fp['cpu_median']:.1f}%)"))
    from .common import DETAILS
    DETAILS["Propagation runs"] = "\n".join(rows)
    return figs


def _ms(v) -> str:
    return "–" if v is None else f"{v:.0f}"

"""``scripts/bench wan``: devnets on WAN links (``devnet up --netns --wan``) and the
simulation of the very same network, side by side.

For n in 10, 25, 50 (``--quick``: 10): a devnet whose nodes sit in their own network
namespaces behind the link relay (one-way egress delay 20-100 ms per node, so RTTs of
40-200 ms; 1% loss; 20 Mbit/s; devtools/linkemu.py), the ``network`` benchmark's
propagation run (100 batches/s of 100 labels through node 0 for 10 s; latency = submission
-> the last node storing the batch) and finality run (deadline -> certificate on every
node), and the bytes every node's ``eth0`` sent and received from the first batch until
15 s after the last, per label. Then ``devtools.sim`` simulates the same devnet — same
node count, bootstrap topology, per-node delays, loss, rate, genesis, load — and each
figure's ratio sim / devnet says how far the simulation is from the real thing.

Targets (issue #21): ``propagation_p99_ms_n50_wan`` <= 2 x the largest RTT (200 ms) +
300 ms; ``finality_s_n50_wan`` <= grace (3 s) + 5 s; ``bytes_per_label_per_node_n50``
within 3x of the gossip fan-out lower bound d x (w + o) / L (docs/scaling.md), with d
the mesh degree the simulation sees on the same topology.
"""
from __future__ import annotations

import time

from .common import Devnet, figure, log, wait_until

RATE = 100.0
WINDOW_S = 15.0
# The loopback benchmark's propagation task (devtools/bench/network.py): 10,000 items, one
# ~100 KB gossip message. Its first WAN run crashed receiving nodes (a misframed pubsub RPC,
# protobuf DecodeError in py-libp2p's reader); node/net fixed that (docs/scaling.md), and
# tests/test_wan.py sends such a task over these links.
N_ITEMS = 10_000
CHAOS_S = 40.0          # seconds of faults of the chaos run (devtools/chaos.py) on the WAN devnet
CHAOS_MAX_NODES = 10    # chaos runs on the smallest devnet only (its checker polls every node)


def _devnet_run(n: int, duration: float, bound: float) -> dict:
    from devtools import netns
    from devtools.linkemu import WAN

    from . import network

    t_up = time.monotonic()
    with Devnet(n, prefix="lmbw", shaping=WAN) as net:
        log(f"wan: {n} nodes up and meshed in {time.monotonic() - t_up:.0f} s")
        delays = net.meta["delays_ms"]
        task = network.post_task(net, 0, N_ITEMS, 5, 3600, "propagation bench")
        tid = task["task_id"]
        wait_until(lambda: all(any(t["task_id"] == tid for t in net.client(i).call("tasks_list")["tasks"])
                               for i in range(n)), 60, "the task on every node")
        time.sleep(3.0)                      # the 10,000-item task's own bytes settle first
        b0 = netns.link_bytes(net.root)
        r = network.propagate(net, bytes.fromhex(tid), RATE, duration, 0, bound, n_items=N_ITEMS)
        rest = WINDOW_S - (time.monotonic() - r["ended"])
        if rest > 0:
            time.sleep(rest)
        b1 = netns.link_bytes(net.root)
        labels = r["batches"] * network.LABELS_PER_BATCH
        per_node = [(b1[i][0] - b0[i][0] + b1[i][1] - b0[i][1]) for i in range(n)]
        r["bytes_per_label"] = sum(per_node) / n / labels
        r["bytes_per_label_max"] = max(per_node) / labels
        f = network.finality(net)
        chaos_rep = None
        if n <= CHAOS_MAX_NODES:
            from devtools import chaos

            chaos_rep = chaos.run(net.root, duration=CHAOS_S, seed=7, rate=20.0, settle=120.0,
                                  out=lambda *a: log("wan chaos: " + " ".join(str(x) for x in a)))
        relay = (net.root / "linkemu.json").read_text() if (net.root / "linkemu.json").exists() else "{}"
        return {"prop": r, "fin": f, "delays_ms": delays, "relay": relay, "chaos": chaos_rep}


def _sim_run(n: int, duration: float, delays_ms: list[float]) -> dict:
    from devtools.linkemu import WAN
    from devtools.sim import SimConfig
    from devtools.sim import run as run_sim
    from devtools.sim.workload import BenchLoad

    cfg = SimConfig(nodes=n, validators=n, topology="devnet", delays_ms=tuple(delays_ms), jitter_ms=WAN.jitter_ms,
                    loss=WAN.loss, bandwidth_mbit=WAN.rate_mbit, clock_offset_ms=0.0,   # one host clock
                    grace_period_ms=3000, round_timeout_ms=4000,
                    reputation_lag_ms=5000, duration_s=duration + 40.0, drain_s=60.0, seed=1).validate()
    load = BenchLoad(RATE, duration, window_s=WINDOW_S, items=N_ITEMS)
    rep = run_sim(cfg, load)
    rep["window_bytes_per_label"] = load.window_bytes_per_label()
    return rep


def _simulated_figures(n: int, duration: float) -> list[dict]:
    """The issue's three figures for a size whose devnet did not run here (50 py-libp2p nodes
    do not fit 2 shared cores: docs/scaling.md), from the simulation of the same network
    (WAN.delays_ms(n) is the delays the devnet draws) -- each note says so, and that the
    simulation under-predicts latency on a loaded machine."""
    from devtools.linkemu import WAN

    s = _sim_run(n, duration, WAN.delays_ms(n))
    sp = s["propagation_all_nodes_ms"]["batches"]
    sf = s["finality_s"]["all_nodes"]["max"]
    mesh_d = s["gossip"]["mesh_degree_mean"]
    bound_fanout = mesh_d * (516 + 420 + 66) / 100
    why = (f"SIMULATED (devtools.sim, same {n}-node network: topology, delays, loss, rate, load), not measured: "
           f"the {n}-node devnet did not run on this machine (wan_failed_n{n}); a lower bound for latency")
    log(f"wan: n={n} simulated: p99 {sp['p99']:.0f} ms, finality {sf} s, {s['window_bytes_per_label']:.1f} B/label")
    return [
        figure(f"propagation_p99_ms_n{n}_wan", sp["p99"], "ms", note=why,
               target=2 * 200 + 300 if n == 50 else None, higher_is_better=False),
        figure(f"finality_s_n{n}_wan", sf, "s", note=why, target=3 + 5 if n == 50 else None, higher_is_better=False),
        figure(f"bytes_per_label_per_node_n{n}", s["window_bytes_per_label"], "bytes", limit=bound_fanout,
               target=round(3 * bound_fanout, 1) if n == 50 else None, higher_is_better=False,
               note=why + f"; limit = fan-out bound d (w + o) / L, d = {mesh_d:.1f}"),
    ]


def run(quick: bool) -> list[dict]:
    from devtools import netns

    ok, why = netns.available()
    if not ok:
        log(f"wan: skipped: {why}")
        return [figure("wan_skipped", 1, "bool", note=why)]
    sizes = [10] if quick else [10, 25, 50]
    duration = 5.0 if quick else 10.0
    bound = 30.0
    figs, rows = [], []
    for n in sizes:
        try:
            d = _devnet_run(n, duration, bound)
        except Exception as e:  # 50 py-libp2p nodes may not fit 2 shared cores: say so, go on
            import traceback
            traceback.print_exc()
            log(f"wan: n={n} failed: {type(e).__name__}: {e}")
            figs.append(figure(f"wan_failed_n{n}", 1, "bool", note=f"{type(e).__name__}: {e}"[:300]))
            if not quick:
                figs += _simulated_figures(n, duration)
            continue
        s = _sim_run(n, duration, d["delays_ms"])
        p, f = d["prop"], d["fin"]
        sp = s["propagation_all_nodes_ms"]["batches"]
        sf = s["finality_s"]["all_nodes"]["max"]
        mesh_d = s["gossip"]["mesh_degree_mean"]
        wire = 516 + 420 + 66        # a batch of 100 labels as one pubsub copy (docs/scaling.md)
        bound_fanout = mesh_d * wire / 100
        max_rtt = 2 * max(d["delays_ms"])
        note = (f"{RATE:.0f} batches/s x 100 labels through node 0 for {duration:.0f} s on a {N_ITEMS:,}-item task; "
                f"{p['via_sync']} via sync, "
                f"{p['missing']} missing; RTTs up to {max_rtt:.0f} ms, 1% loss, 20 Mbit/s")
        figs += [
            figure(f"propagation_p50_ms_n{n}_wan", p["p50"], "ms", note=note),
            figure(f"propagation_p99_ms_n{n}_wan", p["p99"], "ms", note=note,
                   target=2 * 200 + 300 if n == 50 else None, higher_is_better=False),
            figure(f"finality_s_n{n}_wan", f["all_s"], "s", note=f"deadline -> certificate on every node "
                   f"(first {f['first_s']:.2f} s); grace 3 s", target=3 + 5 if n == 50 else None,
                   higher_is_better=False),
            figure(f"bytes_per_label_per_node_n{n}", p["bytes_per_label"], "bytes", limit=bound_fanout,
                   target=round(3 * bound_fanout, 1) if n == 50 else None, higher_is_better=False,
                   note=f"eth0 sent + received, mean node (max {p['bytes_per_label_max']:.0f}); limit = gossip "
                        f"fan-out bound d (w + o) / L with d = {mesh_d:.1f} (the simulated mesh)"),
            figure(f"sim_vs_devnet_p50_n{n}_wan", sp["p50"] / p["p50"] if p["p50"] else None, "ratio",
                   note=f"simulated {sp['p50']:.0f} ms vs {p['p50']:.0f} ms"),
            figure(f"sim_vs_devnet_p99_n{n}_wan", sp["p99"] / p["p99"] if p["p99"] else None, "ratio",
                   note=f"simulated {sp['p99']:.0f} ms vs {p['p99']:.0f} ms"),
            figure(f"sim_vs_devnet_finality_n{n}_wan", sf / f["all_s"] if sf and f["all_s"] else None, "ratio",
                   note=f"simulated {sf} s vs {f['all_s']:.2f} s"),
            figure(f"sim_vs_devnet_bytes_n{n}_wan", s["window_bytes_per_label"] / p["bytes_per_label"], "ratio",
                   note=f"simulated {s['window_bytes_per_label']:.1f} vs {p['bytes_per_label']:.1f} bytes/label"),
        ]
        c = d["chaos"]
        if c is not None:
            ok = not c.violations and c.converged and c.certified
            figs += [
                figure(f"chaos_converged_after_s_n{n}_wan", c.converged_after_s, "s", target=30, higher_is_better=False,
                       note=f"{CHAOS_S:.0f} s of kills, pauses and partitions (seed 7, 20 batches/s); "
                            f"{c.acked} acked, lost {c.lost}, phantom {c.phantom}; checks {'pass' if ok else 'FAIL'}"),
                figure(f"chaos_certified_after_s_n{n}_wan", c.certified_after_s, "s",
                       note="after the last fault; the task's deadline and grace are inside this"),
            ]
        rows.append(f"| {n} | {p['p50']:.0f} / {sp['p50']:.0f} | {p['p99']:.0f} / {sp['p99']:.0f} | "
                    f"{f['all_s']:.2f} / {sf:.2f} | {p['bytes_per_label']:.1f} / {s['window_bytes_per_label']:.1f} | "
                    f"{p['via_sync']} | {p['cpu_median']:.0f} / {p['cpu_max']:.0f} | {d['relay']} |")
        log(f"wan: n={n}: devnet p50 {p['p50']:.0f} p99 {p['p99']:.0f} ms, finality {f['all_s']:.2f} s, "
            f"{p['bytes_per_label']:.1f} B/label; sim p50 {sp['p50']:.0f} p99 {sp['p99']:.0f} ms, finality {sf} s, "
            f"{s['window_bytes_per_label']:.1f} B/label")
    from .common import DETAILS
    DETAILS["WAN devnets and their simulation (devnet / sim)"] = "\n".join(
        ["| nodes | p50 ms | p99 ms | finality s | bytes/label/node | via sync | CPU median / max (% core) | relay |",
         "|---:|---:|---:|---:|---:|---:|---:|---|"] + rows)
    return figs

"""``scripts/bench sim``: the 1,000-node simulation (devtools/sim) for one simulated hour.

1,000 nodes on WAN links (one-way delay 20-100 ms per node, 1% packet loss, 20 Mbit/s),
100 validators, a task a minute, 3 batches of 100 labels a second, 2% churn (nodes down
two minutes at a time on average), the reference node's GossipSub and sync settings. The
figure ``sim_1000_nodes_hour_s`` is the wall time of the whole run — the hour of load plus
the drain until every node holds the same set and every task is certified — on one core;
the others are what the simulation measured. ``--quick`` simulates 5 minutes.
"""
from __future__ import annotations

from .common import figure, log

HOUR = dict(nodes=1000, validators=100, duration_s=3600.0, churn=0.02, seed=1)


def run(quick: bool) -> list[dict]:
    from devtools.sim import SimConfig
    from devtools.sim import run as run_sim
    from devtools.sim.report import format_report

    cfg = SimConfig(**{**HOUR, **({"duration_s": 300.0} if quick else {})}).validate()
    log(f"sim: {cfg.nodes} nodes, {cfg.validators} validators, {cfg.duration_s:.0f} s simulated")
    rep = run_sim(cfg)
    for line in format_report(rep).splitlines():
        log(f"sim: {line}")
    c = rep["checks"]
    ok = c["stores_identical"] and c["roots_identical"] and c["certificates_verified"] and c["no_conflicting_certificate"]
    what = f"{cfg.nodes} nodes, {cfg.validators} validators, {cfg.duration_s / 60:.0f} min of load"
    lat, prop = rep["delivery_latency_ms"], rep["propagation_all_nodes_ms"]["batches"]
    b, s, f = rep["bytes_per_node"], rep["sync"], rep["finality_s"]
    figs = []
    if not quick:
        figs.append(figure("sim_1000_nodes_hour_s", rep["wall_total_s"], "s", target=600, higher_is_better=False,
                           note=f"wall time, one core: {rep['simulated_s']:.0f} simulated s ({what} + drain), "
                                f"{rep['events']:,} events"))
    figs += [
        figure("sim_converged", 1 if ok and rep["finished"] else 0, "bool", target=1,
               note=f"{c['node_task_pairs_certified']:,} (node, task) pairs certified with identical roots, "
                    f"stores identical on all {cfg.nodes} nodes"),
        figure("sim_delivery_p50_ms", lat["p50"], "ms", note=f"{what}; every (message, node) gossip delivery"),
        figure("sim_delivery_p99_ms", lat["p99"], "ms", note=f"{what}"),
        figure("sim_propagation_p99_ms_n1000", prop["p99"], "ms",
               note="batch submitted -> the last node storing it by gossip"),
        figure("sim_duplicates_per_delivery", rep["gossip"]["duplicates_per_message_per_node"], "copies",
               note=f"extra copies a node receives per message it stores ({rep['gossip']['copies_per_delivery']} in all)"),
        figure("sim_bytes_per_label_per_node_n1000", b["per_label"], "bytes",
               note=f"sent + received per node per label stored; attestations are "
                    f"{b['gossip_sent_share_by_kind']['attestation']:.0%} of gossip bytes"),
        figure("sim_bytes_per_s_per_node_n1000", b["per_s_mean"], "B/s", note="sent + received, mean node"),
        figure("sim_sync_repaired_messages", s["repaired_messages"], "messages",
               note=f"{s['sessions']:,} sessions ({s['sessions_idle']:,} idle), {s['bytes_share']:.1%} of bytes"),
        figure("sim_finality_s_n1000", f["all_nodes"]["p99"], "s",
               note=f"deadline -> certificate on every live node, p99 over {f['tasks_certified']} tasks "
                    f"(grace {cfg.grace_period_ms / 1000:.0f} s); first node p50 {f['first_node']['p50']} s"),
    ]
    return figs

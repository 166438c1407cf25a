"""The end of a run: the convergence checks (with the protocol's functions) and the figures.

Checks, on every node, with nothing taken from the run's own bookkeeping:

* ``stores_identical``: every node holds exactly the same set of messages;
* per task, every node's finality state is rebuilt from the attestations *that node
  holds* with a fresh ``protocol.finality.TaskFinality`` (one per distinct attestation
  set: nodes holding the same set share it), the certificate is checked with
  ``verify_certificate`` (every signature), and the node's result over exactly the
  certified ids, with the reputation snapshot of the certificates *that node* holds and
  reproduces, is recomputed with ``protocol.tally``; ``roots_identical`` says every node
  ends with one and the same (set_root, result_root) per task, equal to its certificate;
* the validators' own machines never saw two certified values (``no_conflicting_certificate``).
"""
from __future__ import annotations

import math

import numpy as np

from protocol.finality import TaskFinality, is_quorum, verify_certificate
from protocol.messages import KIND_ATTESTATION, KIND_BATCH, KIND_NAMES, PHASE_PRECOMMIT

from .net import INF
from .world import GENESIS_MS


def _pct(values, qs):
    if len(values) == 0:
        return {f"p{q:g}": None for q in qs}
    a = np.asarray(values, dtype=float)
    return {f"p{q:g}": float(np.percentile(a, q)) for q in qs}


def _hist_pct(hist: np.ndarray, bin_s: float, qs) -> dict:
    total = int(hist.sum())
    out = {}
    if total == 0:
        return {f"p{q:g}": None for q in qs}
    cum = np.cumsum(hist)
    for q in qs:
        i = int(np.searchsorted(cum, math.ceil(total * q / 100.0)))
        out[f"p{q:g}"] = (i + 0.5) * bin_s
    out["max"] = (int(np.flatnonzero(hist)[-1]) + 0.5) * bin_s
    out["mean"] = float((np.arange(len(hist)) + 0.5) @ hist) * bin_s / total
    out["count"] = total
    return out


def final_checks(sim) -> dict:
    w, hold, res = sim.world, sim.hold, sim.results
    hold.settle(math.inf, on_settle=sim.on_settle)
    M = len(w.msgs)
    N = sim.n
    H = hold.held[:M]
    union = H.any(axis=1)
    missing_per_node = (union[:, None] & ~H).sum(axis=0)
    end_ms = GENESIS_MS + int((sim.now + 3600) * 1000)
    # tasks still open when the run stopped (a deadline past its end) are left out
    grace = sim.cfg.grace_period_ms / 1000.0
    closed = [k for k in range(len(w.tasks)) if w.tasks[k].deadline_s + grace < sim.now]
    order = sorted(closed, key=lambda k: (w.tasks[k].deadline_ms, k))
    node_mask = [0] * N
    bad_tasks = []
    certified_nodes = 0
    verified = True
    conflicting = False
    groups_total = 0
    for k in order:
        task = w.tasks[k]
        atts = np.asarray(task.atts, dtype=np.int64)
        key = np.packbits(H[atts].T, axis=1) if len(atts) else np.zeros((N, 1), dtype=np.uint8)
        _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
        groups = []
        for g, rep in enumerate(first.tolist()):
            fin = TaskFinality(task.tid, w.validators, None, task.deadline_ms, w.params)
            fin.on_tick(end_ms, None)
            for m in sorted(atts[H[atts, rep]].tolist(), key=lambda m: w.msgs[m].mid):
                fin.on_attestation(w.msgs[m].signed)
            cert = fin.certificate
            ok = cert is not None and verify_certificate(cert, w.validators, w.network_id)
            verified &= ok or cert is None
            conflicting |= fin.conflicting_certificate is not None
            ids = fin.certified_batch_ids if cert is not None else None
            idx = np.asarray([w.by_mid[i] for i in ids], dtype=np.int64) if ids is not None else None
            groups.append((cert, ids, idx))
        groups_total += len(groups)
        roots: dict[tuple, int] = {}
        cache: dict[tuple[int, int], tuple | None] = {}
        window = res.window_mask(k)
        for v in range(N):
            g = int(inverse[v])
            cert, ids, idx = groups[g]
            root = None
            if cert is not None and idx is not None and (len(idx) == 0 or H[idx, v].all()):
                snap = node_mask[v] & window
                ck = (g, snap)
                if ck not in cache:
                    r = res.result(k, ids, snap)
                    cache[ck] = (r.set_root, r.result_root) if r.result_root == cert.result_root else None
                root = cache[ck]
            if root is not None:
                node_mask[v] |= 1 << k
                certified_nodes += 1
            roots[root] = roots.get(root, 0) + 1
        if len(roots) != 1 or None in roots:
            bad_tasks.append({"task": k, "roots": {("none" if r is None else r[1].hex()[:16]): c
                                                   for r, c in roots.items()}})
    for (v, k), f in sim.fins.items():
        conflicting |= f.conflicting_certificate is not None
    n_tasks = len(closed)
    return {
        "stores_identical": bool((missing_per_node == 0).all()),
        "nodes_missing_messages": int((missing_per_node > 0).sum()),
        "messages_missing_total": int(missing_per_node.sum()),
        "tasks": n_tasks,
        "tasks_open_at_end": len(w.tasks) - n_tasks,
        "node_task_pairs_certified": certified_nodes,
        "node_task_pairs": n_tasks * N,
        "roots_identical": not bad_tasks and certified_nodes == n_tasks * N,
        "tasks_with_differing_roots": bad_tasks[:10],
        "certificates_verified": bool(verified),
        "no_conflicting_certificate": not conflicting,
        "distinct_attestation_sets": groups_total,
        "rejected_messages": list(w.rejected[:10]),
    }


def certificate_times(sim) -> dict:
    """Per task, when each node holds a certificate: validators (and every node with
    observers="full") from their own TaskFinality; other nodes from the arrival of the
    precommit that completes a quorum for the certified round and value."""
    w = sim.world
    late: dict[int, list] = {}
    for (m, v), t in sim.pc_late.items():
        late.setdefault(m, []).append((v, t))
    out = {}
    for k, task in enumerate(w.tasks):
        cert = sim.results.certified.get(k)
        if cert is None:
            continue
        rnd, set_root, result_root, _ = cert
        pcs = [m for m in task.atts if w.msgs[m].signed.body.phase == PHASE_PRECOMMIT
               and w.msgs[m].signed.body.round == rnd
               and (w.msgs[m].signed.body.set_root, w.msgs[m].signed.body.result_root) == (set_root, result_root)]
        times = np.full(sim.n, INF)
        if pcs:
            rows = np.vstack([sim.pc_rows[m] for m in pcs])
            for j, m in enumerate(pcs):
                for v, t in late.get(m, ()):
                    rows[j, v] = min(rows[j, v], t)
            weights = np.array([w.validators[w.msgs[m].signed.body.validator] for m in pcs])
            order = np.argsort(rows, axis=0, kind="stable")
            srt = np.take_along_axis(rows, order, axis=0)
            quorum = is_quorum(np.cumsum(weights[order], axis=0), sum(w.validators.values()))
            hit = quorum.argmax(axis=0)
            times = np.where(quorum.any(axis=0), srt[hit, np.arange(sim.n)], INF)
        fast = times.copy()
        exact = {}
        for (v, kk), t in sim.cert_time.items():
            if kk == k:
                exact[v] = t
                times[v] = t
        out[k] = {"times": times, "fast": fast, "exact": exact}
    return out


def build_report(sim, checks: dict | None = None) -> dict:
    cfg, w = sim.cfg, sim.world
    if checks is None:
        checks = final_checks(sim)
    kinds = {name: 0 for name in KIND_NAMES.values()}
    for msg in w.msgs:
        kinds[KIND_NAMES[msg.kind]] += 1
    lat_all = np.asarray(sim.lat_all)
    kind_all = np.asarray(sim.lat_all_kind)
    qs = (50, 90, 99, 99.9)
    certs = certificate_times(sim)
    grace = cfg.grace_period_ms / 1000.0
    fin_first, fin_median, fin_all, fast_vs_exact = [], [], [], 0.0
    for k, c in certs.items():
        task = w.tasks[k]
        d = task.deadline_s
        live = [v for v in range(sim.n) if sim.up_during(v, d, d + grace + 60.0)]
        t = c["times"][live] - d
        t = t[np.isfinite(t)]
        if len(t) == len(live) and len(t):
            fin_first.append(float(t.min()))
            fin_median.append(float(np.median(t)))
            fin_all.append(float(t.max()))
        for v, te in c["exact"].items():
            if np.isfinite(c["fast"][v]):
                fast_vs_exact = max(fast_vs_exact, abs(c["fast"][v] - te))
    sent = sim.gossip_sent + sim.sync.sent
    recv = sim.gossip_recv + sim.sync.recv
    seconds = max(sim.stopped_at or sim.now, 1e-9)
    labels = max(sim.labels, 1)
    rounds = {}
    for k, (rnd, *_rest) in sim.results.certified.items():
        rounds[rnd] = rounds.get(rnd, 0) + 1
    rep = {
        "config": cfg.as_dict(),
        "simulated_s": round(seconds, 3),
        "load_s": cfg.duration_s,
        "finished": sim.finished,
        "wall_s": round(sim.wall.get("run_s", 0.0), 2),
        "wall_checks_s": round(sim.wall.get("checks_s", 0.0), 2),
        "events": sim.events,
        "counts": {
            "tasks": len(w.tasks), "messages": len(w.msgs), **{f"{k}_messages": v for k, v in kinds.items()},
            "labels": sim.labels, "pubsub_messages": sim.pubsub_messages,
            "envelopes_per_pubsub_message": round(len(w.msgs) / max(sim.pubsub_messages, 1), 3),
            "results_computed": sim.results.computed,
        },
        "delivery_latency_ms": {k: (None if v is None else round(v * 1000, 2) if k != "count" else v)
                                for k, v in _hist_pct(sim.lat_hist, 0.001, qs).items()},
        "propagation_all_nodes_ms": {
            "batches": {k: (None if v is None else round(v * 1000, 2))
                        for k, v in _pct(lat_all[kind_all == KIND_BATCH], qs).items()},
            "attestations": {k: (None if v is None else round(v * 1000, 2))
                             for k, v in _pct(lat_all[kind_all == KIND_ATTESTATION], qs).items()},
        },
        "gossip": {
            "copies_per_delivery": round(sim.copies / max(sim.first_receipts, 1), 3),
            "duplicates_per_message_per_node": round((sim.copies - sim.first_receipts) / max(sim.first_receipts, 1), 3),
            "first_copies_via_ihave_iwant": sim.via_gossip,
            "deliveries_missed_by_gossip": sim.missed_by_gossip,
            "mesh_degree_mean": round(float(np.mean([len(p) for v, p in enumerate(sim.meshes[1].peers)
                                                     if sim.up[v]])), 3),
        },
        "bytes_per_node": {
            "sent_mean": round(float(sent.mean())), "recv_mean": round(float(recv.mean())),
            "sent_max": round(float(sent.max())), "recv_max": round(float(recv.max())),
            "gossip_share": round(float((sim.gossip_sent.sum() + sim.gossip_recv.sum()) / max(sent.sum() + recv.sum(), 1)), 4),
            "per_s_mean": round(float((sent.mean() + recv.mean()) / seconds)),
            "per_label": round(float((sent.mean() + recv.mean()) / labels), 2),
            "recv_per_label": round(float(recv.mean() / labels), 2),
            "gossip_sent_share_by_kind": {k: round(v / max(float(sim.gossip_sent.sum()), 1), 4)
                                          for k, v in sim.bytes_by_kind.items()},
            "stored_mean": round(float(sum(len(m.raw) for m in w.msgs))),
        },
        "sync": {
            "sessions": sim.sync.sessions, "sessions_idle": sim.sync.sessions_idle,
            "tasks_deferred": sim.sync.sessions_deferred, "requests": sim.sync.requests,
            "repaired_messages": sim.sync.repaired, "repaired_by_kind": dict(sim.repaired_by_kind),
            "repair_latency_s": {k: (None if v is None else round(v, 2)) for k, v in _pct(sim.repair_lat, (50, 99)).items()},
            "bytes_share": round(float((sim.sync.sent.sum() + sim.sync.recv.sum()) / max(sent.sum() + recv.sum(), 1)), 4),
        },
        "finality_s": {
            "tasks_certified": len(certs), "rounds": {str(r): c for r, c in sorted(rounds.items())},
            "first_node": {k: _r(v) for k, v in _pct(fin_first, (50, 99)).items()},
            "median_node": {k: _r(v) for k, v in _pct(fin_median, (50, 99)).items()},
            "all_nodes": {k: _r(v) for k, v in _pct(fin_all, (50, 99)).items()} | {"max": _r(max(fin_all) if fin_all else None)},
            "observer_time_check_s": round(fast_vs_exact, 6),
        },
        "checks": checks,
    }
    return rep


def _r(v):
    return None if v is None else round(v, 3)


def format_report(rep: dict) -> str:
    c = rep["config"]
    lines = [
        f"labelmesh simulation: {c['nodes']} nodes, {c['validators']} validators, {rep['load_s']:.0f} s of load "
        f"(+{rep['simulated_s'] - rep['load_s']:.0f} s drain), seed {c['seed']}",
        f"wall time {rep.get('wall_total_s', rep['wall_s']):.1f} s (events {rep['wall_s']:.1f} s, checks "
        f"{rep['wall_checks_s']:.1f} s), {rep['events']:,} events",
        f"messages {rep['counts']['messages']:,} ({rep['counts']['batch_messages']:,} batches = "
        f"{rep['counts']['labels']:,} labels, {rep['counts']['attestation_messages']:,} attestations, "
        f"{rep['counts']['tasks']} tasks) in {rep['counts']['pubsub_messages']:,} pubsub messages",
        "delivery latency (ms): " + _kv(rep["delivery_latency_ms"], ("p50", "p90", "p99", "p99.9", "max")),
        "to every node (ms), batches: " + _kv(rep["propagation_all_nodes_ms"]["batches"], ("p50", "p99", "p99.9")),
        f"gossip: {rep['gossip']['copies_per_delivery']} copies per delivery "
        f"({rep['gossip']['duplicates_per_message_per_node']} duplicates), "
        f"{rep['gossip']['first_copies_via_ihave_iwant']:,} first copies by IHAVE/IWANT, "
        f"{rep['gossip']['deliveries_missed_by_gossip']:,} missed by gossip",
        f"bytes per node: sent {rep['bytes_per_node']['sent_mean']:,} recv {rep['bytes_per_node']['recv_mean']:,} "
        f"({rep['bytes_per_node']['per_s_mean']:,} B/s), {rep['bytes_per_node']['per_label']} B per label "
        f"(received {rep['bytes_per_node']['recv_per_label']}); gossip bytes by kind "
        + ", ".join(f"{k} {v:.0%}" for k, v in rep["bytes_per_node"]["gossip_sent_share_by_kind"].items()),
        f"sync: {rep['sync']['sessions']:,} sessions ({rep['sync']['sessions_idle']:,} idle), "
        f"{rep['sync']['requests']:,} requests, {rep['sync']['repaired_messages']:,} messages repaired "
        f"{rep['sync']['repaired_by_kind']}, {rep['sync']['bytes_share']:.1%} of bytes",
        f"finality (s after deadline): first node {_kv(rep['finality_s']['first_node'], ('p50', 'p99'))}; "
        f"every node {_kv(rep['finality_s']['all_nodes'], ('p50', 'p99', 'max'))}; rounds {rep['finality_s']['rounds']}",
        "checks: " + ", ".join(f"{k}={v}" for k, v in rep["checks"].items()
                               if isinstance(v, bool) or k in ("node_task_pairs_certified", "nodes_missing_messages")),
    ]
    return "\n".join(lines)


def _kv(d: dict, keys) -> str:
    return " ".join(f"{k} {d.get(k)}" for k in keys)

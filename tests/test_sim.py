"""The network simulation (devtools/sim): short runs that converge, repair loss and churn
through sync, agree with the real finality machines, and repeat exactly under a seed.

Each run is a few hundred simulated seconds of a few dozen nodes (a second or two of
wall time); the 1,000-node hour is a benchmark (scripts/bench sim), not a test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devtools.sim import LINKS, SimConfig, SimConfigError, run
from devtools.sim.engine import Sim
from devtools.sim.report import build_report, final_checks
from devtools.sim.syncsim import reconcile, summary_response_bytes
from devtools.sim.workload import BenchLoad, SteadyLoad
from protocol import sync as sp

ROOT = Path(__file__).resolve().parents[1]

SMALL = dict(nodes=30, validators=7, peers=8, duration_s=60.0, drain_s=300.0, task_interval_s=15.0,
             task_duration_s=25.0, items_per_task=200, batches_per_s=2.0, labels_per_batch=20, annotators=40,
             requesters=3, reputation_lag_ms=30_000)


def small(**kw) -> SimConfig:
    return SimConfig(**{**SMALL, **kw}).validate()


def assert_converged(rep: dict) -> None:
    c = rep["checks"]
    assert rep["finished"], "the run hit its drain bound before converging"
    assert c["stores_identical"], c
    assert c["roots_identical"], c["tasks_with_differing_roots"]
    assert c["certificates_verified"] and c["no_conflicting_certificate"]
    assert c["rejected_messages"] == []
    assert c["node_task_pairs_certified"] == c["node_task_pairs"] > 0


def test_short_run_converges_with_identical_roots():
    rep = run(small())
    assert_converged(rep)
    assert rep["counts"]["tasks"] >= 3
    assert rep["counts"]["labels"] > 1000
    assert rep["finality_s"]["tasks_certified"] == rep["counts"]["tasks"]
    # gossip alone delivered everything: nothing for sync to repair
    assert rep["sync"]["repaired_messages"] == 0
    assert rep["sync"]["sessions_idle"] > 0
    lat = rep["delivery_latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert rep["gossip"]["copies_per_delivery"] >= 1.0


def test_loss_and_churn_are_repaired_by_sync():
    cfg = small(drop=0.05, churn=0.15, churn_down_s=15.0, seed=3)
    rep = run(cfg)
    assert_converged(rep)
    assert rep["sync"]["repaired_messages"] > 0
    assert rep["gossip"]["deliveries_missed_by_gossip"] > 0


def test_ihave_iwant_repairs_mesh_losses():
    """Half the mesh copies dropped, no sync: IHAVE/IWANT brings nodes their first copy."""
    rep = run(small(drop=0.5, sync=False, duration_s=30.0, seed=4))
    assert rep["gossip"]["first_copies_via_ihave_iwant"] > 0


def test_without_sync_the_check_sees_the_gaps():
    """The same loss and churn with sync turned off: the checks must fail (they are real)."""
    sim = Sim(small(drop=0.05, churn=0.15, churn_down_s=15.0, seed=3, sync=False, drain_s=60.0), SteadyLoad()).run()
    checks = final_checks(sim)
    assert not checks["stores_identical"]
    assert checks["nodes_missing_messages"] > 0
    assert not checks["roots_identical"]


def test_same_seed_same_report_other_seed_other_report():
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("wall")}
    a = run(small(duration_s=30.0, seed=11))
    b = run(small(duration_s=30.0, seed=11))
    c = run(small(duration_s=30.0, seed=12))
    assert json.dumps(strip(a), sort_keys=True) == json.dumps(strip(b), sort_keys=True)
    assert json.dumps(strip(a), sort_keys=True) != json.dumps(strip(c), sort_keys=True)


def test_observer_certificate_times_match_real_machines():
    """With observers="full" every node runs a real TaskFinality; the order-statistic time
    the default mode uses for non-validators must be the same instant."""
    sim = Sim(small(observers="full", duration_s=40.0), SteadyLoad()).run()
    rep = build_report(sim, final_checks(sim))
    assert_converged(rep)
    assert len(sim.cert_time) == sim.n * len(sim.world.tasks)   # every node's own machine certified
    assert rep["finality_s"]["observer_time_check_s"] < 1e-9


def test_bench_load_on_a_simulated_devnet():
    cfg = SimConfig(nodes=6, validators=6, topology="devnet", duration_s=40.0, drain_s=60.0,
                    grace_period_ms=3000, round_timeout_ms=4000, reputation_lag_ms=5000,
                    **LINKS["loopback"]).validate()
    load = BenchLoad(rate=50.0, seconds=4.0)
    sim = Sim(cfg, load).run()
    rep = build_report(sim, final_checks(sim))
    assert_converged(rep)
    assert len(load.prop_msgs) == 200
    # node 0 takes 50 batches/s but publishes at most 10 pubsub messages/s: bundles
    assert rep["counts"]["envelopes_per_pubsub_message"] > 2


def test_summary_sizes_match_the_encoder():
    rng = np.random.default_rng(1)
    for n in (0, 1, 15, 16, 300, 1024):
        counts = rng.integers(1, 70_000, n).tolist()
        rows = [(os.urandom(32), c, os.urandom(16)) for c in counts]
        assert summary_response_bytes(counts) == len(sp.encode_summary_response(rows, None))


def test_reconcile_finds_exactly_the_difference():
    rng = np.random.default_rng(2)
    ids = sorted(os.urandom(32) for _ in range(3000))
    ours = [i for i in ids if rng.random() > 0.01]
    missing, requests, qb, rb = reconcile(bytes(32), ids, ours)
    assert sorted(missing) == sorted(set(ids) - set(ours))
    assert requests > 1 and qb > 0 and rb > 0
    assert reconcile(bytes(32), ids, ids)[0] == []


def test_bad_parameters_are_refused_in_words():
    with pytest.raises(SimConfigError, match="validators"):
        SimConfig(nodes=10, validators=20).validate()
    with pytest.raises(SimConfigError, match="churn"):
        SimConfig(churn=0.6).validate()
    with pytest.raises(SimConfigError, match="unknown simulation parameter"):
        SimConfig().with_overrides(nodez=3)


def test_cli_json_and_exit_status():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "devtools.sim", "--nodes", "12", "--validators", "4", "--peers", "3",
                        "--duration", "20", "--task-interval-s", "8", "--task-duration-s", "10",
                        "--items-per-task", "50", "--labels-per-batch", "10", "--json"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["config"]["nodes"] == 12 and rep["checks"]["roots_identical"]
    bad = subprocess.run([sys.executable, "-m", "devtools.sim", "--nodes", "1"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=60)
    assert bad.returncode == 2 and "nodes" in bad.stderr

"""A discrete-event simulation of a labelmesh network: thousands of nodes in one process.

The protocol's own state machines and functions — validation (``protocol.messages``),
finality (``protocol.finality.TaskFinality``), sync reconciliation (``protocol.sync``), the
tally and reputation (``protocol.tally``, ``protocol.reputation``), bundles — driven by a
network model with a fake clock: GossipSub meshes with IHAVE/IWANT and IDONTWANT
(``net``), link delays, loss and bandwidth like ``tc netem``, churn, anti-entropy sync
sessions (``syncsim``), and a label workload of real signed messages (``world``,
``workload``). What is shared to make 1,000 nodes cheap, and why that keeps the checks
real, is in each module's docstring and in docs/scaling.md.

    python -m devtools.sim --nodes 1000 --validators 100 --duration 3600
    python -m devtools.sim --nodes 25 --topology devnet --bench-load --links loopback

``run(cfg)`` returns the report (a dict); the same config and seed give the same report
(apart from the wall-time fields).
"""
from __future__ import annotations

from .config import LINKS, SimConfig, SimConfigError


def run(cfg: SimConfig, workload=None, checks: bool = True) -> dict:
    """Run a simulation to its end and return its report (see ``report.build_report``)."""
    from .engine import Sim
    from .report import build_report, final_checks
    from .workload import SteadyLoad

    import time

    t0 = time.perf_counter()
    sim = Sim(cfg, workload if workload is not None else SteadyLoad()).run()
    t1 = time.perf_counter()
    result = final_checks(sim) if checks else {}
    sim.wall["checks_s"] = time.perf_counter() - t1
    rep = build_report(sim, result)
    rep["wall_total_s"] = round(time.perf_counter() - t0, 2)
    return rep


__all__ = ["LINKS", "SimConfig", "SimConfigError", "run"]

"""``python -m devtools.sim``: run a simulation and print its report.

    python -m devtools.sim --nodes 1000 --validators 100 --duration 3600
    python -m devtools.sim --nodes 25 --validators 25 --topology devnet --links loopback --bench-load
    python -m devtools.sim --nodes 200 --churn 0.05 --drop 0.01 --json --out report.json

Every field of ``SimConfig`` is an option (``--field-name``; ``--duration`` and ``--drain``
are ``duration_s`` and ``drain_s``). Exit status: 0 when every check passed, 1 when a check
failed (the report says which), 2 on a bad option.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys

from .config import LINKS, SimConfig, SimConfigError

ALIASES = {"duration_s": "--duration", "drain_s": "--drain"}


def _field_help() -> dict[str, str]:
    """The comment beside each SimConfig field (config.py is the one place they are written)."""
    out = {}
    for line in inspect.getsource(SimConfig).splitlines():
        m = re.match(r"\s+(\w+): [\w\[\], |]+ = .*?#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).replace("%", "%%")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m devtools.sim", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--links", choices=sorted(LINKS), help="link preset (sets delays, jitter, loss, bandwidth)")
    p.add_argument("--bench-load", action="store_true",
                   help="replay devtools/bench/network.py (propagation through node 0, then a finality task) "
                        "instead of the steady load")
    p.add_argument("--bench-rate", type=float, default=100.0, help="with --bench-load: batches/s (default 100)")
    p.add_argument("--bench-seconds", type=float, default=10.0, help="with --bench-load: seconds of load (default 10)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", help="also write the JSON report to this file")
    helps = _field_help()
    for f in dataclasses.fields(SimConfig):
        flag = ALIASES.get(f.name, "--" + f.name.replace("_", "-"))
        kind = type(f.default)
        h = helps.get(f.name, "") + f" (default {f.default})"
        if kind is tuple:
            p.add_argument(flag, dest=f.name, metavar="X,Y,...", help=h,
                           type=lambda s: tuple(float(x) for x in s.split(",") if x.strip()))
        elif kind is bool:
            p.add_argument(flag, dest=f.name, type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                           metavar="BOOL", help=h)
        else:
            p.add_argument(flag, dest=f.name, type=kind, help=h)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    overrides = dict(LINKS[args.links]) if args.links else {}
    overrides.update({f.name: getattr(args, f.name) for f in dataclasses.fields(SimConfig)
                      if getattr(args, f.name) is not None})
    try:
        cfg = SimConfig().with_overrides(**overrides)
    except SimConfigError as e:
        print(f"python -m devtools.sim: {e}", file=sys.stderr)
        return 2
    from . import run
    from .report import format_report
    from .workload import BenchLoad

    workload = BenchLoad(args.bench_rate, args.bench_seconds) if args.bench_load else None
    rep = run(cfg, workload)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rep, fh, indent=1)
    print(json.dumps(rep, indent=1) if args.json else format_report(rep))
    c = rep["checks"]
    ok = c["stores_identical"] and c["roots_identical"] and c["certificates_verified"] and \
        c["no_conflicting_certificate"] and not c["rejected_messages"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

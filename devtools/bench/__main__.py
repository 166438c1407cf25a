"""scripts/bench [--quick] [--json] [--no-write] [NAME ...]

NAME is any of: limits, consensus, ingest, catchup, network, wan, ui, sim, ledger, reconnect, replica (default: all).
``limits`` always runs (every ratio needs it). Progress goes to stderr; ``--json``
prints one JSON object ``{"figures": [...], ...}`` on stdout. A full run (no
``--quick``) writes BENCHMARKS.md (figures of the benchmarks that ran replace their
old rows); ``--quick`` writes it only with ``--write``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from . import report
from .common import log

#: the benchmarks whose run() also takes the limits measured in the same run (for ratios)
TAKES_LIMITS = {"ingest", "catchup", "ledger"}
NAMES = ["limits", "consensus", "ingest", "catchup", "network", "wan", "ui", "sim", "ledger", "reconnect", "replica"]


def machine() -> dict:
    import lmdb
    import msgpack
    import nacl
    import numpy

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(), "pynacl": nacl.__version__, "lmdb": lmdb.__version__,
            "msgpack": ".".join(map(str, msgpack.version)), "numpy": numpy.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(NAMES)} (default all)")
    p.add_argument("--quick", action="store_true", help="short smoke run (< 5 min from a fresh clone)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md even with --quick")
    p.add_argument("--no-write", action="store_true", help="never touch BENCHMARKS.md")
    p.add_argument("--out", default="BENCHMARKS.md", help="the report file (default BENCHMARKS.md)")
    args = p.parse_args(argv)
    bad = [n for n in args.names if n not in NAMES]
    if bad:
        p.error(f"unknown benchmark {bad[0]!r}; choose from {', '.join(NAMES)}")
    names = args.names or NAMES
    t_start = time.monotonic()
    figures: list[dict] = []
    failures: dict[str, str] = {}
    from . import limits as limits_mod

    log(f"{'quick' if args.quick else 'full'} run: {', '.join(names)}")
    from .common import DETAILS

    details: dict[str, dict] = {}
    lim_figs, limits = limits_mod.run(args.quick)
    figures += [dict(f, bench="limits") for f in lim_figs]
    for name in names:
        if name == "limits":
            continue
        # Each benchmark starts with the earlier ones' writes on disk, so the write-back of
        # ingest's and catch-up's stores (hundreds of MB) can never land in a later
        # benchmark's fsyncs. (A guard: in the runs logged so far there was nothing left to
        # write, "disk synced in 0.0 s".)
        t_sync = time.monotonic()
        os.sync()
        log(f"{name}: disk synced in {time.monotonic() - t_sync:.1f} s before starting")
        t0 = time.monotonic()
        DETAILS.clear()
        n_before = len(figures)
        try:
            module = importlib.import_module(f".{name}", __package__)
            figures += module.run(args.quick, limits) if name in TAKES_LIMITS else module.run(args.quick)
        except Exception as e:  # one broken benchmark must not hide the others' figures
            import traceback
            traceback.print_exc()
            failures[name] = f"{type(e).__name__}: {e}"
            log(f"{name}: FAILED: {failures[name]}")
        for f in figures[n_before:]:
            f["bench"] = name
        details[name] = dict(DETAILS)
        log(f"{name}: {time.monotonic() - t0:.0f} s")
    command = "scripts/bench" + (" --quick" if args.quick else "") + "".join(f" {n}" for n in args.names)
    result = {"figures": figures, "mode": "quick" if args.quick else "full", "command": command,
              "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "seconds": round(time.monotonic() - t_start, 1), "failures": failures,
              "details": details}
    if (not args.quick or args.write) and not args.no_write:
        report.write(Path(args.out), result, names)
        log(f"wrote {args.out}")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(report.table(figures))
        for d in details.values():
            for title, body in d.items():
                print(f"\n{title}\n\n{body}")
    log(f"done in {result['seconds']} s" + (f"; FAILED: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

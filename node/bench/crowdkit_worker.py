"""Runs crowd-kit aggregators for ``node.bench.consensus``; executed by the Python of
``.bench-venv/`` (crowd-kit 1.4.2, scikit-learn < 1.6), never imported by labelmesh.

stdin: one JSON job. stdout: one JSON object.

  {"kind": "csv", "answers": PATH, "truth": PATH, "methods": [NAME, ...]}
  {"kind": "npz", "path": PATH, "methods": [NAME, ...], "repeats": N}

Only ``fit_predict`` is timed (the DataFrame is built before the clock starts).
Accuracy = share of items with a truth (and at least one answer) whose aggregated
label equals it; labels compared as strings (csv) or integers (npz).
"""
import json
import statistics
import sys
import time


def _method(name):
    from crowdkit import aggregation as agg

    return {"MajorityVote": lambda: agg.MajorityVote(), "Wawa": lambda: agg.Wawa(),
            "DawidSkene": lambda: agg.DawidSkene(n_iter=100),
            "OneCoinDawidSkene": lambda: agg.OneCoinDawidSkene(n_iter=100),
            "GLAD": lambda: agg.GLAD(n_iter=100), "MACE": lambda: agg.MACE()}[name]()


def _accuracy(pred, truth: dict) -> float:
    ok = n = 0
    for task, lab in pred.items():
        t = truth.get(task)
        if t is None:
            continue
        n += 1
        ok += str(lab) == str(t)
    return ok / n if n else float("nan")


def main():
    import numpy as np
    import pandas as pd

    job = json.load(sys.stdin)
    out = {}
    if job["kind"] == "csv":
        df = pd.read_csv(job["answers"], dtype=str)[["worker", "task", "label"]]
        truth = dict(pd.read_csv(job["truth"], dtype=str)[["task", "label"]].itertuples(index=False))
        for name in job["methods"]:
            m = _method(name)
            t = time.perf_counter()
            pred = m.fit_predict(df)
            dt = time.perf_counter() - t
            out[name] = {"accuracy": _accuracy(pred.to_dict(), truth), "seconds": dt}
    else:
        z = np.load(job["path"])
        df = pd.DataFrame({"task": z["item"], "worker": z["annotator"], "label": z["label"]})
        truth = dict(enumerate(z["truth"].tolist()))
        for name in job["methods"]:
            times, acc = [], None
            for _ in range(job.get("repeats", 1)):
                m = _method(name)
                t = time.perf_counter()
                pred = m.fit_predict(df)
                times.append(time.perf_counter() - t)
                acc = _accuracy(pred.to_dict(), truth)
            out[name] = {"accuracy": acc, "seconds": statistics.median(times), "all_seconds": times}
    import crowdkit
    import sklearn

    out["_versions"] = {"crowd-kit": getattr(crowdkit, "__version__", "1.4.2"), "pandas": pd.__version__,
                        "scikit-learn": sklearn.__version__, "numpy": np.__version__}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

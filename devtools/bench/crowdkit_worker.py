"""Runs crowd-kit aggregators for ``devtools.bench.consensus``; executed by the Python of
``.bench-venv/`` (crowd-kit 1.4.2, scikit-learn < 1.6), never imported by labelmesh.

stdin: one JSON job. stdout: one JSON object.

  {"kind": "csv", "answers": PATH, "truth": PATH, "methods": [NAME, ...],
   "gold_tasks": [TASK, ...]}                       # gold_tasks optional
  {"kind": "npz", "path": PATH, "methods": [NAME, ...], "repeats": N}

Only ``fit_predict`` is timed (the DataFrame is built before the clock starts).
Accuracy = share of items with a truth (and at least one answer) whose aggregated
label equals it; labels compared as strings (csv) or integers (npz).

With ``gold_tasks`` (csv only), every method also reports ``accuracy_held_out``: its
accuracy (fit without gold) on the truth items that are not gold, and ``DawidSkene`` is
fit a second time with those tasks' true labels as ``true_labels`` (crowd-kit 1.4.2's
``DawidSkene.fit(data, true_labels=...)``: the posteriors of gold tasks are set to
one-hot in the initialisation and after every E step), reported as ``DawidSkene+gold``
with its accuracy on the same held-out items.
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
        gold_tasks = set(job.get("gold_tasks") or ())
        held_out = {t: lab for t, lab in truth.items() if t not in gold_tasks}
        for name in job["methods"]:
            m = _method(name)
            t = time.perf_counter()
            pred = m.fit_predict(df)
            dt = time.perf_counter() - t
            out[name] = {"accuracy": _accuracy(pred.to_dict(), truth), "seconds": dt}
            if gold_tasks:
                out[name]["accuracy_held_out"] = _accuracy(pred.to_dict(), held_out)
        if gold_tasks:
            gold = pd.Series({t: truth[t] for t in sorted(gold_tasks)}, dtype=object)
            m = _method("DawidSkene")
            t = time.perf_counter()
            pred = m.fit_predict(df, true_labels=gold)
            dt = time.perf_counter() - t
            labels = pred.to_dict()
            out["DawidSkene+gold"] = {"accuracy_held_out": _accuracy(labels, held_out), "seconds": dt,
                                      "gold": len(gold),
                                      "pred_held_out": {t: str(labels[t]) for t in held_out if t in labels}}
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

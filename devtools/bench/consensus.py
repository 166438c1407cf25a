"""Consensus: our aggregation (``protocol.aggregate.compute_consensus``) against
crowd-kit on the same data in the same run.

1. A simulated task of 1,000,000 labels (100,000 items, 1,000 annotators, 5 classes,
   10 labels per item; annotators: 70% fair (accuracy 0.6-0.95), 20% weak (0.35-0.6),
   10% spammers (uniform)), and smaller ones of 10^4 and 10^5 labels. Times are the
   pure aggregation call on in-memory integer arrays, for us and for crowd-kit's
   ``fit_predict`` (DataFrame built before the clock), median of repeats.
2. The eight real datasets (``../shared/datasets``): accuracy and time of ours (no
   gold, no reputation: every worker weight 1) and of crowd-kit MajorityVote, Wawa and
   DawidSkene(n_iter=100). GLAD and MACE (minutes per dataset) are in BASELINES.md.
3. A node's event loop while it aggregates a 100,000-item task with 10% gold:
   the longest loop gap inline and with ``Node.prepare_result``'s worker thread.
4. The same datasets with 10% revealed gold (``gold_split``: the first 10% of the items
   with truth in SHA-256 order of the task name, rounded to nearest; accuracy on the other
   90%): ours with that gold against crowd-kit ``DawidSkene(n_iter=100).fit(answers,
   true_labels=gold)`` on the same gold, and both without gold on the same 90%.

crowd-kit's DawidSkene runs with its defaults apart from ``n_iter=100`` (which is also
the default): it stops once its evidence lower bound improves by less than ``tol=1e-5``
per answer (4 iterations on the simulated 1M-label task), so its time is that of a
converged run, as ours is (ours stops at its own integer convergence test).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

from .common import DETAILS, figure, log

ROOT = Path(__file__).resolve().parents[2]
BENCH_VENV = ROOT / ".bench-venv"
CROWDKIT_REQS = ["crowd-kit==1.4.2", "scikit-learn==1.5.2", "pandas==2.3.3"]  # as in BASELINES.md
DATASETS = ["bluebirds", "rte", "temp", "product", "possent", "dog", "relevance", "adult"]


def datasets_dir() -> Path | None:
    for p in [os.environ.get("LABELMESH_DATASETS"), ROOT.parent / "shared" / "datasets", "/work/shared/datasets"]:
        if p and (Path(p) / "rte" / "answers.csv").exists():
            return Path(p)
    return None


def ensure_bench_venv() -> Path:
    """``.bench-venv/bin/python`` with crowd-kit, created (once) from PyPI."""
    py = BENCH_VENV / "bin" / "python"
    stamp = BENCH_VENV / (".installed-" + "-".join(CROWDKIT_REQS).replace("=", "").replace("<", "lt"))
    if py.exists() and stamp.exists():
        return py
    log(f"creating {BENCH_VENV} with {' '.join(CROWDKIT_REQS)} (first run; takes a minute)")
    subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    with open(BENCH_VENV / "install.log", "wb") as lf:
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", *CROWDKIT_REQS], stdout=lf, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(CROWDKIT_REQS)} failed; see {BENCH_VENV / 'install.log'}")
    stamp.touch()
    return py


def crowdkit(job: dict) -> dict:
    py = ensure_bench_venv()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([str(py), str(Path(__file__).with_name("crowdkit_worker.py"))], input=json.dumps(job),
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"crowd-kit worker failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout)


# ------------------------------------------------------------------ simulation

def simulate(n_items: int, n_annotators: int, n_classes: int, per_item: int, seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_classes, n_items)
    kind = rng.random(n_annotators)
    acc = np.where(kind < 0.7, rng.uniform(0.6, 0.95, n_annotators),
                   np.where(kind < 0.9, rng.uniform(0.35, 0.6, n_annotators), 1.0 / n_classes))
    # per item, `per_item` distinct annotators: base + k * step (mod n), step coprime with n
    coprime = np.array([s for s in range(1, n_annotators) if np.gcd(s, n_annotators) == 1])
    base = rng.integers(0, n_annotators, n_items)
    step = coprime[rng.integers(0, len(coprime), n_items)]
    ann = (base[:, None] + np.arange(per_item)[None, :] * step[:, None]) % n_annotators
    item = np.repeat(np.arange(n_items), per_item)
    ann = ann.reshape(-1)
    correct = rng.random(item.size) < acc[ann]
    wrong = (truth[item] + rng.integers(1, n_classes, item.size)) % n_classes
    spam = kind[ann] >= 0.9
    label = np.where(spam, rng.integers(0, n_classes, item.size), np.where(correct, truth[item], wrong))
    return {"item": item.astype(np.int32), "annotator": ann.astype(np.int32), "label": label.astype(np.int32),
            "truth": truth.astype(np.int32), "n_items": n_items, "n_annotators": n_annotators, "n_classes": n_classes}


def ours(sim: dict, repeats: int) -> tuple[float, float]:
    from protocol.aggregate import WEIGHT_ONE, AggregateInput, compute_consensus

    inp = AggregateInput(n_items=sim["n_items"], n_classes=sim["n_classes"], n_annotators=sim["n_annotators"],
                         item=sim["item"], annotator=sim["annotator"], label=sim["label"],
                         prior_weight=np.full(sim["n_annotators"], WEIGHT_ONE, dtype=np.int64))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        res = compute_consensus(inp)
        times.append(time.perf_counter() - t)
    acc = float((np.asarray(res.label) == sim["truth"]).mean())
    return statistics.median(times), acc


def run_simulated(quick: bool) -> list[dict]:
    figs = []
    repeats = 1 if quick else 3
    sizes = [(1_000, 100), (10_000, 1_000), (100_000, 1_000)]
    rows = ["| labels | items | annotators | ours (s) | ours acc | crowd-kit DS (s) | DS acc | crowd-kit MV (s) | MV acc | speed-up vs DS |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(prefix="lmb-cons-") as d:
        for n_items, n_ann in sizes:
            sim = simulate(n_items, n_ann, 5, 10)
            n = sim["item"].size
            t_ours, acc_ours = ours(sim, repeats)
            path = os.path.join(d, f"sim{n}.npz")
            np.savez(path, item=sim["item"], annotator=sim["annotator"], label=sim["label"], truth=sim["truth"])
            ck = crowdkit({"kind": "npz", "path": path, "methods": ["DawidSkene", "MajorityVote"], "repeats": repeats})
            ds, mv = ck["DawidSkene"], ck["MajorityVote"]
            speedup = ds["seconds"] / t_ours
            log(f"consensus {n:,} labels: ours {t_ours:.2f} s (acc {acc_ours:.4f}), crowd-kit DS {ds['seconds']:.2f} s "
                f"(acc {ds['accuracy']:.4f}), MV {mv['seconds']:.2f} s (acc {mv['accuracy']:.4f}): {speedup:.1f}x")
            rows.append(f"| {n:,} | {n_items:,} | {n_ann:,} | {t_ours:.3f} | {acc_ours:.4f} | {ds['seconds']:.3f} | "
                        f"{ds['accuracy']:.4f} | {mv['seconds']:.3f} | {mv['accuracy']:.4f} | {speedup:.1f}× |")
            tag = {1_000: "1e4", 10_000: "1e5", 100_000: "1m"}[n_items]
            if tag == "1m":
                figs.append(figure("consensus_1m_s", t_ours, "s", limit=ds["seconds"], target=2.0, higher_is_better=False,
                                   note=f"100k items, 1k annotators, 5 classes; accuracy ours {acc_ours:.4f} vs "
                                        f"crowd-kit DS {ds['accuracy']:.4f}; limit = crowd-kit DS time"))
                figs.append(figure("consensus_speedup_vs_crowdkit", speedup, "x", target=3.0,
                                   note=f"crowd-kit DawidSkene(n_iter=100) {ds['seconds']:.2f} s on the same labels, "
                                        f"same run; median of {repeats}"))
                figs.append(figure("consensus_accuracy_1m", acc_ours, "share", limit=ds["accuracy"],
                                   note="ratio = ours / crowd-kit DS accuracy"))
            else:
                figs.append(figure(f"consensus_{tag}_s", t_ours, "s", limit=ds["seconds"], higher_is_better=False,
                                   note=f"limit = crowd-kit DS time; {speedup:.1f}x faster"))
    DETAILS["Consensus time on simulated tasks (same labels, same run)"] = "\n".join(rows)
    return figs


# ------------------------------------------------------------------ datasets

GOLD_SHARE_PERCENT = 10


def gold_split(tasks_with_truth, share_percent: int = GOLD_SHARE_PERCENT) -> tuple[list[str], list[str]]:
    """(gold, held_out): the tasks with truth ranked by SHA-256 of their name; the first
    round(n * share / 100) are revealed as gold, the rest are where accuracy is measured.
    The same rule as ``tests/test_aggregate.py::gold_sample`` and ``scripts/accuracy``."""
    ranked = sorted(tasks_with_truth, key=lambda t: hashlib.sha256(t.encode()).digest())
    n_gold = round(len(ranked) * share_percent / 100)
    return ranked[:n_gold], ranked[n_gold:]


def load_dataset(path: Path):
    """(answer table, truth {task: label}) of one dataset, truth restricted to answered tasks."""
    from node.cli.aggregate import read_answers

    table = read_answers(str(path / "answers.csv"))
    tasks = set(table.tasks)
    with open(path / "truth.csv", newline="") as f:
        truth = {r["task"]: r["label"] for r in csv.DictReader(f) if r["task"] in tasks}
    return table, truth


def ours_on_dataset(table, truth: dict, gold_tasks=()) -> tuple[dict, float]:
    """Our labels ({task: label or None}) with the given tasks' truth revealed as gold, and
    the time of the ``compute_consensus`` call."""
    from protocol.aggregate import WEIGHT_ONE, AggregateInput, compute_consensus

    index = {t: i for i, t in enumerate(table.tasks)}
    classes = {c: i for i, c in enumerate(table.labels)}
    gold = {index[t]: classes[truth[t]] for t in gold_tasks if truth[t] in classes} or None
    inp = AggregateInput(n_items=len(table.tasks), n_classes=len(table.labels), n_annotators=len(table.workers),
                         item=table.item, annotator=table.annotator, label=table.label,
                         prior_weight=np.full(len(table.workers), WEIGHT_ONE, dtype=np.int64), gold=gold)
    t = time.perf_counter()
    res = compute_consensus(inp)
    dt = time.perf_counter() - t
    labels = {task: (table.labels[int(lab)] if lab >= 0 else None) for task, lab in zip(table.tasks, res.label)}
    return labels, dt


def sign_test_p(b: int, c: int) -> float:
    """Exact two-sided sign test (McNemar's exact test) of b against c discordant items:
    min(1, 2 * P(X <= min(b, c))) for X ~ Binomial(b + c, 1/2); 1.0 when b + c = 0."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def accuracy_on(labels: dict, truth: dict, tasks) -> float:
    tasks = list(tasks)
    return sum(labels[t] == truth[t] for t in tasks) / len(tasks)


def run_datasets(quick: bool) -> list[dict]:
    root = datasets_dir()
    if root is None:
        log("consensus: datasets not found (set LABELMESH_DATASETS); skipping the accuracy table")
        return []
    names = ["bluebirds", "rte", "dog"] if quick else DATASETS
    methods = ["MajorityVote", "Wawa", "DawidSkene"]
    rows = ["| dataset | answers | ours acc | ours (s) | MV acc | Wawa acc | DS acc | DS (s) | ours − DS (points) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    gold_rows = ["| dataset | gold items | scored items | ours, no gold | ours, 10% gold | DS, no gold | "
                 "DS, same gold | ours − DS with gold (points) | only ours right | only DS right | p (sign test) |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    accs, ds_accs, at_or_above = [], [], 0
    for name in names:
        p = root / name
        table, truth = load_dataset(p)
        labels, dt = ours_on_dataset(table, truth)
        acc = accuracy_on(labels, truth, truth)
        gold, held_out = gold_split(truth)
        labels_gold, _ = ours_on_dataset(table, truth, gold)
        acc_held, acc_gold = accuracy_on(labels, truth, held_out), accuracy_on(labels_gold, truth, held_out)
        ck = crowdkit({"kind": "csv", "answers": str(p / "answers.csv"), "truth": str(p / "truth.csv"),
                       "methods": methods, "gold_tasks": gold})
        n_answers = sum(1 for _ in open(p / "answers.csv")) - 1
        ds, ds_gold = ck["DawidSkene"], ck["DawidSkene+gold"]
        accs.append(acc)
        ds_accs.append(ds["accuracy"])
        rows.append(f"| {name} | {n_answers:,} | {acc:.3f} | {dt:.3f} | {ck['MajorityVote']['accuracy']:.3f} | "
                    f"{ck['Wawa']['accuracy']:.3f} | {ds['accuracy']:.3f} | {ds['seconds']:.2f} | "
                    f"{100 * (acc - ds['accuracy']):+.1f} |")
        margin = acc_gold - ds_gold["accuracy_held_out"]
        at_or_above += margin >= 0
        ds_pred = ds_gold["pred_held_out"]
        only_ours = sum(labels_gold[t] == truth[t] and ds_pred.get(t) != truth[t] for t in held_out)
        only_ds = sum(labels_gold[t] != truth[t] and ds_pred.get(t) == truth[t] for t in held_out)
        gold_rows.append(f"| {name} | {len(gold)} | {len(held_out)} | {acc_held:.4f} | {acc_gold:.4f} | "
                         f"{ds['accuracy_held_out']:.4f} | {ds_gold['accuracy_held_out']:.4f} | {100 * margin:+.2f} | "
                         f"{only_ours} | {only_ds} | {sign_test_p(only_ours, only_ds):.2f} |")
        log(f"consensus {name}: ours {acc:.3f} ({dt:.2f} s), crowd-kit DS {ds['accuracy']:.3f} ({ds['seconds']:.2f} s); "
            f"10% gold: ours {acc_gold:.4f}, DS {ds_gold['accuracy_held_out']:.4f}")
    mean, ds_mean = statistics.mean(accs), statistics.mean(ds_accs)
    rows.append(f"| **mean** | | **{mean:.3f}** | | | | **{ds_mean:.3f}** | | {100 * (mean - ds_mean):+.1f} |")
    versions = (f"crowd-kit {ck['_versions']['crowd-kit']}, pandas {ck['_versions']['pandas']}, "
                f"scikit-learn {ck['_versions']['scikit-learn']} in `.bench-venv/`; one BLAS thread.")
    DETAILS["Consensus accuracy on the real datasets (no gold, no reputation)"] = "\n".join(rows) + "\n\n" + versions
    DETAILS["Consensus accuracy with 10% revealed gold (same gold for both)"] = (
        "\n".join(gold_rows) + f"\n\nGold = the first {GOLD_SHARE_PERCENT}% of the items with truth in SHA-256 order "
        "of the task name; every column is scored on the other 90%. DS = crowd-kit `DawidSkene(n_iter=100)`, "
        "with gold `fit(answers, true_labels=gold)`. 'Only ours right' / 'only DS right' count the scored items "
        "where exactly one of the two (both with gold) has the true label; p is the exact two-sided sign test "
        "on those two counts (McNemar's exact test): the chance of a split at least this uneven if neither "
        "method were better. " + versions)
    return [figure("consensus_mean_accuracy_datasets", mean, "share", limit=ds_mean,
                   note=f"mean over {len(names)} datasets; limit = crowd-kit DS mean, same run"),
            figure("consensus_gold_datasets_at_or_above_ds", at_or_above, "datasets", target=len(names),
                   note=f"datasets (of {len(names)}) where ours with 10% gold >= crowd-kit DS with the same gold, "
                        "scored on the other 90%")]


def run(quick: bool) -> list[dict]:
    return run_simulated(quick) + run_loop_stall(quick) + run_datasets(quick)


# ------------------------------------------------------------------ event loop during aggregation


def run_loop_stall(quick: bool) -> list[dict]:
    """A node's event loop while it aggregates a big task with gold: an in-process Node
    (no network) holds a simulated task (100,000 items, 5 labels each, 1,000 annotators,
    3 classes; 1,000 items in quick mode) with 10% revealed gold, and aggregates it once
    inline (``Node.compute_result``, as every caller did before) and once through
    ``Node.prepare_result`` (a worker thread), while a loop task sleeps 10 ms at a time
    and records each gap.  The figure is the longest gap: how long gossip, sync and the
    RPC would wait."""
    return trio.run(_loop_stall, 1_000 if quick else 100_000)


async def _loop_stall(n_items: int) -> list[dict]:
    from node.rpc.methods import METHODS
    from node.app import Node
    from node.keystore import Keystore
    from protocol.genesis import make_genesis
    from protocol.messages import AnnotationBatch, sign_message

    from .common import annotator_keys

    n_ann, n_classes, per_item = 1_000, 3, 5
    sim = simulate(n_items, n_ann, n_classes, per_item, seed=11)
    now = [int(time.time() * 1000)]
    req_seed = b"labelmesh-bench-requester".ljust(32, b"\0")
    import nacl.signing

    req_pub = bytes(nacl.signing.SigningKey(req_seed).verify_key)
    g = make_genesis("bench-stall", now[0] - 1000, [(req_pub, 1)], [], [(req_pub, 10**9)],
                     {"max_items_per_task": max(n_items, 10_000), "grace_period_ms": 86_400_000})
    figs = []
    with tempfile.TemporaryDirectory(prefix="lmb-stall-") as d:
        ks = Keystore(Path(d) / "n")
        ks.create("req", seed=req_seed)
        async with trio.open_nursery() as nursery:
            node = Node(Path(d) / "n", g, p2p_factory=None, clock=lambda: now[0], keystore=ks)
            await nursery.start(node.run)
            truth = sim["truth"]
            r = await METHODS["task_post"](node, {
                "account": "req", "title": "stall", "labels": [f"c{k}" for k in range(n_classes)],
                "items": [f"i{k}" for k in range(n_items)], "duration_s": 3600, "bounty": 1_000_000,
                "gold": [[i, int(truth[i])] for i in range(0, n_items, 10)]})
            tid = bytes.fromhex(r["task_id"])
            keys = annotator_keys(n_ann)
            order = np.lexsort((sim["item"], sim["annotator"]))
            item, ann, lab = sim["item"][order], sim["annotator"][order], sim["label"][order]
            raws, start = [], 0
            created = now[0] + 1
            while start < item.size:
                a = int(ann[start])
                end = min(int(np.searchsorted(ann, a, side="right")), start + 100)
                b = AnnotationBatch(annotator=bytes(keys[a].verify_key), task_id=tid, created_at=created + len(raws) % 1000,
                                    labels=tuple(zip(item[start:end].tolist(), lab[start:end].tolist())))
                raws.append(sign_message(b, keys[a], g.network_id).raw)
                start = end
            for k in range(0, len(raws), 500):
                for v, _ in await node.ingest_many(raws[k:k + 500], "local"):
                    assert v.ok, v.reason
            now[0] = node.tasks[tid].deadline + 1
            await node.reveal_due_gold()
            gaps = {}
            for mode in ("inline", "thread"):
                node.clear_result_cache()
                node.result_thread_min_messages = 0 if mode == "thread" else 1 << 62
                seen, done = [], trio.Event()

                async def ticker():
                    last = time.perf_counter()
                    while not done.is_set():
                        await trio.sleep(0.01)
                        t = time.perf_counter()
                        seen.append(t - last)
                        last = t

                async with trio.open_nursery() as inner:
                    inner.start_soon(ticker)
                    await trio.sleep(0.05)
                    t0 = time.perf_counter()
                    if mode == "inline":
                        res = node.compute_result(tid, None)
                    else:
                        res = await node.prepare_result(tid)
                    took = time.perf_counter() - t0
                    done.set()
                gaps[mode] = (max(seen) * 1000, took, res.result_root)
                log(f"consensus loop stall ({mode}, {item.size:,} labels, 10% gold): aggregation {took:.2f} s, "
                    f"longest loop gap {gaps[mode][0]:.0f} ms")
            nursery.cancel_scope.cancel()
    assert gaps["inline"][2] == gaps["thread"][2]  # the same result either way
    figs.append(figure("consensus_loop_stall_ms", gaps["thread"][0], "ms", limit=gaps["inline"][0],
                       higher_is_better=False,
                       note=f"longest event-loop gap while a node aggregates a {n_items:,}-item task "
                            f"({item.size:,} labels, 10% gold; {gaps['thread'][1]:.2f} s) in its worker thread; "
                            f"limit = the same aggregation inline on the loop ({gaps['inline'][1]:.2f} s)"))
    return figs

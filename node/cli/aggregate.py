"""``labelmesh aggregate``: consensus labels for answer files, offline (no network).

Reads a crowd answers CSV (header ``worker,task,label``), optional revealed gold
(``task,label``) and optional reputations (``worker,weight``), runs the same pure
aggregation the network uses (:mod:`protocol.aggregate`) and writes ``task,label,
confidence,agreement``.

File rules (each violation is one clear error line, exit status 2):

- UTF-8 (a leading BOM is accepted), comma separated, a header with the columns named above in
  any order (crowd-kit writes ``task,worker,label``); or, for the answers, a Label Studio
  JSON export (``.json``: its annotations, node/cli/labelstudio.py).
- At most ``MAX_CSV_ROWS`` data rows per file and ``MAX_FIELD_CHARS`` characters per
  field; no empty fields.
- Class order: the distinct labels of the answers file, sorted numerically when every
  label is an integer, else as strings.  Ties between classes go to the first class in
  this order.  A gold label that no answer uses is an error (it is probably a typo or a
  different coding).
- Repeated (worker, task) rows: identical repeats count once; a worker that gave two
  different labels to the same task is an equivocator on that task and none of its votes on
  that task count (the network's rule; it does not depend on row order).
- Reputation weights are decimals in [0, ``MAX_WEIGHT``] (1 = one full vote, 0 = no say);
  workers without a row get ``--default-weight`` (1 unless given).  Without a reputation
  file every worker weighs 1.
- Gold tasks that received no answer still appear in the output, with their gold label.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from protocol.aggregate import (
    MAX_PRIOR_WEIGHT,
    ONE,
    WEIGHT_ONE,
    AggregateError,
    AggregateInput,
    AggregateResult,
    compute_consensus,
    compute_equivocations,
    compute_weighted_plurality,
    CONSENSUS_ITERATIONS,
    MAX_CONSENSUS_ITERATIONS,
)

#: Largest number of data rows accepted in any input file.
MAX_CSV_ROWS = 5_000_000
#: Largest number of characters in one field (worker id, task id, label, weight).
MAX_FIELD_CHARS = 1_000
#: Largest reputation weight accepted, in votes.
MAX_WEIGHT = MAX_PRIOR_WEIGHT // WEIGHT_ONE


class OfflineError(AggregateError):
    """An input file for ``labelmesh aggregate`` is missing, malformed or too large."""


@dataclass(frozen=True)
class AnswerTable:
    """Answers mapped to dense indices (workers, tasks and labels each sorted)."""

    workers: list[str]
    tasks: list[str]
    labels: list[str]
    item: np.ndarray  # int32 per row: index into tasks
    annotator: np.ndarray  # int32 per row: index into workers
    label: np.ndarray  # int32 per row: index into labels


def _read_rows(path: str, header: tuple[str, ...]) -> list[list[str]]:
    """Rows of a CSV file with the exact ``header``; raises OfflineError."""
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise OfflineError(f"{path}: cannot open: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle)
        try:
            first = next(reader, None)
            if first is None:
                raise OfflineError(f"{path}: empty file, expected the header {','.join(header)}")
            names = [f.strip() for f in first]
            if sorted(names) != sorted(header) or len(set(names)) != len(names):
                raise OfflineError(
                    f"{path}: header is {','.join(first)!r}, expected the columns {','.join(header)!r} "
                    "(in any order)"
                )
            order = [names.index(h) for h in header]  # columns by header name: crowd-kit writes task,worker,label
            rows = []
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                line = reader.line_num
                if len(row) != len(header):
                    raise OfflineError(
                        f"{path}:{line}: {len(row)} fields, expected {len(header)} ({','.join(header)})"
                    )
                row = [row[k].strip() for k in order]
                for name, field in zip(header, row):
                    if not field:
                        raise OfflineError(f"{path}:{line}: empty {name}")
                    if len(field) > MAX_FIELD_CHARS:
                        raise OfflineError(
                            f"{path}:{line}: {name} longer than {MAX_FIELD_CHARS} characters"
                        )
                rows.append(row)
                if len(rows) > MAX_CSV_ROWS:
                    raise OfflineError(f"{path}: more than {MAX_CSV_ROWS} rows (the limit)")
        except csv.Error as exc:
            raise OfflineError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None
        except UnicodeDecodeError:
            raise OfflineError(f"{path}: not UTF-8 text") from None
    return rows


def _label_order(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=lambda s: (int(s), s))
    except ValueError:
        return sorted(labels)


def _labelstudio_rows(path: str) -> list[list[str]]:
    """(worker, task, label) rows of a Label Studio JSON export's annotations."""
    from .common import CliError
    from .labelstudio import read_labelstudio

    try:
        ls = read_labelstudio(path)
    except CliError as e:
        raise OfflineError(str(e)) from None
    return [[who, ls.keys[item], label] for item, who, label in ls.annotations]


def read_answers(path: str) -> AnswerTable:
    """Read ``worker,task,label`` rows (columns in any order, by header name), or the
    annotations of a Label Studio JSON export (``.json``).  Raises OfflineError."""
    if path.lower().endswith(".json"):
        rows = _labelstudio_rows(path)
    else:
        rows = _read_rows(path, ("worker", "task", "label"))
    if not rows:
        raise OfflineError(f"{path}: no answers")
    workers = sorted({r[0] for r in rows})
    tasks = sorted({r[1] for r in rows})
    labels = _label_order({r[2] for r in rows})
    wi = {w: i for i, w in enumerate(workers)}
    ti = {t: i for i, t in enumerate(tasks)}
    li = {lab: i for i, lab in enumerate(labels)}
    return AnswerTable(
        workers=workers,
        tasks=tasks,
        labels=labels,
        item=np.fromiter((ti[r[1]] for r in rows), dtype=np.int32, count=len(rows)),
        annotator=np.fromiter((wi[r[0]] for r in rows), dtype=np.int32, count=len(rows)),
        label=np.fromiter((li[r[2]] for r in rows), dtype=np.int32, count=len(rows)),
    )


def read_gold(path: str, labels: list[str]) -> dict[str, int]:
    """Read ``task,label`` gold rows; returns task -> class index.  Raises OfflineError."""
    li = {lab: i for i, lab in enumerate(labels)}
    gold: dict[str, int] = {}
    for row in _read_rows(path, ("task", "label")):
        task, label = row
        if label not in li:
            raise OfflineError(
                f"{path}: gold label {label!r} of task {task!r} is not a label used in the answers"
                f" ({', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''})"
            )
        if task in gold and gold[task] != li[label]:
            raise OfflineError(f"{path}: task {task!r} has two different gold labels")
        gold[task] = li[label]
    return gold


def parse_weight(text: str, where: str) -> int:
    """A decimal weight in votes -> fixed point (floor to 1/WEIGHT_ONE).  Raises OfflineError."""
    # Fraction("1e-999999999") computes 10**999999999 (hangs): bound the exponent first.
    exp = re.search(r"[eE]\s*([-+]?[\d_]+)", text)
    if exp is not None and len(exp.group(1).lstrip("+-").lstrip("_0")) > 2:
        raise OfflineError(f"{where}: weight {text[:40]!r} has an exponent beyond +-99")
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise OfflineError(f"{where}: weight {text!r} is not a number") from None
    if not 0 <= value <= MAX_WEIGHT:
        raise OfflineError(f"{where}: weight {text} is outside [0, {MAX_WEIGHT}]")
    return int(value * WEIGHT_ONE)


def read_reputation(path: str) -> dict[str, int]:
    """Read ``worker,weight`` rows; returns worker -> fixed-point weight."""
    out: dict[str, int] = {}
    for row in _read_rows(path, ("worker", "weight")):
        worker, text = row
        if worker in out:
            raise OfflineError(f"{path}: worker {worker!r} appears twice")
        out[worker] = parse_weight(text, f"{path}: worker {worker!r}")
    return out


def format_share(value: int) -> str:
    """Fixed point (units 1/ONE) as a decimal with 4 places (exact input, correct rounding)."""
    return f"{int(value) / ONE:.4f}"


def write_labels(path: str, tasks: list[str], labels: list[str], res: AggregateResult) -> None:
    """Write ``task,label,confidence,agreement``; label empty when there is none."""
    try:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["task", "label", "confidence", "agreement"])
            for t, lab, conf, agr in zip(
                tasks, res.label.tolist(), res.confidence.tolist(), res.agreement.tolist()
            ):
                writer.writerow([t, labels[lab] if lab >= 0 else "", format_share(conf), format_share(agr)])
    except OSError as exc:
        raise OfflineError(f"{path}: cannot write: {exc.strerror or exc}") from None


def write_workers(path: str, workers: list[str], res: AggregateResult, n_answers: np.ndarray) -> None:
    """Write ``worker,accuracy,answers`` (estimated accuracy over counted answers)."""
    try:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["worker", "accuracy", "answers"])
            for w, acc, n in zip(workers, res.annotator_accuracy.tolist(), n_answers.tolist()):
                writer.writerow([w, format_share(acc), n])
    except OSError as exc:
        raise OfflineError(f"{path}: cannot write: {exc.strerror or exc}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``aggregate`` subcommand on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "aggregate",
        help="consensus labels for an answers CSV, offline",
        description=(
            "Aggregate crowd answers (CSV worker,task,label) into consensus labels with the "
            "network's reputation-weighted Dawid-Skene rule; writes task,label,confidence,agreement."
        ),
    )
    parser.add_argument("--answers", required=True, metavar="ANSWERS.csv",
                        help="columns worker,task,label in any order (crowd-kit: task,worker,label), or a Label "
                             "Studio JSON export (.json)")
    parser.add_argument("--gold", metavar="GOLD.csv", help="revealed gold, header task,label")
    parser.add_argument("--reputation", metavar="REP.csv", help="prior weights, header worker,weight (votes)")
    parser.add_argument(
        "--default-weight", default="1", metavar="W",
        help="weight of workers missing from --reputation (default 1)",
    )
    parser.add_argument("--out", required=True, metavar="LABELS.csv", help="output task,label,confidence,agreement")
    parser.add_argument("--workers-out", metavar="WORKERS.csv", help="also write worker,accuracy,answers")
    parser.add_argument(
        "--method", choices=("consensus", "plurality"), default="consensus",
        help="consensus (Dawid-Skene EM, default) or weighted plurality",
    )
    parser.add_argument(
        "--iterations", type=int, default=CONSENSUS_ITERATIONS,
        help=f"cap on EM updates for consensus; it stops earlier once converged "
             f"(default {CONSENSUS_ITERATIONS}, max {MAX_CONSENSUS_ITERATIONS})",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    parser.set_defaults(func=run_aggregate)
    return parser


def compute_offline_aggregate(args: argparse.Namespace) -> dict:
    """Do the work of ``labelmesh aggregate``; returns the summary.  Raises OfflineError."""
    table = read_answers(args.answers)
    tasks = list(table.tasks)
    gold_by_task = read_gold(args.gold, table.labels) if args.gold else {}
    extra = sorted(set(gold_by_task) - set(tasks))
    tasks.extend(extra)  # gold tasks without answers: indices after the answered ones
    task_index = {t: i for i, t in enumerate(tasks)}
    default = parse_weight(args.default_weight, "--default-weight")
    weights = np.full(len(table.workers), WEIGHT_ONE if not args.reputation else default, dtype=np.int64)
    if args.reputation:
        rep = read_reputation(args.reputation)
        for i, w in enumerate(table.workers):
            if w in rep:
                weights[i] = rep[w]
    inp = AggregateInput(
        n_items=len(tasks),
        n_classes=len(table.labels),
        n_annotators=len(table.workers),
        item=table.item,
        annotator=table.annotator,
        label=table.label,
        prior_weight=weights,
        gold={task_index[t]: c for t, c in gold_by_task.items()} or None,
    )
    if args.method == "plurality":
        res = compute_weighted_plurality(inp)
    else:
        res = compute_consensus(inp, iterations=args.iterations)
    eq_items, _ = compute_equivocations(inp)
    write_labels(args.out, tasks, table.labels, res)
    if args.workers_out:
        write_workers(args.workers_out, table.workers, res, np.bincount(table.annotator, minlength=len(table.workers)))
    return {
        "method": args.method,
        "answers": int(table.item.size),
        "workers": len(table.workers),
        "tasks": len(tasks),
        "classes": table.labels,
        "gold": len(gold_by_task),
        "equivocating_pairs": int(eq_items.size),
        "labelled": int((res.label >= 0).sum()),
        "alpha": res.alpha / ONE,
        "out": args.out,
    }


def run_aggregate(args: argparse.Namespace) -> int:
    """Entry point of ``labelmesh aggregate``: 0 on success, 2 on an input error."""
    try:
        summary = compute_offline_aggregate(args)
    except AggregateError as exc:
        print(f"labelmesh aggregate: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(
            f"{summary['labelled']} of {summary['tasks']} tasks labelled from {summary['answers']} answers "
            f"by {summary['workers']} workers ({summary['method']}; Krippendorff alpha "
            f"{summary['alpha']:.3f}; {summary['equivocating_pairs']} equivocating worker/task pairs ignored)"
            f" -> {summary['out']}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m node.cli.aggregate aggregate ...`` (the labelmesh CLI wires add_parser itself)."""
    parser = argparse.ArgumentParser(prog="labelmesh")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

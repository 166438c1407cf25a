"""scripts/bench's figure format and BENCHMARKS.md writer (no timing is measured or asserted here)."""
from __future__ import annotations

import json

from devtools.bench import report
from devtools.bench.common import figure, percentile


def test_figure_ratio_and_target():
    f = figure("ingest_batch_1", 7000.0, "labels/s", limit=14000.0, target=9800)
    assert f["ratio"] == 0.5 and f["limit"] == 14000.0 and f["meets_target"] is False
    g = figure("finality_s_n10", 4.2, "s", target=6.0, higher_is_better=False)
    assert g["meets_target"] is True and "ratio" not in g
    assert json.loads(json.dumps(f)) == f  # plain JSON


def test_percentile_nearest_rank():
    xs = list(range(1, 101))
    assert percentile(xs, 50) == 50 and percentile(xs, 99) == 99 and percentile(xs, 100) == 100
    assert percentile([7], 99) == 7 and percentile([], 50) is None


def _result(bench, figs, date):
    return {"figures": [dict(f, bench=bench) for f in figs], "mode": "full", "command": "scripts/bench",
            "date": date, "seconds": 1.0, "failures": {}, "details": {bench: {"Extra table": "| a |\n|---|"}},
            "machine": {"cores": 2, "cpu": "x", "python": "3.11", "platform": "p", "pynacl": "1", "lmdb": "1",
                        "msgpack": "1", "numpy": "1"}}


def test_write_keeps_notes_and_merges_runs(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# title\n\nhand-written intro\n\n" + report.BEGIN + "\n" + report.END + "\n\n## Notes\nkept\n")
    lim = figure("limit_ed25519_verify_per_s", 20000.0, "verifies/s")
    report.write(path, _result("ingest", [figure("ingest_batch_1", 1.0, "labels/s")], "d1")
                 | {"figures": [dict(lim, bench="limits"), dict(figure("ingest_batch_1", 1.0, "labels/s"), bench="ingest")]},
                 ["ingest"])
    report.write(path, _result("catchup", [figure("catchup_labels_per_s", 2.0, "labels/s")], "d2")
                 | {"figures": [dict(lim, bench="limits"),
                                dict(figure("catchup_labels_per_s", 2.0, "labels/s"), bench="catchup")]},
                 ["catchup"])
    text = path.read_text()
    assert text.startswith("# title\n\nhand-written intro\n") and text.rstrip().endswith("## Notes\nkept")
    assert "`ingest_batch_1`" in text and "`catchup_labels_per_s`" in text  # both runs' rows
    assert "Figures kept from earlier runs: `ingest`" in text
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1


def test_sign_test_p_exact_values():
    from devtools.bench.consensus import sign_test_p

    assert sign_test_p(0, 0) == 1.0 and sign_test_p(1, 0) == 1.0 and sign_test_p(0, 1) == 1.0
    assert sign_test_p(10, 0) == 2 / 1024  # 2 * P(X <= 0), X ~ Bin(10, 1/2)
    assert sign_test_p(2, 8) == sign_test_p(8, 2) == 2 * (1 + 10 + 45) / 1024
    assert sign_test_p(5, 5) == 1.0  # capped at 1

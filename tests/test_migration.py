"""Store schema migrations: a store written in the previous layout (schema 0: no
``by_kind`` index, no ``kind_counts``) is migrated at open, in one transaction; a
store of a newer labelmesh is refused with a clear message, by the Store and by
`labelmesh run`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from node.app import Node
from node.storage import migrations as store_mod
from node.storage.errors import BadInputError, StoreVersionError
from node.storage.layout import SCHEMA_VERSION, Record
from node.storage.store import Store

from .legacy_store import write_legacy_store
from protocol.messages import KIND_BATCH, KIND_TASK

from .helpers import T0, make_batch, make_task, make_test_genesis, signed

ROOT = Path(__file__).resolve().parent.parent


def sample_records(g, n_tasks=3, batches_per_task=4) -> list[Record]:
    """Real signed messages of several tasks, interleaved the way a node receives them."""
    out = []
    for t in range(n_tasks):
        tm = signed(make_task(n_items=5, nonce=t), 1, g.network_id)
        tid = tm.compute_id(g.network_id)
        out.append(Record(tid, KIND_TASK, tid, tm.raw))
        for b in range(batches_per_task):
            bm = signed(make_batch(50 + b, tid, [(i, (i + b) % 3) for i in range(5)]), 50 + b, g.network_id)
            out.append(Record(bm.compute_id(g.network_id), KIND_BATCH, tid, bm.raw))
    return out


def snapshot(s: Store, records) -> dict:
    """Everything the indexes answer, to compare a migrated store with a fresh one."""
    tids = sorted({r.task_id for r in records})
    return {"count": s.count(), "by_kind": s.count_by_kind(), "last_seq": s.last_seq(),
            "kind_ids": {k: s.kind_message_ids(k) for k in (KIND_TASK, KIND_BATCH)},
            "task_ids": {t: s.task_message_ids(t) for t in tids},
            "task_batches": {t: s.task_message_ids(t, KIND_BATCH) for t in tids},
            "arrival": [(seq, mid) for seq, mid, _ in s.iter_since(0, 10_000)]}


def test_v0_store_is_migrated_to_the_current_layout(tmp_path):
    g = make_test_genesis()
    recs = sample_records(g)
    write_legacy_store(tmp_path / "old", 0, recs)
    with Store(tmp_path / "fresh") as fresh:
        fresh.put_records(recs)
        want = snapshot(fresh, recs)
    with Store(tmp_path / "old") as s:
        assert s.migrated_from == 0
        assert s.get_meta("schema_version") == str(SCHEMA_VERSION).encode()
        assert snapshot(s, recs) == want
        # it keeps working as a current store: new arrivals continue the sequence
        more = signed(make_batch(99, recs[0].task_id, [(0, 1)]), 99, g.network_id)
        flags = s.put_records([Record(more.compute_id(g.network_id), KIND_BATCH, recs[0].task_id, more.raw)])
        assert flags == [True] and s.last_seq() == len(recs) + 1
        assert s.count_by_kind()[KIND_BATCH] == want["by_kind"][KIND_BATCH] + 1
    with Store(tmp_path / "old") as s:  # migrated once, not again
        assert s.migrated_from is None
        assert s.count() == len(recs) + 1


def test_node_starts_on_a_v0_store(tmp_path):
    """The node finds its tasks through the by_kind index, which v0 did not have."""
    g = make_test_genesis()
    recs = sample_records(g)
    write_legacy_store(tmp_path / "dd" / "store", 0, recs)
    node = Node(tmp_path / "dd", g, p2p_factory=None)
    try:
        assert set(node.tasks) == {r.task_id for r in recs}
        tid = recs[0].task_id
        assert len(node.task_batches(tid)) == 4
    finally:
        node.store.close()


def test_failed_migration_leaves_the_store_untouched(tmp_path, monkeypatch):
    g = make_test_genesis()
    recs = sample_records(g, n_tasks=1)
    write_legacy_store(tmp_path / "old", 0, recs)

    def broken(env, txn, meta):
        store_mod.migrate_0_to_1(env, txn, meta)  # does all its writes, then fails
        raise RuntimeError("simulated crash in the middle of a migration")

    monkeypatch.setitem(store_mod.MIGRATIONS, 0, broken)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Store(tmp_path / "old")
    monkeypatch.undo()
    with Store(tmp_path / "old") as s:  # still version 0 on disk: migrated now, and correct
        assert s.migrated_from == 0
        assert s.count_by_kind() == {KIND_TASK: 1, KIND_BATCH: 4}


def test_newer_store_is_refused_with_a_clear_message(tmp_path):
    with Store(tmp_path / "s") as s:
        s._put_reserved_meta("schema_version", str(SCHEMA_VERSION + 1).encode())
    with pytest.raises(StoreVersionError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade labelmesh"):
        Store(tmp_path / "s")


def test_older_store_without_a_migration_path_is_refused(tmp_path, monkeypatch):
    g = make_test_genesis()
    write_legacy_store(tmp_path / "old", 0, sample_records(g, n_tasks=1))
    monkeypatch.delitem(store_mod.MIGRATIONS, 0)
    with pytest.raises(StoreVersionError, match="schema version 0.*not a store this labelmesh can read"):
        Store(tmp_path / "old")


def test_run_refuses_a_newer_store_in_one_line(tmp_path):
    dd = tmp_path / "dd"
    r = subprocess.run([sys.executable, "-m", "node.cli", "init", "--data-dir", str(dd)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with Store(dd / "store") as s:
        s._put_reserved_meta("schema_version", b"99")
    r = subprocess.run([sys.executable, "-m", "node.cli", "run", "--data-dir", str(dd)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env={**os.environ, "LABELMESH_METRICS_LISTEN": ""})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "schema version 99" in lines[0] and "upgrade labelmesh" in lines[0]


def test_legacy_writer_refuses_unknown_versions(tmp_path):
    with pytest.raises(BadInputError):
        write_legacy_store(tmp_path / "x", 7, [])

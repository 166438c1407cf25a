"""Tests of node/storage/store.py: the LMDB store and its group-commit writer.

Durability is tested for real: a child process writes, says ACK, and is killed with
SIGKILL; out-of-space is tested on a real 4 MiB tmpfs (when user namespaces allow mounting
one) and with RLIMIT_FSIZE.  No timing assertions: speed belongs to scripts/bench.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from node.storage.errors import BadInputError, StoreError, StoreFullError, StoreVersionError
from node.storage.layout import Record
from node.storage.store import Store
from node.storage.writer import StoreWriter

ROOT = Path(__file__).resolve().parents[1]
TASK_A = b"A" * 32
TASK_B = b"B" * 32


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def rec(label: str, *, kind: int = 1, task: bytes = TASK_A, size: int = 0) -> Record:
    """A record whose id is the hash of its label (like a real content address)."""
    raw = label.encode() + b"\x00" * size
    return Record(h(label), kind, task, raw)


def recs(prefix: str, n: int, **kw) -> list[Record]:
    return [rec(f"{prefix}-{i}", **kw) for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


# --------------------------------------------------------------------------- basics


def test_duplicates_are_stored_once_within_and_across_calls(store):
    a, b, c = rec("a"), rec("b"), rec("c")
    assert store.put_records([a, b, a, a]) == [True, True, False, False]
    assert store.put_records([c, b, a, c]) == [True, False, False, False]
    assert store.put_records([]) == []
    assert store.count() == 3
    assert store.last_seq() == 3
    assert [s for s, _, _ in store.iter_since(0, 10)] == [1, 2, 3]
    assert store.task_message_ids(TASK_A) == [a.msg_id, b.msg_id, c.msg_id]
    assert store.count_by_kind() == {1: 3}


def test_first_occurrence_wins_for_same_id(store):
    first = Record(h("x"), 1, TASK_A, b"first")
    other = Record(h("x"), 2, TASK_B, b"second")
    assert store.put_records([first, other]) == [True, False]
    assert store.put_records([other]) == [False]
    assert store.get(h("x")) == b"first"
    assert store.task_message_ids(TASK_B) == []
    assert store.count_by_kind() == {1: 1}


def test_get_and_has(store):
    a, b = rec("a"), rec("b")
    store.put_records([a])
    assert store.has(a.msg_id) and not store.has(b.msg_id)
    assert store.get(a.msg_id) == a.raw and store.get(b.msg_id) is None
    assert store.has_many([b.msg_id, a.msg_id, b""]) == [False, True, False]
    assert store.get_many([a.msg_id, b.msg_id]) == [a.raw, None]


def test_task_and_kind_indexes_are_in_arrival_order(store):
    # interleave tasks and kinds so that key order (kind first) differs from arrival order
    plan = [("a0", 2, TASK_A), ("b0", 1, TASK_B), ("a1", 1, TASK_A), ("a2", 3, TASK_A),
            ("b1", 2, TASK_B), ("a3", 1, TASK_A), ("a4", 2, TASK_A)]
    records = [rec(label, kind=k, task=t) for label, k, t in plan]
    store.put_records(records[:3])
    store.put_records(records[3:])
    ids = {label: h(label) for label, _, _ in plan}
    assert store.task_message_ids(TASK_A) == [ids[x] for x in ("a0", "a1", "a2", "a3", "a4")]
    assert store.task_message_ids(TASK_A, 1) == [ids["a1"], ids["a3"]]
    assert store.task_message_ids(TASK_A, 2) == [ids["a0"], ids["a4"]]
    assert store.task_message_ids(TASK_A, 9) == []
    assert store.task_message_ids(TASK_B) == [ids["b0"], ids["b1"]]
    assert store.task_messages(TASK_A, 2) == [b"a0", b"a4"]
    assert store.task_messages(TASK_B) == [b"b0", b"b1"]
    assert store.kind_message_ids(1) == [ids["b0"], ids["a1"], ids["a3"]]
    assert store.kind_message_ids(2) == [ids["a0"], ids["b1"], ids["a4"]]
    assert store.kind_message_ids(0) == []
    assert store.count_by_kind() == {1: 3, 2: 3, 3: 1}


def test_delete_messages_removes_them_from_every_index_durably(tmp_path):
    """The keep rule's deletions (node/core/keep.py): one write transaction, every index and
    the kind counts updated, ids not stored skipped, the same after a reopen."""
    store = Store(tmp_path / "store")
    plan = [("a0", 2, TASK_A), ("b0", 2, TASK_B), ("a1", 2, TASK_A), ("a2", 3, TASK_A), ("a3", 2, TASK_A)]
    store.put_records([rec(label, kind=k, task=t) for label, k, t in plan])
    n = store.delete_messages([(TASK_A, 2, h("a1")), (TASK_A, 3, h("a2")), (TASK_A, 2, h("nothing")),
                               (TASK_B, 2, h("a3"))])  # a3 is not TASK_B's: skipped
    assert n == 2
    for s in (store, None):
        if s is None:
            store.close()
            s = Store(tmp_path / "store")
        assert not s.has(h("a1")) and not s.has(h("a2")) and s.has(h("a3"))
        assert s.task_message_ids(TASK_A) == [h("a0"), h("a3")]
        assert s.kind_message_ids(2) == [h("a0"), h("b0"), h("a3")] and s.kind_message_ids(3) == []
        assert s.count() == 3 and s.count_by_kind() == {2: 3}
        assert [mid for _, mid, _ in s.iter_since(0, 10)] == [h("a0"), h("b0"), h("a3")]
    assert s.delete_messages([]) == 0
    with pytest.raises(BadInputError):
        s.delete_messages([(b"short", 2, h("a0"))])
    s.put_records([rec("a1", kind=2)])  # stored again later: a fresh arrival
    assert s.task_message_ids(TASK_A, 2) == [h("a0"), h("a3"), h("a1")]
    s.close()


def test_task_scan_does_not_leak_into_neighbour_task(store):
    low, high = b"\x01" * 31 + b"\xff", b"\x01" * 31 + b"\xfe"
    store.put_records([rec("x", task=high, kind=255), rec("y", task=low, kind=0)])
    assert store.task_message_ids(high) == [h("x")]
    assert store.task_message_ids(low) == [h("y")]
    assert store.task_message_ids(b"\x01" * 32) == []


def test_iter_since_pages_through_everything(store):
    records = recs("m", 25)
    store.put_records(records[:10])
    store.put_records(records[10:])
    seen, cursor = [], 0
    while page := store.iter_since(cursor, 7):
        assert len(page) <= 7
        seen.extend(page)
        cursor = page[-1][0]
    assert [s for s, _, _ in seen] == list(range(1, 26))
    assert [(m, raw) for _, m, raw in seen] == [(r.msg_id, r.raw) for r in records]
    assert store.iter_since(24, 100) == [(25, records[24].msg_id, records[24].raw)]
    assert store.iter_since(25, 100) == []
    assert store.iter_since(-5, 1)[0][0] == 1
    assert store.iter_since(0, 0) == []


def test_reopen_keeps_everything_and_continues_numbering(tmp_path):
    path = tmp_path / "s"
    with Store(path) as s:
        s.put_records(recs("m", 5))
        s.put_derived(b"cache", b"v")
        s.put_meta("peer-cursor", b"\x07")
    with Store(path) as s:
        assert s.count() == 5 and s.last_seq() == 5
        assert s.get_derived(b"cache") == b"v" and s.get_meta("peer-cursor") == b"\x07"
        assert s.get_meta("schema_version") == b"1"
        assert s.put_records([rec("m-4"), rec("new")]) == [False, True]
        assert s.iter_since(5, 10)[0][:2] == (6, h("new"))
        assert s.count_by_kind() == {1: 6}


def test_derived_and_meta(store):
    assert store.get_derived(b"k") is None
    store.put_derived(b"k", b"1")
    store.put_derived(b"k", b"2")
    assert store.get_derived(b"k") == b"2"
    assert store.delete_derived(b"k") is True
    assert store.delete_derived(b"k") is False
    assert store.get_derived(b"k") is None
    store.put_meta("x", b"y")
    assert store.get_meta("x") == b"y" and store.get_meta("nope") is None
    for reserved in ("schema_version", "next_seq", "kind_counts"):
        with pytest.raises(BadInputError, match="maintained by the store"):
            store.put_meta(reserved, b"0")


@pytest.mark.parametrize(
    "bad",
    [
        Record(b"short", 1, TASK_A, b"r"),
        Record(h("x"), 256, TASK_A, b"r"),
        Record(h("x"), -1, TASK_A, b"r"),
        Record(h("x"), 1, b"t" * 31, b"r"),
        Record(h("x"), 1, TASK_A, "not bytes"),
        (h("x"), 1, TASK_A, b"r"),
    ],
)
def test_bad_records_are_refused_and_nothing_is_written(store, bad):
    with pytest.raises(BadInputError):
        store.put_records([rec("good"), bad])
    assert store.count() == 0 and store.last_seq() == 0


def test_bad_arguments_are_refused(store):
    with pytest.raises(BadInputError):
        store.task_message_ids(b"short")
    with pytest.raises(BadInputError):
        store.kind_message_ids(300)
    with pytest.raises(BadInputError):
        store.iter_since(0, -1)
    with pytest.raises(BadInputError):
        store.put_derived(b"", b"v")
    with pytest.raises(BadInputError):
        store.put_derived(b"k" * 512, b"v")
    assert store.get(b"k" * 600) is None and store.has(b"k" * 600) is False


def test_directory_mode_single_open_and_closed_store(tmp_path):
    path = tmp_path / "s"
    s = Store(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    with pytest.raises(StoreError, match="already open"):
        Store(path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.get(h("x"))
    with pytest.raises(StoreError, match="closed"):
        s.put_records([rec("x")])
    with Store(path) as again:
        assert again.count() == 0


def test_stats(store):
    store.put_records(recs("m", 10, size=100))
    st_ = store.stats()
    assert st_["entries"]["msgs"] == st_["entries"]["arrival"] == st_["entries"]["by_task"] == 10
    assert st_["last_seq"] == 10 and st_["path"] == store.path
    assert 0 < st_["used_bytes"] <= st_["map_size"] <= st_["max_map_size"]


# --------------------------------------------------------------------------- versions


def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "s"
    with Store(path) as s:
        s.put_records([rec("a")])
        s._put_reserved_meta("schema_version", b"2")
    with pytest.raises(StoreVersionError, match="schema version 2.*newer labelmesh"):
        Store(path)
    # the refused store was not modified and the lock was released: still refused, same way
    with pytest.raises(StoreVersionError, match="upgrade labelmesh"):
        Store(path)


def test_unreadable_schema_version_is_refused(tmp_path):
    path = tmp_path / "s"
    with Store(path) as s:
        s._put_reserved_meta("schema_version", b"\xffgarbage")
    with pytest.raises(StoreVersionError, match="unreadable schema version"):
        Store(path)


def test_not_an_lmdb_store(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"this is not lmdb" * 512)
    with pytest.raises(StoreError, match="not a readable LMDB store"):
        Store(path)


# --------------------------------------------------------------------------- kill -9


def _spawn(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, bufsize=0,
    )


def _read_until(proc: subprocess.Popen, predicate, timeout: float = 15.0) -> list[str]:
    """Read the child's stdout lines until predicate(lines) holds; bounded by timeout."""
    lines, buf = [], b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not predicate(lines):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                proc.kill()
                pytest.fail(f"child gave no ACK in {timeout}s; stderr: {proc.stderr.read().decode()[-2000:]}")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                pytest.fail(f"child exited early ({proc.wait()}); stderr: {proc.stderr.read().decode()[-2000:]}")
            buf += chunk
            *done, buf = buf.split(b"\n")
            lines.extend(x.decode() for x in done)
    return lines


def _kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()


CHILD_COMMON = """
    import hashlib, sys, threading
    from node.storage.layout import Record
    from node.storage.store import Store
    def rec(i):
        return Record(hashlib.sha256(b"m-%d" % i).digest(), i % 3, bytes([i % 4]) * 32, b"raw-%d" % i + bytes(150))
    store = Store(sys.argv[1], initial_map_size=256 * 1024)
"""


def test_acknowledged_write_survives_kill9(tmp_path):
    n = 500
    proc = _spawn(CHILD_COMMON + """
    n = int(sys.argv[2])
    assert all(store.put_records([rec(i) for i in range(n)]))
    print("ACK", flush=True)
    threading.Event().wait()  # block until killed
    """, str(tmp_path / "s"), str(n))
    _read_until(proc, lambda lines: "ACK" in lines)
    _kill9(proc)
    with Store(tmp_path / "s") as s:
        assert s.count() == n and s.last_seq() == n
        ids = [hashlib.sha256(b"m-%d" % i).digest() for i in range(n)]
        assert all(s.has_many(ids))
        assert s.get(ids[7]).startswith(b"raw-7")
        assert s.count_by_kind() == {0: 167, 1: 167, 2: 166}
        assert s.put_records([Record(h("after"), 0, TASK_A, b"x")]) == [True]


def test_kill9_during_a_stream_of_writes_loses_only_unacknowledged_batches(tmp_path):
    batch = 40
    proc = _spawn(CHILD_COMMON + """
    batch = int(sys.argv[2])
    i = 0
    while True:  # write until killed; each ACK follows a durable batch
        store.put_records([rec(j) for j in range(i * batch, (i + 1) * batch)])
        print("ACK %d" % i, flush=True)
        i += 1
    """, str(tmp_path / "s"), str(batch))
    lines = _read_until(proc, lambda lines: len(lines) >= 8)
    _kill9(proc)  # most likely in the middle of a transaction
    acked = max(int(line.split()[1]) for line in lines if line.startswith("ACK")) + 1
    with Store(tmp_path / "s") as s:
        n = s.count()
        assert n >= acked * batch and n % batch == 0  # whole batches only
        assert all(s.has_many([hashlib.sha256(b"m-%d" % j).digest() for j in range(acked * batch)]))
        # indexes agree with the message table
        assert s.last_seq() == n
        assert len(s.iter_since(0, n + 10)) == n
        assert sum(s.count_by_kind().values()) == n
        assert sum(len(s.task_message_ids(bytes([t]) * 32)) for t in range(4)) == n


# --------------------------------------------------------------------------- map size / space


def test_map_grows_on_demand(tmp_path):
    with Store(tmp_path / "s", initial_map_size=64 * 1024) as s:
        start = s.stats()["map_size"]
        records = recs("m", 3000, size=200)  # ~1 MB of raw, far more than 64 KiB
        assert all(s.put_records(records))
        assert s.stats()["map_size"] > start
        assert s.count() == 3000
        assert s.get(records[-1].msg_id) == records[-1].raw


def test_hard_map_limit_raises_store_full_then_resumes(tmp_path):
    with Store(tmp_path / "s", initial_map_size=64 * 1024, max_map_size=256 * 1024) as s:
        written = 0
        with pytest.raises(StoreFullError, match="max_map_size"):
            for i in range(100):
                s.put_records(recs(f"b{i}", 50, size=300))
                written += 50
        failing = recs(f"b{written // 50}", 50, size=300)
        # nothing of the failed batch was written; the store is readable and consistent
        assert s.count() == written and s.last_seq() == written
        assert not any(s.has_many([r.msg_id for r in failing]))
        assert len(s.iter_since(0, 10_000)) == written
        with pytest.raises(StoreFullError):
            s.put_records(failing)  # still full
        s.set_max_map_size(8 << 20)
        assert all(s.put_records(failing))  # resumes without reopening
        assert s.count() == written + 50
        assert s.stats()["map_size"] > 256 * 1024


def test_reads_in_another_thread_while_the_map_grows(tmp_path):
    with Store(tmp_path / "s", initial_map_size=64 * 1024) as s:
        first = rec("first")
        s.put_records([first])
        stop, errors, reads = threading.Event(), [], [0]

        def reader():
            try:
                while not stop.is_set():
                    assert s.get(first.msg_id) == first.raw
                    page = s.iter_since(0, 20)
                    assert page[0][1] == first.msg_id
                    s.task_message_ids(TASK_A, 1)
                    reads[0] += 1
            except BaseException as exc:  # report in the main thread
                errors.append(exc)

        t = threading.Thread(target=reader)
        t.start()
        try:
            start = s.stats()["map_size"]
            for i in range(12):
                s.put_records(recs(f"g{i}", 200, size=200))
        finally:
            stop.set()
            t.join(timeout=30)
        assert not errors, errors
        assert reads[0] > 0
        assert s.stats()["map_size"] >= 8 * start  # grew several times under the reader
        assert s.count() == 1 + 12 * 200


OUT_OF_SPACE_CHILD = """
    import hashlib, json, os, resource, signal, sys
    from node.storage.errors import StoreFullError
    from node.storage.layout import Record
    from node.storage.store import Store
    mode, d = sys.argv[1], sys.argv[2]
    def batch(i):
        return [Record(hashlib.sha256(b"%d-%d" % (i, j)).digest(), 1, b"T" * 32, bytes(1000)) for j in range(100)]
    filler = os.path.join(d, "filler")
    if mode == "tmpfs":
        with open(filler, "wb") as f:
            f.write(bytes(1 << 20))
    store = Store(os.path.join(d, "s"), initial_map_size=64 * 1024)
    if mode == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    out = {"ok": 0}
    i = 0
    while i < 1000:
        try:
            store.put_records(batch(i))
        except StoreFullError as exc:
            out["error"] = str(exc)
            break
        i += 1
    out["count"] = store.count()
    out["failed_batch_present"] = any(store.has_many([r.msg_id for r in batch(i)]))
    out["consistent"] = len(store.iter_since(0, 10 ** 6)) == store.count() == store.last_seq()
    if mode == "tmpfs":
        os.unlink(filler)
    else:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    out["retry"] = sum(store.put_records(batch(i)))
    out["count_after"] = store.count()
    store.close()
    with Store(os.path.join(d, "s")) as again:
        out["reopened"] = again.count()
    print(json.dumps(out))
"""


def _check_out_of_space_run(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-3000:]
    import json

    result = json.loads(out.decode().strip().splitlines()[-1])
    assert "full" in result["error"] and "free disk space" in result["error"]
    n = result["count"]
    assert n > 0 and n % 100 == 0
    assert result["failed_batch_present"] is False
    assert result["consistent"] is True
    assert result["retry"] == 100
    assert result["count_after"] == result["reopened"] == n + 100


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d"],
        capture_output=True, timeout=10,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_mount_tmpfs(),
                    reason="needs `unshare -rm` to mount a small tmpfs")
def test_filesystem_full_raises_store_full_then_resumes(tmp_path):
    # a private 4 MiB tmpfs in a user+mount namespace: a real ENOSPC
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(OUT_OF_SPACE_CHILD))
    shell = f'd=$(mktemp -d) && mount -t tmpfs -o size=4m tmpfs "$d" && exec "{sys.executable}" "{script}" tmpfs "$d"'
    proc = subprocess.Popen(
        ["unshare", "-rm", "sh", "-c", shell],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    _check_out_of_space_run(proc)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics are Linux-tested")
def test_file_size_limit_raises_store_full_then_resumes(tmp_path):
    proc = _spawn(OUT_OF_SPACE_CHILD, "fsize", str(tmp_path))
    _check_out_of_space_run(proc)


# --------------------------------------------------------------------------- backup


def test_copy_to_makes_a_store_with_the_same_contents(tmp_path, store):
    store.put_records(recs("a", 30, kind=2) + recs("b", 20, task=TASK_B, kind=5))
    store.put_derived(b"cert", b"c")
    store.put_meta("note", b"n")
    store.copy_to(tmp_path / "backup")
    store.put_records([rec("after-backup")])  # not in the snapshot
    with pytest.raises(StoreError, match="already contains a store"):
        store.copy_to(tmp_path / "backup")
    with Store(tmp_path / "backup") as copy:
        assert copy.count() == 50 and copy.last_seq() == 50
        assert copy.iter_since(0, 100) == store.iter_since(0, 50)
        assert copy.task_message_ids(TASK_B, 5) == store.task_message_ids(TASK_B, 5)
        assert copy.count_by_kind() == {2: 30, 5: 20}
        assert copy.get_derived(b"cert") == b"c" and copy.get_meta("note") == b"n"
        assert copy.put_records([rec("after-backup")]) == [True]
        assert copy.last_seq() == 51


# --------------------------------------------------------------------------- StoreWriter


async def test_writer_group_commits_many_concurrent_puts(store):
    writer = StoreWriter(store)
    n_tasks = 120
    # task i writes ids i..i+4 of a shared pool: heavy overlap between concurrent callers
    pool = recs("p", n_tasks + 4)
    results: dict[int, list[bool]] = {}

    async def one(i):
        results[i] = await writer.put(pool[i : i + 5])

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as puts:
            for i in range(n_tasks):
                puts.start_soon(one, i)
        nursery.cancel_scope.cancel()

    assert store.count() == len(pool)
    # every id was reported new exactly once, to whichever caller got it in first
    new_per_id: dict[bytes, int] = {}
    for i, flags in results.items():
        assert len(flags) == 5
        for r, flag in zip(pool[i : i + 5], flags):
            new_per_id[r.msg_id] = new_per_id.get(r.msg_id, 0) + flag
    assert set(new_per_id.values()) == {1}
    assert writer.puts == n_tasks
    assert 1 <= writer.commits < n_tasks
    assert writer.records_written == 5 * n_tasks


async def test_writer_lone_put_and_duplicates(store):
    writer = StoreWriter(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        assert await writer.put([rec("a"), rec("a")]) == [True, False]
        assert await writer.put([rec("a"), rec("b")]) == [False, True]
        assert await writer.put([]) == []
        await writer.write(store.put_derived, b"k", b"v")
        nursery.cancel_scope.cancel()
    assert store.get_derived(b"k") == b"v"
    assert writer.commits == 2


async def test_writer_applies_backpressure(store):
    writer = StoreWriter(store, max_pending_records=10, max_group_records=10)
    finished: list[int] = []

    async def one(i):
        await writer.put(recs(f"q{i}", 5))
        finished.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(one, i)
        await trio.testing.wait_all_tasks_blocked()
        # the worker is not running yet: two puts fill the queue, the other three wait
        assert writer.queued_records == 10 and finished == []
        await nursery.start(writer.run)
        with trio.fail_after(30):
            while len(finished) < 5:
                await trio.sleep(0.005)
                assert writer.queued_records <= 10
        nursery.cancel_scope.cancel()
    assert store.count() == 25
    assert writer.commits >= 3  # groups are capped at 10 records


async def test_writer_gives_each_waiter_the_error_and_keeps_running(tmp_path):
    with Store(tmp_path / "s", initial_map_size=64 * 1024, max_map_size=128 * 1024) as store:
        writer = StoreWriter(store)
        errors: list[BaseException] = []

        async def one(i):
            try:
                await writer.put(recs(f"big{i}", 100, size=1000))
            except StoreFullError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(3):  # queued before the worker starts: one group
                nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
            await nursery.start(writer.run)
            with trio.fail_after(30):
                while len(errors) < 3:
                    await trio.sleep(0.005)
            assert len({id(e) for e in errors}) == 3  # one exception object per caller
            assert store.count() == 0 and writer.failed_commits == 1
            store.set_max_map_size(16 << 20)
            assert all(await writer.put(recs("big0", 100, size=1000)))
            nursery.cancel_scope.cancel()
        assert store.count() == 100


async def test_writer_stop_fails_queued_puts_and_refuses_new_ones(store):
    writer = StoreWriter(store)
    errors: list[BaseException] = []

    async def one(i):
        try:
            await writer.put([rec(f"s{i}")])
        except StoreError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(one, i)
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            await writer.run()  # stops at once, before writing anything
    assert len(errors) == 3 and all("not stored" in str(e) for e in errors)
    assert store.count() == 0
    with pytest.raises(StoreError, match="stopped"):
        await writer.put([rec("late")])
    with pytest.raises(BadInputError):
        await writer.put([Record(b"bad", 1, TASK_A, b"")])


# --------------------------------------------------------------------------- property test

POOL = [rec(f"pool-{i}", kind=i % 3, task=(TASK_A, TASK_B)[i % 2]) for i in range(12)]


class StoreModel(RuleBasedStateMachine):
    """Random batches (with duplicates) and reopens against a plain-Python model."""

    def __init__(self):
        super().__init__()
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="store-model-")
        self.path = os.path.join(self.dir, "s")
        self.store = Store(self.path, initial_map_size=64 * 1024)
        self.order: list[Record] = []  # model: arrival order of distinct records

    @rule(picks=st.lists(st.integers(0, len(POOL) - 1), max_size=8))
    def put(self, picks):
        batch = [POOL[i] for i in picks]
        known = {r.msg_id for r in self.order}
        expected = []
        for r in batch:
            expected.append(r.msg_id not in known)
            if r.msg_id not in known:
                known.add(r.msg_id)
                self.order.append(r)
        assert self.store.put_records(batch) == expected

    @rule()
    def reopen(self):
        self.store.close()
        self.store = Store(self.path)

    @invariant()
    def agrees_with_model(self):
        s, order = self.store, self.order
        stored = {r.msg_id for r in order}
        assert s.count() == len(order) == s.last_seq()
        assert s.has_many([r.msg_id for r in POOL]) == [r.msg_id in stored for r in POOL]
        assert s.get_many([r.msg_id for r in POOL]) == [r.raw if r.msg_id in stored else None for r in POOL]
        assert [(seq, m) for seq, m, _ in s.iter_since(0, 100)] == [(i + 1, r.msg_id) for i, r in enumerate(order)]
        for task in (TASK_A, TASK_B):
            assert s.task_message_ids(task) == [r.msg_id for r in order if r.task_id == task]
            assert s.task_message_ids(task, 1) == [r.msg_id for r in order if r.task_id == task and r.kind == 1]
        assert s.kind_message_ids(2) == [r.msg_id for r in order if r.kind == 2]

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(
    max_examples=20, stateful_step_count=8, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

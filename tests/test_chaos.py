"""Chaos on a real 5-node devnet: kill -9 + restart, SIGSTOP/SIGCONT, a network partition
(network namespaces) under load, then the Jepsen-style set check (slow tier, marked `devnet`).

Also the pure parts of devtools/chaos.py: the seeded schedule and the submission classifier.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from devtools import chaos, netns
from . import helpers



def test_schedule_is_seeded_bounded_and_has_every_kind():
    a = chaos.make_schedule(7, 35, 5, partitions=True)
    assert a == chaos.make_schedule(7, 35, 5, partitions=True)
    assert a != chaos.make_schedule(8, 35, 5, partitions=True)
    for seed in range(50):
        s = chaos.make_schedule(seed, 35, 5, partitions=True)
        assert {f.kind for f in s} == {"kill", "pause", "partition"}, seed
        assert all(f.at >= chaos.WARMUP_S and f.at + f.duration <= 35 for f in s)
        assert all(x.at + x.duration < y.at for x, y in zip(s, s[1:]))  # one fault at a time
        for f in s:
            if f.kind == "partition":
                assert 1 <= len(f.targets) <= 2 and len(set(f.targets)) == len(f.targets)
    assert {f.kind for f in chaos.make_schedule(7, 35, 5, partitions=False)} == {"kill", "pause"}


def test_submissions_are_classified_like_jepsen(tmp_path):
    sock_path = tmp_path / "s.sock"
    assert chaos.submit(sock_path, "00", 1)[0] == "not_sent"  # nothing listening: nothing sent
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock_path))
    srv.listen(8)
    replies = [b'{"jsonrpc":"2.0","id":1,"result":{"status":"accepted"}}\n',
               b'{"jsonrpc":"2.0","id":1,"result":{"status":"duplicate"}}\n',
               b'{"jsonrpc":"2.0","id":1,"result":{"status":"accepted_overlapping"}}\n',
               b'{"jsonrpc":"2.0","id":1,"result":{"status":"redundant"}}\n',
               b'{"jsonrpc":"2.0","id":1,"error":{"code":-32002,"message":"bad signature"}}\n',
               None,      # read the request, close without answering
               "hang"]    # read the request, never answer

    def serve():
        for r in replies:
            c, _ = srv.accept()
            c.recv(1 << 16)
            if r == "hang":
                threading.Event().wait(3)
            elif r is not None:
                c.sendall(r)
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    got = [chaos.submit(sock_path, "00", 1)[0] for _ in replies]
    assert got == ["acked", "acked", "acked", "redundant", "refused", "in_doubt", "in_doubt"]
    t.join(5)
    srv.close()


def test_signed_load_has_unique_ids_and_some_invalid():
    subs = chaos.sign_batches(3, b"\x01" * 32, b"\x02" * 32, 400)
    assert len({s.batch_id for s in subs}) == 400
    bad = [s for s in subs if not s.valid]
    assert 5 <= len(bad) <= 40


def test_over_bound_annotators_sign_what_the_check_expects():
    subs = chaos.sign_over_bound(3, b"\x01" * 32, b"\x02" * 32, 1300, chaos.ITEMS)
    heavy = [x for x in subs if x.role == "heavy"]
    assert len(heavy) == 1300 and len(subs) == 1300 + 325 and len({x.batch_id for x in subs}) == len(subs)
    from protocol.messages import decode_message
    from protocol.params import DEFAULT_PARAMS

    bodies = [decode_message(bytes.fromhex(x.raw), DEFAULT_PARAMS).body for x in heavy]
    items = [b.labels[0][0] for b in bodies]
    assert len(set(items)) == 1300 and min(items) == chaos.ITEMS  # one label per item, past the regular items
    assert len({b.annotator for b in bodies}) == 1


def cli(*args, timeout=600, **kw):
    return helpers.cli(*args, timeout=timeout, **kw)


@pytest.mark.devnet
@pytest.mark.timeout(900)
def test_chaos_five_nodes_nothing_lost_nothing_invented():
    use_netns, why = netns.available()
    root = Path(tempfile.mkdtemp(prefix="lmchaos", dir="/tmp"))
    try:
        cli("devnet", "up", "-n", "5", "--root", str(root), *(["--netns"] if use_netns else []))
        r = cli("devnet", "chaos", "--root", str(root), "--duration", "35", "--seed", "7", "--json",
                check=False, timeout=600)
        rep = json.loads(r.stdout.strip().splitlines()[-1])
        detail = f"\n{r.stderr[-3000:]}"
        assert r.returncode == 0, rep["violations"] + [detail]
        kinds = [f["kind"] for f in rep["faults"]]
        assert kinds.count("kill") >= 1 and kinds.count("pause") >= 1, kinds
        if use_netns:
            assert kinds.count("partition") >= 1, kinds
        else:
            print(f"partitions not exercised: {why}")
        assert rep["lost"] == 0 and rep["phantom"] == 0 and rep["invalid_stored"] == 0, detail
        assert rep["acked"] > 100 and rep["invalid_acked"] == 0
        # the over-bound annotators: the honest one past the old cap of 1,024 batches loses nothing
        # (lost counts it), the repeating one keeps every label; nobody holds redundant batches
        assert rep["over_bound"] == 1625 and rep["over_bound_acked"] > 1024, rep
        assert rep["labels_lost"] == 0 and rep["held_redundant"] == 0, rep
        assert rep["converged"] and rep["certified"], detail
        # the ledger under the same faults: transfers and double-spend attempts went in, every
        # node ends with the same balances and histories, the invariant held at every sample
        assert rep["transfers_acked"] > 0 and rep["double_spend_attempts"] > 0, detail
        assert rep["ledger_converged"] and rep["ledger_samples"] > 0 and rep["transfers_applied"] > 0, detail
        # every node answers the same roots, now, over its own socket
        roots = set()
        for i in range(5):
            out = cli("rpc", "consensus_get", json.dumps({"task_id": rep["task_id"], "items": False}),
                      "--data-dir", str(root / f"node-{i}"))
            res = json.loads(out.stdout)
            roots.add((res["set_root"], res["result_root"], res["status"]))
        assert len(roots) == 1 and roots.pop()[2] == "certified"
        print(f"chaos: {rep['acked']} acked, {rep['in_doubt']} in doubt, converged {rep['converged_after_s']} s "
              f"and certified {rep['certified_after_s']} s after the last fault")
    finally:
        cli("devnet", "down", "--root", str(root), check=False, timeout=120)
        layout_left = (root / "netns.json").exists()  # `down` deletes the namespaces and this file
        shutil.rmtree(root, ignore_errors=True)
    assert not layout_left


def test_devnet_down_removes_its_namespaces(tmp_path):
    ok, why = netns.available()
    if not ok:
        pytest.skip(why)
    layout = netns.setup(tmp_path, 2)
    names = set(layout["namespaces"])
    listed = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert names <= listed
    netns.partition(tmp_path, [1])
    netns.heal(tmp_path)
    assert netns.teardown(tmp_path) == 3
    listed = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert not names & listed
    assert netns.load(tmp_path) is None
    assert os.listdir(tmp_path) == []

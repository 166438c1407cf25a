"""Real multi-process devnet over libp2p on 127.0.0.1 (slow tier, marked `devnet`)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from . import helpers
from .helpers import cli

pytestmark = pytest.mark.devnet





class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None


def test_devnet_demo_three_nodes_same_result(devnet_root):
    from node.core.results import RESULT_THREAD_MIN_MESSAGES

    r = cli("devnet", "up", "-n", "3", "--demo", "--items", "2500", "--deadline", "10", "--root", str(devnet_root),
            "--json")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["nodes"] == 3
    assert summary["identical_on_all_nodes"] is True
    assert summary["labels_submitted"] == 2500 * 5
    # big enough that every daemon reads and aggregates the set in its worker thread
    # (Node.prepare_result) for the finality proposal and consensus_get
    assert summary["batches"] >= RESULT_THREAD_MIN_MESSAGES
    assert summary["status"] == "certified" and summary["batches_certified"] == summary["batches"]
    # ... and it ends with node 0's web UI, on the labeling page, logged in by its URL alone
    url = summary["ui_url"]
    assert url.startswith("http://127.0.0.1:") and "?token=" in url and url.endswith("#/label")
    with pytest.raises(urllib.error.HTTPError) as login:  # 303 to the page, with the token as a cookie
        urllib.request.build_opener(_NoRedirect).open(url.split("#")[0], timeout=30)
    assert login.value.code == 303 and "HttpOnly" in login.value.headers["set-cookie"]
    # all three nodes answer the same roots over their own sockets
    roots = set()
    for i in range(3):
        out = cli("rpc", "consensus_get", json.dumps({"task_id": summary["task_id"], "items": False}),
                  "--data-dir", str(devnet_root / f"node-{i}"))
        res = json.loads(out.stdout)
        roots.add((res["set_root"], res["result_root"]))
        info = json.loads(cli("rpc", "node_info", "--data-dir", str(devnet_root / f"node-{i}")).stdout)
        assert info["peer_count"] >= 1
    assert len(roots) == 1
    pids = [e["pid"] for e in json.loads((devnet_root / "pids.json").read_text()).values()]
    cli("devnet", "down", "--root", str(devnet_root))
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]


def test_devnet_stop_and_restart_one_node(devnet_root):
    """`devnet stop --node I [--kill]` and `restart --node I`: the node comes back from its own
    data dir (in its own namespace when the devnet has them), rejoins and catches up."""
    from devtools import netns

    use_netns, _ = netns.available()
    cli("devnet", "up", "-n", "3", "--root", str(devnet_root), *(["--netns"] if use_netns else []))
    dd = [str(devnet_root / f"node-{i}") for i in range(3)]

    def rpc(i, method, params):
        return json.loads(cli("rpc", method, json.dumps(params), "--data-dir", dd[i]).stdout)

    task = rpc(0, "task_post", {"account": "requester", "title": "t", "labels": ["a", "b"],
                                "items": ["x", "y", "z"], "duration_s": 600})
    first = rpc(0, "annotations_submit", {"account": "validator", "task_id": task["task_id"], "labels": [[0, 1]]})
    r = cli("devnet", "stop", "--node", "1", "--kill", "--root", str(devnet_root), "--json")
    assert json.loads(r.stdout) == {"node": 1, "stopped": True}
    rows = {x["node"]: x for x in json.loads(cli("devnet", "status", "--root", str(devnet_root), "--json").stdout)}
    assert not rows[1]["alive"] and rows[0]["alive"] and rows[2]["alive"]
    again = cli("devnet", "stop", "--node", "1", "--root", str(devnet_root))
    assert "was not running" in again.stdout
    # labels submitted while node 1 is down reach it once it is back
    second = rpc(2, "annotations_submit", {"account": "validator", "task_id": task["task_id"], "labels": [[1, 0]]})
    r = json.loads(cli("devnet", "restart", "--node", "1", "--root", str(devnet_root), "--json").stdout)
    assert r["node"] == 1 and r["peers"] >= 1
    ids = [task["task_id"], first["batch_id"], second["batch_id"]]
    helpers.poll(lambda: rpc(1, "messages_held", {"ids": ids})["count"] == 3, 60, "node 1 to catch up",
                 retry_on=(AssertionError,))
    if use_netns:  # it runs in its own namespace again: its listen address is the namespace's
        assert any("/ip4/10.213.0.2/" in a for a in rpc(1, "node_info", {})["listen_addrs"])
    # restart of a running node: stop, then start
    pid = r["pid"]
    r = json.loads(cli("devnet", "restart", "--node", "1", "--root", str(devnet_root), "--json").stdout)
    from devtools.processes import is_alive
    assert r["pid"] != pid and not is_alive(pid, str(Path(dd[1]).resolve())) and is_alive(r["pid"], str(Path(dd[1]).resolve()))
    # bad input: which node is missing or unknown
    for argv, why in [(("stop",), "--node"), (("restart", "--node", "7"), "no node 7"), (("stop", "--node", "-1"), "no node -1")]:
        bad = cli("devnet", *argv, "--root", str(devnet_root), check=False)
        assert bad.returncode == 1 and why in bad.stderr, (argv, bad.stderr)

"""Real multi-process devnet over libp2p on 127.0.0.1 (slow tier, marked `devnet`)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
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

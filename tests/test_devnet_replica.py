"""Partial replication and pruning on a real devnet (processes, libp2p on 127.0.0.1; slow
tier, marked `devnet`): three validators, a node that follows one domain of two and a
node that prunes batches a few seconds after certification. Both report the validators'
certified roots and rewards, the same balances and supply; the one-domain node stores
no batch of the other domain, the pruning node none at all once retention has passed."""
from __future__ import annotations

import json
import time

import pytest

from devtools.devnet import add_node
from devtools.processes import rpc
from protocol.messages import AnnotationBatch, sign_message

from .helpers import cli, key, poll

pytestmark = pytest.mark.devnet

RETAIN_DAYS = 20 / 86_400  # 20 s after the deadline (+ grace)
N_ITEMS = 30


def test_a_one_domain_node_and_a_pruning_node_agree_with_the_validators(devnet_root):
    cli("devnet", "up", "-n", "3", "--root", str(devnet_root), "--json")
    one = add_node(devnet_root, follow_domains=["animals"])
    pruning = add_node(devnet_root, retain_batches_days=RETAIN_DAYS)
    nodes = [0, 1, 2, one, pruning]
    net = bytes.fromhex(json.loads((devnet_root / "devnet.json").read_text())["network_id"])
    info = rpc(devnet_root, one, "node_info")["replication"]
    assert info["follow_domains"] == ["animals"] and not info["archive"]
    # a one-domain node refuses to post a task of a domain it would not keep
    refused = cli("rpc", "task_post", json.dumps({"account": "x", "labels": ["a", "b"], "domain": "plants"}),
                  "--data-dir", str(devnet_root / f"node-{one}"), check=False)
    assert refused.returncode != 0

    tasks = {}
    for domain in ("animals", "plants"):
        r = rpc(devnet_root, 0, "task_post", {"account": "requester", "title": domain, "labels": ["x", "y", "z"],
                                             "domain": domain, "items": [f"{domain} {i}" for i in range(N_ITEMS)],
                                             "duration_s": 12, "bounty": 90_000})
        tasks[domain] = r["task_id"]
    deadline = r["deadline_ms"] / 1000
    poll(lambda: all(len(rpc(devnet_root, i, "tasks_list")["tasks"]) == 2 for i in nodes), 60, "tasks everywhere")
    for k, ann in enumerate(range(40, 45)):
        for domain, tid in tasks.items():
            pairs = tuple((i, (i + (ann == 44)) % 3) for i in range(N_ITEMS))  # annotator 44 disagrees
            b = AnnotationBatch(annotator=bytes(key(ann).verify_key), task_id=bytes.fromhex(tid),
                                created_at=int(time.time() * 1000), labels=pairs)
            res = rpc(devnet_root, k % 3, "annotations_submit", {"raw": [sign_message(b, key(ann), net).raw.hex()]})
            assert res["results"][0]["status"] == "accepted", res
    time.sleep(max(0.0, deadline - time.time()))

    def certified(i, tid):
        r = rpc(devnet_root, i, "consensus_get", {"task_id": tid, "items": False})
        return r if r["status"] == "certified" else None

    want = {d: poll(lambda: certified(0, t), 90, f"{d} certified on node 0") for d, t in tasks.items()}
    for i in nodes:
        for d, tid in tasks.items():
            got = poll(lambda: certified(i, tid), 90, f"{d} certified on node {i}", retry_on=(Exception,))
            assert (got["set_root"], got["result_root"], got["refund"], got["annotators"]) == \
                   (want[d]["set_root"], want[d]["result_root"], want[d]["refund"], want[d]["annotators"])

    def balances(i):
        views = [rpc(devnet_root, i, "balance_get", {"account": bytes(key(a).verify_key).hex()}) for a in range(40, 45)]
        return json.dumps([views[0]["supply"], [v["accounts"][0]["balance"] for v in views]], sort_keys=True)

    poll(lambda: len({balances(i) for i in nodes}) == 1, 60, "the same balances and supply on every node")
    assert json.loads(balances(one))[0]["invariant_ok"]
    kinds = rpc(devnet_root, one, "node_info")["messages"]["by_kind"]
    assert kinds.get("batch") == 5 and rpc(devnet_root, one, "node_info")["replication"]["tasks_by_mode"]["summary"] == 1

    def pruned():
        i = rpc(devnet_root, pruning, "node_info")
        return i["replication"]["tasks_by_mode"]["pruned"] == 2 and i["replication"]["proofs_kept"] == 2 \
            and not i["messages"]["by_kind"].get("batch") and not i["messages"]["by_kind"].get("attestation")

    poll(pruned, 90, "the pruning node to drop its batches and votes")
    for d, tid in tasks.items():
        got = certified(pruning, tid)
        assert got["result_root"] == want[d]["result_root"] and got["annotators"] == want[d]["annotators"]
    assert len({balances(i) for i in nodes}) == 1

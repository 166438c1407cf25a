"""Partial replication and pruning benchmark: what a node following 1 of 10 equally busy
domains stores against a full node, and the bytes a node adds to its store per day with
and without pruning, at a stated load (issue #21 items 3-4; docs/scaling.md).

How it is measured
------------------
Real nodes (``node.app.Node``: the ingest pipeline, LMDB stores, finality, ledger, sync)
in one process, on a fake protocol clock and an in-memory full mesh (``MemNet`` below:
gossip goes to every subscriber of a topic, requests to the peer's handler): ``V``
validators, a full observer, a node with ``follow_domains = ["d0"]`` and a node with
``retain_batches_days`` set. The load is the simulation's (devtools/sim, BENCHMARKS.md
"Network simulation"): tasks of 1,000 items of 32 bytes, 180 batches of 100 labels per
task (18,000 labels: the sim's 3 batches/s and a task a minute), here one task in each
of 10 domains, every bounty escrowed and released. Once every node has released every
task (and the pruning node has pruned after its retention), each node's *stored bytes*
are counted: the raw messages it holds plus what it keeps of the others (settlements,
task stubs; node/core/replica.py) -- the logical size; LMDB's pages add a roughly
constant factor on top (``lmdb_bytes_per_label`` in the ingest section). Per day: the
bytes per task times 1,440 tasks (a task a minute, 300 labels/s network-wide, 25.9 M labels
a day). Attestations grow with the number of validators (a prevote lists every batch id
of the set, docs/scaling.md): with the sim's 100 validators instead of 4, a full node
stores more and a one-domain node's fraction is smaller -- the model gives both.
"""
from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path

from .common import DETAILS, figure, log

DOMAINS = [f"d{k}" for k in range(10)]
TASKS_PER_DAY = 1440
T0 = 1_800_000_000_000


class MemNet:
    """An in-memory full mesh: every node is every other's peer; a publish reaches each
    subscriber's gossip validator once (no relaying is needed in a full mesh)."""

    def __init__(self):
        self.peers: dict[str, MemP2P] = {}
        self.nursery = None
        self.bytes_delivered: dict[str, int] = {}

    def make(self, name: str) -> "MemP2P":
        p = self.peers[name] = MemP2P(self, name)
        self.bytes_delivered[name] = 0
        return p


class MemP2P:
    max_payload_bytes = 512 * 1024

    def __init__(self, net: MemNet, name: str):
        self.net, self.peer_id = net, name
        self.topics: set[str] = set()
        self.handlers: dict = {}
        self.validator = None
        self.running = False

    def subscribe(self, topic: str) -> None:
        self.topics.add(topic)

    async def run(self, *, task_status=None):
        import trio

        self.running = True
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.running = False

    def listen_addrs(self):
        return [f"/memory/{self.peer_id}"]

    def peers(self):
        return [{"peer_id": n, "addrs": []} for n, p in self.net.peers.items() if n != self.peer_id and p.running]

    def mesh_peers(self, topic: str):
        return [p["peer_id"] for p in self.peers()]

    async def wait_publish_slot(self):
        return None

    async def publish(self, topic: str, data: bytes) -> None:
        for n, p in self.net.peers.items():
            if n != self.peer_id and p.running and topic in p.topics:
                self.net.bytes_delivered[n] += len(data)
                self.net.nursery.start_soon(p.validator, topic, data, self.peer_id)

    def set_request_handler(self, protocol_id: str, handler) -> None:
        self.handlers[protocol_id] = handler

    async def request(self, peer_id: str, protocol_id: str, data: bytes, *, timeout=None) -> bytes:
        return await self.net.peers[peer_id].handlers[protocol_id](self.peer_id, data)

    async def disconnect(self, peer_id: str) -> None:
        return None

    async def on_request_failed(self, peer_id: str, error) -> None:
        return None


def stored_by_kind(node) -> dict[str, int]:
    """Stored bytes by message kind, plus settlements and stubs (for the breakdown table)."""
    from protocol.messages import KIND_NAMES, decode_message

    out: dict[str, int] = {}
    for t in node.task_index.task_ids:
        for raw in node.store.get_many(list(node.task_index.ids[t])):
            if raw is not None:
                k = KIND_NAMES[decode_message(raw, node.params).kind]
                out[k] = out.get(k, 0) + len(raw)
    for name, prefix in (("settlements", b"settled/"), ("task stubs", b"stub/")):
        out[name] = sum(len(v) for _, v in node.store.derived_items(prefix))
    return out


def stored_bytes(node) -> int:
    """The raw messages a node holds plus the settlements and task stubs it keeps."""
    ids = [i for t in node.task_index.task_ids for i in node.task_index.ids[t]]
    msgs = sum(len(r) for r in node.store.get_many(ids) if r is not None)
    return msgs + sum(len(v) for p in (b"settled/", b"stub/") for _, v in node.store.derived_items(p))


def _messages(genesis, n_items: int, batches_per_task: int, labels_per_batch: int, requester_key, seed: int = 1):
    """(task raw, escrow order raw, batch raws) per domain: the load described above."""
    import nacl.signing

    from protocol.messages import (
        DEST_ESCROW, ITEM_TEXT, SCHEMA_SINGLE_CHOICE, AnnotationBatch, Item, LabelSchema, TaskAnnouncement, Transfer,
        sign_message,
    )

    rng = random.Random(seed)
    nid = genesis.network_id
    requester = bytes(requester_key.verify_key)
    annotators = [nacl.signing.SigningKey(b"labelmesh-bench-replica\x00" + k.to_bytes(8, "big")) for k in range(400)]
    out = []
    for k, domain in enumerate(DOMAINS):
        items = tuple(Item(ITEM_TEXT, text=f"{domain}:{i}:".ljust(32, "x")[:32]) for i in range(n_items))
        task = TaskAnnouncement(requester, k, T0, T0 + 60_000, f"bench {domain}", LabelSchema(SCHEMA_SINGLE_CHOICE,
                                domain, ("c0", "c1", "c2", "c3")), items, 5, 1_000_000, None, 0)
        tm = sign_message(task, requester_key, nid)
        tid = tm.compute_id(nid)
        order = sign_message(Transfer(requester, k, T0, task.bounty, DEST_ESCROW, tid), requester_key, nid)
        truth = [rng.randrange(4) for _ in range(n_items)]
        batches = []
        per_pass = n_items // labels_per_batch
        for b in range(batches_per_task):
            ann = annotators[(b // per_pass) % len(annotators)]  # each annotator labels every item once
            start = (b % per_pass) * labels_per_batch
            pairs = tuple((i, truth[i] if rng.random() < 0.8 else rng.randrange(4))
                          for i in range(start, start + labels_per_batch))
            body = AnnotationBatch(bytes(ann.verify_key), tid, T0 + 1000 + b, pairs)
            batches.append(sign_message(body, ann, nid).raw)
        out.append((tm.raw, order.raw, batches))
    return out


async def _measure(root: Path, quick: bool) -> dict:
    import nacl.signing
    import trio

    from node.app import Node, attached_p2p
    from node.core.replica import ReplicaConfig
    from protocol.genesis import make_genesis

    n_validators = 4
    n_items = 500 if quick else 1000
    batches_per_task = 90 if quick else 180
    vkeys = [nacl.signing.SigningKey(b"labelmesh-bench-replica-v\x00" + k.to_bytes(6, "big")) for k in range(n_validators)]
    rkey = nacl.signing.SigningKey(b"labelmesh-bench-replica-request\x00")
    g = make_genesis("bench-replica", T0, [(bytes(k.verify_key), 1) for k in vkeys], [],
                     [(bytes(rkey.verify_key), 10**12)], {})
    clock_now = [T0]
    clock = lambda: clock_now[0]  # noqa: E731
    retain_ms = 120_000
    net = MemNet()
    load = _messages(g, n_items, batches_per_task, 100, rkey)
    async with trio.open_nursery() as nursery:
        net.nursery = nursery

        async def start(name, **kw):
            node = Node(root / name, g, p2p_factory=attached_p2p(net.make(name)), clock=clock, finality_tick_s=0.05, sync_interval_s=1.0,
                        **kw)
            await nursery.start(node.run)
            return node

        vals = [await start(f"v{i}", validator_key=k) for i, k in enumerate(vkeys)]
        full = await start("full")
        one = await start("one", replica=ReplicaConfig(frozenset({"d0"})))
        prune = await start("prune", replica=ReplicaConfig(None, retain_ms))
        nodes = vals + [full, one, prune]
        t0 = time.monotonic()
        tids = []
        for task_raw, order_raw, batches in load:
            v, tid = await vals[0].ingest(task_raw, "rpc", publish=True)
            assert v.ok, v
            tids.append(tid)
            v, _ = await vals[0].ingest(order_raw, "rpc", publish=True)
            assert v.ok, v

        async def wait(cond, what, timeout=600):
            with trio.fail_after(timeout):
                while not cond():
                    await trio.sleep(0.05)
            log(f"replica: {what} ({time.monotonic() - t0:.0f} s)")

        await wait(lambda: all(n.is_open_for_labels(t) for n in vals for t in tids), "every escrow certified")
        for (_, _, batches), via in zip(load, vals * 3):
            for k in range(0, len(batches), 200):
                res = await via.ingest_many(batches[k:k + 200], "rpc", publish=True)
                assert all(v.ok for v, _ in res)
        n_b = sum(len(b) for _, _, b in load)
        await wait(lambda: all(full.store.count_by_kind().get(2, 0) == n_b for _ in [0]), "every batch at the full node")
        clock_now[0] = T0 + 60_000 + g.params.grace_period_ms + 1
        await wait(lambda: all(set(tids) <= n.ledger.released for n in nodes), "every task certified and released")
        while len({n.ledger.snapshot() for n in nodes}) != 1:
            await trio.sleep(0.05)
        assert all(n.ledger.check_supply() for n in nodes)
        sizes = {n.data_dir.name: stored_bytes(n) for n in (full, one, prune)}
        kinds = {n.data_dir.name: stored_by_kind(n) for n in (full, one)}
        clock_now[0] += retain_ms + 1000
        await wait(lambda: len(prune.proof_tasks) == len(tids) and not prune.store.count_by_kind().get(2),
                   "the pruning node pruned")
        sizes["pruned"] = stored_bytes(prune)
        kinds["pruned"] = stored_by_kind(prune)
        assert prune.ledger.snapshot() == full.ledger.snapshot()
        same_roots = all(n.finality.certified_result(t)[1].result_root == full.finality.certified_result(t)[1].result_root
                         for n in (one, prune) for t in tids)
        received = dict(net.bytes_delivered)
        nursery.cancel_scope.cancel()
    return {"sizes": sizes, "kinds": kinds, "tasks": len(tids), "validators": n_validators, "items": n_items,
            "batches_per_task": batches_per_task, "same_roots": same_roots, "received": received,
            "labels": n_b * 100}


def run(quick: bool) -> list[dict]:
    import trio

    root = Path(tempfile.mkdtemp(prefix="lmrep", dir="/tmp"))
    try:
        m = trio.run(_measure, root, quick)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    s, n = m["sizes"], m["tasks"]
    load = (f"{n} tasks, one per domain (10 domains), {m['items']} items of 32 B, {m['batches_per_task']} batches of "
            f"100 labels each, {m['validators']} validators")
    frac = s["one"] / s["full"]
    day = lambda b: b / n * TASKS_PER_DAY  # noqa: E731
    recv = m["received"]
    names = sorted({k for v in m["kinds"].values() for k in v}, key=lambda k: -m["kinds"]["full"].get(k, 0))
    rows = ["| what | full node | follows 1 of 10 | pruned |", "|---|---:|---:|---:|"]
    for k in names:
        rows.append(f"| {k} | " + " | ".join(f"{m['kinds'][w].get(k, 0) / n:,.0f}" for w in ("full", "one", "pruned"))
                    + " |")
    rows.append("| **total** | " + " | ".join(f"**{s[w] / n:,.0f}**" for w in ("full", "one", "pruned")) + " |")
    DETAILS["Partial replication and pruning: stored bytes per task"] = (
        f"{load}; bytes per task, by what is stored (in-process nodes, `scripts/bench replica`).\n\n" + "\n".join(rows))
    return [
        figure("replica_stored_fraction_1_of_10", frac, "share", target=0.15, higher_is_better=False,
               note=f"stored bytes, node following 1 of 10 equally busy domains / full node ({s['one']:,} / "
                    f"{s['full']:,} B); {load}; in-process nodes; roots identical: {m['same_roots']}"),
        figure("replica_received_fraction_1_of_10", recv["one"] / recv["full"], "share",
               note="gossip bytes delivered to it / to a full node (tasks and ledger traffic are global)"),
        figure("replica_stored_fraction_pruned", s["pruned"] / s["full"], "share",
               note="stored bytes of a node past its retention / full node (keeps tasks, ledger, "
                    "certificate + result per task)"),
        figure("replica_bytes_per_day_full", day(s["full"]), "B/day",
               note=f"store growth of a full node at a task a minute of {m['batches_per_task'] * 100:,} labels "
                    f"({m['batches_per_task'] * 100 / 60:.0f} labels/s; {m['validators']} validators)"),
        figure("replica_bytes_per_day_pruned", day(s["pruned"]), "B/day",
               note="store growth of a pruning node once past its retention window (same load)"),
        figure("replica_bytes_per_day_one_domain", day(s["one"]), "B/day",
               note="store growth of a node following 1 of 10 domains (same load)"),
    ]

"""A local devnet: N labelmesh daemons on 127.0.0.1, one data dir each.

``scripts/devnet up [-n N] [--demo]`` generates a genesis (one validator account
per node, a funded requester), initialises ``.devnet/node-<i>/``, starts node 0,
then the others with node 0 (and up to two more) as bootstrap peers, and waits
(bounded) until every node has peers. ``--demo`` then posts a task of a few
hundred items, lets simulated annotators of known accuracy (experts, average
workers, spammers) sign labels and submit them through different nodes, waits
for the deadline and for every node to hold the same annotation set, and prints
a summary a person can read, then posts a task open for an hour and prints the URL of
node 0's web UI (every node serves one on a loopback port, except with ``--netns``; an
account ``annotator`` on each node is there for a person). ``down`` stops exactly the processes ``up`` started
(by PID, checked against their command line).

``up --netns`` puts every node in its own network namespace (``devtools/netns.py``;
root needed) so that ``chaos`` (``devtools/chaos.py``, docs/chaos.md) can partition the
network; ``down`` deletes the namespaces. ``up --netns --wan`` also shapes every node's
link like a wide-area network (RTT 40-200 ms between any two nodes, 1% packet loss,
20 Mbit/s; ``--delay-ms``, ``--jitter-ms``, ``--loss``, ``--rate-mbit`` change it), through
the userspace relay of ``devtools/linkemu.py`` (this kernel has no ``tc netem``). After
start-up every node's config lists all the others as bootstrap peers, for its next start
(a restart after a crash).

``stop --node I [--kill]`` and ``restart --node I`` stop one node (SIGTERM, or SIGKILL:
a crash) and start it again from its own data dir, config and namespace, so fault tests
need not rebuild a node's command line.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import nacl.signing

from .processes import DevnetError, free_port, is_alive, poll, read_pids, rpc, start_node, stop_node

WAIT_S = 90
MAX_NODES = 50


def shaping_from_args(args):
    """The link shaping ``--wan`` and its options ask for (None without ``--wan``)."""
    if not getattr(args, "wan", False):
        return None
    from .linkemu import Shaping

    try:
        lo, _, hi = str(args.delay_ms).partition("-")
        lo, hi = float(lo), float(hi or lo)
    except ValueError:
        raise DevnetError(f"--delay-ms must be MIN-MAX in ms, e.g. 20-100 (got {args.delay_ms!r})") from None
    if not (0 <= lo <= hi <= 10_000 and 0 <= args.loss < 0.5 and args.jitter_ms >= 0 and args.rate_mbit >= 0):
        raise DevnetError("--wan: delays 0..10000 ms with MIN <= MAX, loss in [0, 0.5), jitter and rate >= 0")
    return Shaping(delay_min_ms=lo, delay_max_ms=hi, jitter_ms=args.jitter_ms, loss=args.loss,
                   rate_mbit=args.rate_mbit, seed=args.seed)


def add_arguments(p) -> None:
    p.add_argument("action", choices=["up", "down", "status", "logs", "demo", "chaos", "stop", "restart"],
                   help="what to do (stop / restart: one node, --node I)")
    p.add_argument("--netns", action="store_true",
                   help="with `up`: one network namespace per node (needs root; lets `chaos` cut the network)")
    p.add_argument("--duration", type=float, default=40.0, help="chaos: seconds of faults (default 40)")
    p.add_argument("--settle", type=float, default=90.0,
                   help="chaos: bound in seconds on convergence after the last fault (default 90)")
    p.add_argument("--rate", type=float, default=20.0, help="chaos: signed batches submitted per second (default 20)")
    p.add_argument("--wan", action="store_true",
                   help="with `up --netns`: shape every node's link like a WAN (RTT 40-200 ms, 1%% loss, 20 Mbit/s)")
    p.add_argument("--delay-ms", default="20-100",
                   help="with --wan: one-way egress delay per node, drawn from MIN-MAX ms (default 20-100)")
    p.add_argument("--jitter-ms", type=float, default=5.0, help="with --wan: jitter, ms (default 5)")
    p.add_argument("--loss", type=float, default=0.01, help="with --wan: packet loss probability (default 0.01)")
    p.add_argument("--rate-mbit", type=float, default=20.0, help="with --wan: egress rate, Mbit/s (default 20; 0 = none)")
    p.add_argument("--over-bound", type=int, default=1300,
                   help="chaos: one-label batches of an annotator past the old per-annotator cap, on distinct items, "
                        "plus a quarter as many of one that repeats itself (default 1300; 0: none)")
    p.add_argument("-n", "--nodes", type=int, default=5, help=f"number of nodes for `up` (default 5, max {MAX_NODES})")
    p.add_argument("--demo", action="store_true", help="with `up`: run the demo task once the devnet is meshed, then post a task for you and print node 0's web UI URL")
    p.add_argument("--fresh", action="store_true",
                   help="with `up`: delete an existing devnet directory (accounts, tasks, logs) first")
    p.add_argument("--root", default=".devnet", help="devnet directory (default .devnet)")
    p.add_argument("--node", type=int, help="with `logs`: only this node index; `stop` and `restart` need it")
    p.add_argument("--kill", action="store_true", help="with `stop`: SIGKILL (a crash) instead of SIGTERM")
    p.add_argument("--lines", type=int, default=20, help="with `logs`: lines per node (default 20)")
    p.add_argument("--items", type=int, default=300, help="demo: items in the task (default 300)")
    p.add_argument("--deadline", type=float, default=20.0, help="demo: seconds from posting to deadline (default 20)")
    p.add_argument("--seed", type=int, default=7, help="demo / chaos: random seed of the simulation or fault schedule (default 7)")


def clear_root(root: Path, fresh: bool) -> None:
    """A devnet directory that holds anything (accounts, tasks, logs) is deleted only with
    ``fresh`` (``up --fresh``); otherwise DevnetError says how to go on."""
    if not root.exists() or not any(root.iterdir()):
        return
    if not fresh:
        raise DevnetError(f"{root} already holds a devnet (its accounts, tasks and logs); `scripts/devnet up --fresh` "
                          f"deletes it and starts a new one, or pass --root DIR for another directory")
    import shutil

    from . import netns as nns
    nns.teardown(root)  # namespaces left by an earlier `up --netns` in this directory
    shutil.rmtree(root)


#: the annotator account every devnet node has: README's examples use it (no --account needed)
ANNOTATOR = "default"
#: credits each node's annotator account starts with (it can post small tasks too)
ANNOTATOR_BALANCE = 10**6


def add_annotators(keystores: list) -> list:
    """Create the account ANNOTATOR on every node; returns their public keys."""
    return [ks.create(ANNOTATOR) for ks in keystores]


def up(root: Path, n: int, netns: bool = False, shaping=None, fresh: bool = False,
       web: bool = False, balances=()) -> dict:
    """Start an ``n``-node devnet in ``root``. ``balances``: extra (public key, credits)
    genesis balances (benchmarks fund their own accounts)."""
    from node.config import NodeConfig
    from node.keystore import Keystore, write_private
    from protocol.genesis import make_genesis

    from . import netns as nns

    if not 1 <= n <= MAX_NODES:
        raise DevnetError(f"a devnet has 1..{MAX_NODES} nodes")
    if shaping is not None and not netns:
        raise DevnetError("shaped links (--wan) need --netns")
    if any(is_alive(e["pid"], e["data_dir"]) for e in read_pids(root).values()):
        raise DevnetError(f"a devnet is already running in {root}; run `scripts/devnet down` first")
    if netns:
        ok, why = nns.available()
        if not ok:
            raise DevnetError(f"--netns is not possible here: {why}; run without --netns (loopback)")
    clear_root(root, fresh)
    root.mkdir(parents=True, exist_ok=True)
    layout = nns.setup(root, n, shaping) if netns else None
    validators, keystores = [], []
    for i in range(n):
        dd = root / f"node-{i}"
        dd.mkdir(mode=0o700)
        write_private(dd / "node.key", os.urandom(32).hex().encode())
        ks = Keystore(dd)
        validators.append(ks.create("validator"))
        ks.create("annotator")  # for a person labelling in the node's web UI
        keystores.append(ks)
    requester = keystores[0].create("requester")
    annotators = add_annotators(keystores)
    # The requester holds most of the supply (10^9 credits) and is the devnet's pre-trusted
    # account (genesis reputation 1.0 in every domain): trust flows from it to annotators whose
    # work matches its gold (docs/ledger.md), so the demo's annotators can earn reputation.
    # Each node's annotator account starts with ANNOTATOR_BALANCE credits (it can post tasks).
    genesis = make_genesis("devnet", int(time.time() * 1000), [(v, 1) for v in validators],
                           [(requester, "", 1 << 16)],
                           [(requester, 10**9)] + [(a, ANNOTATOR_BALANCE) for a in annotators] + list(balances),
                           {"grace_period_ms": 3000, "round_timeout_ms": 4000, "reputation_lag_ms": 5000})
    ports = [free_port() for _ in range(n)]
    # each node's web UI (`labelmesh ui`), with ``web`` (scripts/devnet up; not the benchmarks'
    # devnets, whose footprint it would change: ~9 MB RSS per node); not with --netns: a
    # namespace's loopback is not the host's
    http = [f"127.0.0.1:{free_port()}" if web and not layout else "" for _ in range(n)]
    listen = [nns.listen_addr(layout, i) if layout else f"/ip4/127.0.0.1/tcp/{ports[i]}" for i in range(n)]
    for i in range(n):
        dd = root / f"node-{i}"
        (dd / "genesis.json").write_text(genesis.to_json())
        cfg = NodeConfig(listen=[listen[i]], validator_account="validator", http_listen=http[i])
        (dd / "config.toml").write_text(cfg.to_toml())
    t0 = time.monotonic()
    start_node(root, 0)
    info0 = poll(lambda: rpc(root, 0, "node_info"), WAIT_S, "node 0 to start")
    addr0 = [a for a in info0["listen_addrs"] if "/p2p/" in a][0]
    addrs = {0: addr0}
    # Others bootstrap from node 0 plus up to two earlier nodes; start them in waves so
    # each can also be a bootstrap peer for later ones.
    for i in range(1, n):
        boot = [addrs[0]] + [addrs[j] for j in sorted(addrs) if j != 0][-2:]
        cfg = NodeConfig(listen=[listen[i]], bootstrap=boot, validator_account="validator", http_listen=http[i])
        (root / f"node-{i}" / "config.toml").write_text(cfg.to_toml())
        start_node(root, i)
        info = poll(lambda: rpc(root, i, "node_info"), WAIT_S, f"node {i} to start")
        addrs[i] = [a for a in info["listen_addrs"] if "/p2p/" in a][0]
    # For the next start of each node (a restart after a crash): bootstrap from every other
    # node. A restarted node then redials everyone at once itself, instead of waiting for
    # peers whose redial backoff (up to a minute) grew while it was down (found by `chaos`).
    for i in range(n):
        cfg = NodeConfig(listen=[listen[i]], bootstrap=[addrs[j] for j in sorted(addrs) if j != i],
                         validator_account="validator", http_listen=http[i])
        (root / f"node-{i}" / "config.toml").write_text(cfg.to_toml())
    want = min(2, n - 1)
    poll(lambda: all(rpc(root, i, "node_info")["peer_count"] >= want for i in range(n)), WAIT_S,
          f"every node to have at least {want} peers")
    meta = {"nodes": n, "network_id": genesis.network_id.hex(), "addrs": addrs, "netns": bool(layout),
            "shaping": shaping.as_dict() if shaping else None,
            "delays_ms": layout.get("delays_ms") if layout else None,
            "started_in_s": round(time.monotonic() - t0, 1)}
    (root / "devnet.json").write_text(json.dumps(meta, indent=1))
    return meta


def add_node(root: Path, follow_domains=("*",), retain_batches_days: float = 0) -> int:
    """Start one more node in a running loopback devnet: not a validator, following
    ``follow_domains`` and pruning after ``retain_batches_days`` (docs/scaling.md), bootstrapped
    from every node; returns its index (its data dir is ``node-<index>``)."""
    from node.config import NodeConfig
    from node.keystore import write_private

    meta = json.loads((root / "devnet.json").read_text())
    if meta.get("netns"):
        raise DevnetError("add_node works on loopback devnets only")
    i = 1 + max([meta["nodes"] - 1] + meta.get("extra_nodes", []))
    dd = root / f"node-{i}"
    dd.mkdir(mode=0o700)
    write_private(dd / "node.key", os.urandom(32).hex().encode())
    (dd / "genesis.json").write_text((root / "node-0" / "genesis.json").read_text())
    cfg = NodeConfig(listen=[f"/ip4/127.0.0.1/tcp/{free_port()}"], bootstrap=[meta["addrs"][k] for k in sorted(meta["addrs"])],
                     follow_domains=list(follow_domains), retain_batches_days=retain_batches_days)
    (dd / "config.toml").write_text(cfg.validate().to_toml())
    start_node(root, i)
    poll(lambda: rpc(root, i, "node_info")["peer_count"] >= 1, WAIT_S, f"node {i} to start and find a peer")
    meta["extra_nodes"] = meta.get("extra_nodes", []) + [i]
    (root / "devnet.json").write_text(json.dumps(meta, indent=1))
    return i


def down(root: Path) -> int:
    pids = read_pids(root)
    for i in sorted(pids, key=int):
        stop_node(root, int(i))
    left = [e["pid"] for e in pids.values() if is_alive(e["pid"], e["data_dir"])]
    if left:
        raise DevnetError(f"processes still running: {left}")
    (root / "pids.json").unlink(missing_ok=True)
    from .netns import teardown
    teardown(root)  # the namespaces of `up --netns`, if any
    return len(pids)


def _one_node(root: Path, i: int | None) -> dict:
    """The pids.json entry of node ``i``, or DevnetError saying what to give."""
    pids = read_pids(root)
    if not pids:
        raise DevnetError(f"no devnet in {root} (`scripts/devnet up` makes one)")
    if i is None or str(i) not in pids:
        raise DevnetError(f"give the node with --node I, one of {', '.join(sorted(pids, key=int))}"
                          + (f" (there is no node {i})" if i is not None else ""))
    return pids[str(i)]


def stop_one(root: Path, i: int | None, kill: bool = False) -> bool:
    """Stop node ``i`` (SIGTERM and wait, SIGKILL after 15 s; ``kill``: SIGKILL at once).
    False if it was not running. Its data dir and namespace stay for ``restart_one``."""
    ent = _one_node(root, i)
    if not is_alive(ent["pid"], ent["data_dir"]):
        return False
    stop_node(root, i, signal.SIGKILL if kill else signal.SIGTERM)
    if is_alive(ent["pid"], ent["data_dir"]):
        raise DevnetError(f"node {i} (pid {ent['pid']}) did not stop")
    return True


def restart_one(root: Path, i: int | None) -> dict:
    """Stop node ``i`` if it runs, start it again from its data dir (inside its namespace with
    ``up --netns``) and wait, bounded, until it answers and has a peer again."""
    _one_node(root, i)
    stop_one(root, i)
    pid = start_node(root, i)
    poll(lambda: rpc(root, i, "node_info", timeout=5), WAIT_S, f"node {i} to start")
    n = len(read_pids(root))
    info = poll(lambda: (lambda x: x if x["peer_count"] >= min(1, n - 1) else None)(rpc(root, i, "node_info", timeout=5)),
                WAIT_S, f"node {i} to reconnect to a peer")
    return {"node": i, "pid": pid, "peers": info["peer_count"], "stored": info["messages"]["stored"]}


def status(root: Path) -> list[dict]:
    out = []
    for i, e in sorted(read_pids(root).items(), key=lambda kv: int(kv[0])):
        row = {"node": int(i), "pid": e["pid"], "alive": is_alive(e["pid"], e["data_dir"])}
        if row["alive"]:
            try:
                info = rpc(root, int(i), "node_info", timeout=5)
                row.update(peer_id=info["peer_id"], peers=info["peer_count"], tasks=info["tasks"],
                           stored=info["messages"]["stored"])
            except Exception as ex:
                row["error"] = str(ex)
        out.append(row)
    return out


# ------------------------------------------------------------------ demo

def simulate(n_items: int, labels: list[str], seed: int):
    """Truth and simulated annotators of known accuracy (experts, average workers, spammers)."""
    rng = random.Random(seed)
    truth = [rng.randrange(len(labels)) for _ in range(n_items)]
    profiles = [("expert", 0.95)] * 3 + [("average", 0.75)] * 6 + [("weak", 0.6)] * 3 + [("spammer", None)] * 4
    annotators = []
    for k, (kind, acc) in enumerate(profiles):
        sk = nacl.signing.SigningKey(bytes([seed % 256, k]) + bytes(30))
        annotators.append({"kind": kind, "accuracy": acc, "key": sk})
    answers = {k: [] for k in range(len(annotators))}
    for item in range(n_items):
        for k in rng.sample(range(len(annotators)), 5):
            a = annotators[k]
            if a["accuracy"] is None:
                lab = rng.randrange(len(labels))
            elif rng.random() < a["accuracy"]:
                lab = truth[item]
            else:
                lab = rng.choice([x for x in range(len(labels)) if x != truth[item]])
            answers[k].append((item, lab))
    return truth, annotators, answers


def demo(root: Path, n_items: int, deadline_s: float, seed: int) -> dict:
    from protocol.messages import AnnotationBatch, sign_message

    meta = json.loads((root / "devnet.json").read_text())
    n = meta["nodes"]
    network_id = bytes.fromhex(meta["network_id"])
    labels = ["cat", "dog", "bird"]
    truth, annotators, answers = simulate(n_items, labels, seed)
    t0 = time.monotonic()
    # The requester hides gold answers for 10% of the items (committed now, revealed by
    # node 0 after the deadline); annotators cannot tell them from the others.
    gold_items = sorted(random.Random(seed + 1).sample(range(n_items), max(1, n_items // 10)))
    requester_before = rpc(root, 0, "balance_get", {"account": "requester"})["accounts"][0]["balance"]
    r = rpc(root, 0, "task_post", {"account": "requester", "title": "demo: what animal is in the picture?",
                                    "labels": labels, "domain": "animals",
                                    "items": [f"picture #{i}" for i in range(n_items)],
                                    "duration_s": deadline_s, "bounty": 1_000_000, "redundancy": 5,
                                    "gold": [[i, truth[i]] for i in gold_items]})
    task_id = r["task_id"]
    deadline_ms = r["deadline_ms"]
    print(f"posted task {task_id[:16]}… ({n_items} items, bounty 1,000,000 credits) on node 0; bounty escrowed: "
          f"{r['escrow']['status']} (requester: {requester_before:,} credits before)", flush=True)
    poll(lambda: all(any(t["task_id"] == task_id for t in rpc(root, i, "tasks_list")["tasks"]) for i in range(n)),
          30, "the task to reach every node")
    print(f"task reached all {n} nodes in {time.monotonic() - t0:.1f} s", flush=True)
    submitted = 0
    batches = 0
    for k, a in enumerate(annotators):
        pairs = sorted(answers[k])
        via = k % n
        raws = []
        for j in range(0, len(pairs), 50):
            b = AnnotationBatch(annotator=bytes(a["key"].verify_key), task_id=bytes.fromhex(task_id),
                                created_at=int(time.time() * 1000), labels=tuple(pairs[j:j + 50]))
            raws.append(sign_message(b, a["key"], network_id).raw.hex())
        res = rpc(root, via, "annotations_submit", {"raw": raws})
        submitted += sum(x["labels"] for x in res["results"])
        batches += len(raws)
    print(f"{len(annotators)} simulated annotators submitted {submitted} labels in {batches} signed batches "
          f"through {n} different nodes", flush=True)
    wait_s = max(0.0, deadline_ms / 1000 - time.time())
    print(f"waiting {wait_s:.0f} s for the deadline…", flush=True)
    time.sleep(wait_s)

    def certified_everywhere():
        rs = [rpc(root, i, "consensus_get", {"task_id": task_id}) for i in range(n)]
        if all(x["status"] == "certified" for x in rs) and len({x["result_root"] for x in rs}) == 1:
            return rs
        return None

    print("waiting for the validators' certificate…", flush=True)
    rs = poll(certified_everywhere, 90, "every node to report the same certified result", interval=0.5)
    res = rs[0]
    got = [it["label_index"] for it in res["items"]]
    scored = [i for i in range(n_items) if i not in set(gold_items)]  # accuracy on the non-gold items
    acc = sum(1 for i in scored if got[i] == truth[i]) / len(scored)
    # plain majority for comparison
    votes = {}
    for k, pairs in answers.items():
        for item, lab in pairs:
            votes.setdefault(item, [0] * len(labels))[lab] += 1
    mv = sum(1 for i in scored if max(range(len(labels)), key=lambda c: (votes[i][c], -c)) == truth[i]) / len(scored)
    by_key = {a["account"]: a for a in res["annotators"]}
    ledger = settled_balances(root, n, [bytes(a["key"].verify_key).hex() for a in annotators])
    rep = {x["account"]: x for x in rpc(root, 0, "reputation_get", {"domain": "animals"})["reputation"]}
    summary = {"task_id": task_id, "nodes": n, "labels_submitted": submitted, "batches": batches,
               "accuracy": round(acc, 4), "majority_vote_accuracy": round(mv, 4), "alpha": res["alpha_f"],
               "gold_items": len(gold_items), "refund": res["refund"],
               "result_root": res["result_root"], "identical_on_all_nodes": True,
               "status": res["status"], "certificate": res["certificate"], "batches_certified": res["batches"],
               "certified_after_deadline_s": round(time.time() - deadline_ms / 1000, 1),
               "seconds": round(time.monotonic() - t0, 1), "annotators": [],
               "requester_before": requester_before, "requester_after": ledger["requester"],
               "supply": ledger["supply"]}
    for k, a in enumerate(annotators):
        pk = bytes(a["key"].verify_key).hex()
        row = by_key.get(pk, {})
        summary["annotators"].append({"kind": a["kind"], "true_accuracy": a["accuracy"],
                                      "estimated_accuracy": row.get("accuracy_f"), "reward": row.get("reward", 0),
                                      "balance": ledger["balances"][pk],
                                      "reputation": rep.get(pk, {}).get("weight_f", 0.0)})
    return summary


_DESCRIPTIONS = [
    "it purrs on the sofa and ignores you", "it fetches the ball and wags its tail", "it sings on a branch at dawn",
    "it chases a laser dot across the floor", "it barks at the postman", "it builds a nest of twigs",
    "it sleeps sixteen hours a day in a sunbeam", "it guards the garden gate", "it flies south for the winter",
    "it knocks a glass off the table, slowly", "it rolls over for a belly rub", "it has bright feathers and a curved beak",
]


def invite(root: Path, n_items: int = 24, hours: float = 1.0) -> str:
    """Post an open task on node 0 for a person to label in the browser; return node 0's
    web UI URL (with its access token) on the labeling page."""
    items = [f"picture #{i + 1}: {_DESCRIPTIONS[i % len(_DESCRIPTIONS)]}" for i in range(n_items)]
    rpc(root, 0, "task_post", {"account": "requester", "title": "your turn: what animal is it?",
                                "labels": ["cat", "dog", "bird"], "domain": "animals", "items": items,
                                "duration_s": int(hours * 3600), "bounty": 10_000, "redundancy": 3})
    return rpc(root, 0, "ui_url")["login_url"] + "#/label"


def settled_balances(root: Path, n: int, accounts: list[str]) -> dict:
    """Once every node has released the task's escrow and agrees on the balances: the
    requester's and ``accounts``' balances and the supply (invariant checked on every node)."""
    requester = rpc(root, 0, "balance_get", {"account": "requester"})["accounts"][0]["account"]
    who = [requester] + accounts

    def view(i: int):
        ledger = rpc(root, i, "node_info")["ledger"]
        if ledger["escrow"] or not ledger["invariant_ok"]:
            return None
        return ({a: rpc(root, i, "balance_get", {"account": a})["accounts"][0]["balance"] for a in who},
                ledger["supply"])

    def agreed():
        views = [view(i) for i in range(n)]
        if None in views or any(v != views[0] for v in views):
            return None
        return {"requester": views[0][0][requester], "balances": views[0][0], "supply": views[0][1]}
    return poll(agreed, 60, "every node to release the escrow and agree on the balances", interval=0.5)


def print_summary(s: dict) -> None:
    print()
    print("=" * 72)
    print(f"labelmesh demo — task {s['task_id'][:16]}…  ({s['status']})")
    print("=" * 72)
    print(f"nodes                     {s['nodes']}")
    print(f"labels submitted          {s['labels_submitted']} in {s['batches']} signed batches")
    print(f"agreement (Krippendorff α) {s['alpha']:.3f}")
    print(f"consensus accuracy        {s['accuracy']:.1%} on the non-gold items  "
          f"(plain majority vote: {s['majority_vote_accuracy']:.1%}); {s['gold_items']} hidden gold items revealed")
    c = s["certificate"]
    print(f"certificate               round {c['round']}, {len(c['signers'])} validators holding "
          f"{c['weight']}/{c['total_weight']} of the weight; {s['batches_certified']} of {s['batches']} batches pinned")
    print(f"result_root               {s['result_root'][:32]}…  identical on all {s['nodes']} nodes")
    print(f"certified                 {s['certified_after_deadline_s']} s after the deadline")
    print()
    print("annotator   true acc  estimated  reward (credits)  balance after  reputation (animals)")
    for a in s["annotators"]:
        ta = "random" if a["true_accuracy"] is None else f"{a['true_accuracy']:.2f}"
        ea = "-" if a["estimated_accuracy"] is None else f"{a['estimated_accuracy']:.2f}"
        print(f"{a['kind']:<10}  {ta:>8}  {ea:>9}  {a['reward']:>16,}  {a['balance']:>13,}  {a['reputation']:>10.3f}")
    print(f"refunded to the requester: {s['refund']:,} credits (rewards + refund = bounty, exactly)")
    print(f"requester balance         {s['requester_before']:,} before -> {s['requester_after']:,} after "
          f"(the bounty was escrowed, the rewards paid out of it, the rest refunded)")
    print(f"supply                    {s['supply']:,} credits on every node (balances + escrow + burned)")
    print(f"\ndemo finished in {s['seconds']} s")


def _demo_and_invite(root: Path, args) -> None:
    s = demo(root, args.items, args.deadline, args.seed)
    try:
        s["ui_url"] = invite(root)
    except Exception as e:  # e.g. nodes in network namespaces: their UI is not reachable from here
        s["ui_url"] = None
        print(f"(no web UI link: {e})", file=sys.stderr)
    if args.json:
        print(json.dumps(s))
        return
    print_summary(s)
    if s["ui_url"]:
        print("\nNow label in your browser (node 0's web UI, account \"annotator\"; a task of 24 items is open for 1 h):")
        print(f"  {s['ui_url']}")
        print("Any node's UI: `labelmesh ui --data-dir .devnet/node-<i>`.")


def how_to_use(root: Path) -> str:
    """What to type next: labelmesh on PATH, a node's data dir, the account every node has."""
    venv_bin = Path(sys.executable).parent
    return (f"labelmesh is {venv_bin}/labelmesh; put it on PATH with\n"
            f"    export PATH=\"{venv_bin}:$PATH\"\n"
            f"talk to node 0 with --data-dir {root}/node-0 (or export LABELMESH_DATA_DIR={root}/node-0); every node "
            f"has an annotator account '{ANNOTATOR}' for the CLI ({ANNOTATOR_BALANCE:,} credits) and 'annotator' for its "
            "web UI; node 0 also 'requester'")


def still_running(root: Path, n: int) -> str:
    return (f"\nthe {n} nodes are still running (`scripts/devnet status`); try `labelmesh task list --data-dir "
            f"{root}/node-0`; stop them with `scripts/devnet down`")


def main(args) -> int:
    root = Path(args.root)
    try:
        if args.action == "up":
            meta = up(root, args.nodes, netns=args.netns or args.wan, shaping=shaping_from_args(args),
                      fresh=args.fresh, web=True)
            print(f"devnet up: {meta['nodes']} nodes meshed in {meta['started_in_s']} s; data in {root}/node-<i>/ "
                  f"(RPC socket node.sock); stop with `scripts/devnet down`", flush=True)
            if not args.json:
                print(how_to_use(root), flush=True)
            if args.demo:
                _demo_and_invite(root, args)
                if not args.json:
                    print(still_running(root, meta["nodes"]))
        elif args.action == "demo":
            _demo_and_invite(root, args)
        elif args.action == "chaos":
            from .chaos import main as chaos_main
            return chaos_main(root, args)
        elif args.action == "down":
            k = down(root)
            print(f"devnet down: stopped {k} nodes")
        elif args.action == "stop":
            was = stop_one(root, args.node, kill=args.kill)
            print(json.dumps({"node": args.node, "stopped": was}) if args.json else
                  f"node-{args.node} {('killed' if args.kill else 'stopped') if was else 'was not running'}; "
                  f"start it again with `scripts/devnet restart --node {args.node}`")
        elif args.action == "restart":
            r = restart_one(root, args.node)
            print(json.dumps(r) if args.json else
                  f"node-{r['node']} running again (pid {r['pid']}, {r['peers']} peers, {r['stored']} messages)")
        elif args.action == "status":
            rows = status(root)
            if args.json:
                print(json.dumps(rows))
            elif not rows:
                print("no devnet running")
            else:
                for r in rows:
                    print(f"node-{r['node']}  pid {r['pid']:<7} {'up' if r['alive'] else 'DOWN':<4} "
                          f"peers {r.get('peers', '-')}  tasks {r.get('tasks', '-')}  stored {r.get('stored', '-')}"
                          + (f"  error: {r['error']}" if 'error' in r else ""))
        elif args.action == "logs":
            idx = [args.node] if args.node is not None else sorted(int(i) for i in read_pids(root))
            for i in idx:
                p = root / f"node-{i}" / "node.log"
                lines = p.read_text(errors="replace").splitlines()[-args.lines:] if p.exists() else []
                print(f"==> node-{i} <==")
                print("\n".join(lines))
    except DevnetError as e:
        print(f"devnet: {e}", file=sys.stderr)
        return 1
    return 0

"""`scripts/devnet chaos`: faults on a running devnet under load, then a Jepsen-style set check.

How it works
------------
1. *Task and load.* A task is posted on node 0 whose deadline falls a few
   seconds after the fault window. Every batch the run will submit is signed up
   front (one fresh annotator key per batch, derived from the seed), plus a
   share of *invalid* ones (a flipped signature bit, or a label index outside the
   schema). Two client threads submit them at ``--rate`` batches/s, each to a
   random node that is not known to be dead, over the node's RPC socket, and
   classify every submission:

   * acknowledged: the node answered ``accepted``, ``accepted_overlapping`` or
     ``duplicate`` (durably stored);
   * redundant: the node answered ``redundant`` (valid, its labels already held under
     smaller ids of the same annotator: not stored, so it must never appear);
   * in doubt: the request was sent but no answer came (node paused or killed
     mid-call, timeout) -- it may or may not be stored, both are correct;
   * refused: the node answered with an error (-32002 for the invalid ones);
   * not sent: the socket refused the connection; the batch is retried on
     another node (up to 5 times), nothing was sent so nothing may appear.

   *Transfers* run beside the labels (docs/ledger.md): the requester funds
   ``TRANSFER_ACCOUNTS`` chaos accounts, which then send pre-signed debit orders to
   each other through random nodes -- with, for a share of them, a second,
   conflicting order for the same sequence number sent to another node at the same
   time (a double-spend attempt), and some orders for more than the account holds.
   While the faults run, a sampler reads every live node's ledger once a second:
   the supply invariant (balances + escrow + burned = supply, nothing negative)
   must hold on every node at every sample.

2. *Faults.* A seeded schedule (same seed, same schedule) of faults, one at a
   time, each for a few seconds: ``kill`` (SIGKILL, then restart the node from its
   data dir), ``pause`` (SIGSTOP ... SIGCONT) and ``partition`` (a random minority
   of nodes cut off from the rest: network namespaces, see ``devtools/netns.py``).
   The first faults of a run cycle through every kind, so even a short run has
   at least one of each.

   *Over-bound annotators* (``--over-bound N``, default 1,300; 0: none) submit along
   with the load, through random nodes like it: one annotator signs N one-label batches
   on N distinct items (an honest annotator far past the old per-annotator cap of 1,024
   batches, as a browser app labelling one item at a time), another N/4 one-label
   batches on the first 20 items with random labels (it repeats itself and equivocates,
   so the keep rule drops some of its batches, PROTOCOL.md 6.3). The task has enough
   items for them. Whatever happens (even Ctrl-C), paused nodes are
   continued, the network healed and killed nodes restarted before checking.

3. *Check.* After the last fault ends (the restart launched, the SIGCONT sent, the
   partition healed) the checker polls every node until, within ``--settle``
   seconds, every node holds the same batch set that contains every acknowledged
   batch, and all report the same ``set_root`` and ``result_root``; then, once past
   the deadline, until all report the task *certified* with the same roots. Then:

   * lost    = acknowledged batches missing from any node (must be 0), except a batch
     that the keep rule drops because *its own annotator* signed batches with smaller
     ids carrying its labels: those are counted apart ("dropped by the keep rule"), and
     each of their labels must still be held (or its item be an equivocation of that
     annotator: "labels lost" must be 0);
   * every node holds only what the keep rule keeps (plus what the certificate pins);
   * phantom = stored batches that were neither acknowledged nor in doubt:
     refused, never sent, invalid, or never submitted at all (must be 0);
   * in doubt batches that ended up stored are reported, not judged;
   * the ledger: every node ends with the same balances and histories of the chaos
     accounts (so no sequence number of an account took effect twice anywhere), and
     the supply invariant held at every sample.

   Exit status 0 when lost = phantom = 0, no invalid batch was acknowledged,
   and the nodes converged (and certified) within the bound; 1 otherwise.

Without network namespaces (a loopback devnet, ``up`` without ``--netns``)
partitions cannot be made honestly -- every node shares one loopback interface
-- so they are left out of the schedule and the summary says so.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nacl.signing

from node.rpc.client import RpcClient
from node.rpc.errors import RpcCallError

from . import netns
from .processes import DevnetError, is_alive, poll, read_pids, rpc, start_node

WARMUP_S = 2.0              # load only, before the first fault
DEADLINE_MARGIN_S = 5.0     # the task's deadline is this long after the fault window
RPC_TIMEOUT_S = 3.0         # a submission unanswered this long is "in doubt"
INVALID_SHARE = 0.05        # of the submissions
ITEMS = 100                 # items of the chaos task, plus what the over-bound annotators need
LABELS = ["red", "green", "blue"]
LABELS_PER_BATCH = 10
MAX_SEND_TRIES = 5
TRANSFER_ACCOUNTS = 4       # chaos accounts funded by the requester, paying each other
TRANSFER_FUNDS = 10_000     # credits each chaos account starts with
DOUBLE_SPEND_SHARE = 0.2    # of the transfer slots: a second, conflicting order for the same seq


@dataclass
class Fault:
    kind: str               # kill | pause | partition
    at: float               # seconds after the start of the fault window
    duration: float         # seconds until the node is restarted / continued / the network healed
    targets: list[int]      # the node (kill, pause) or the cut-off minority (partition)
    started: float | None = None   # actual times, seconds after the start
    ended: float | None = None

    def describe(self, n: int) -> str:
        if self.kind == "partition":
            rest = [i for i in range(n) if i not in self.targets]
            what = f"partition {self.targets} | {rest}"
        elif self.kind == "kill":
            what = f"kill -9 node {self.targets[0]}, restart"
        else:
            what = f"pause node {self.targets[0]} (SIGSTOP/SIGCONT)"
        return f"{what} at {self.at:.1f} s for {self.duration:.1f} s"


def make_schedule(seed: int, duration: float, n: int, partitions: bool) -> list[Fault]:
    """A seeded, bounded, sequential fault schedule within [WARMUP_S, duration]."""
    rng = random.Random(seed)
    kinds = ["kill", "pause"] + (["partition"] if partitions and n >= 2 else [])
    first = kinds[:]
    rng.shuffle(first)
    lengths = {"kill": (2.0, 6.0), "pause": (3.0, 7.0), "partition": (5.0, 10.0)}
    out: list[Fault] = []
    t = WARMUP_S
    while True:
        kind = first.pop(0) if first else rng.choice(kinds)
        d = round(rng.uniform(*lengths[kind]), 1)
        if t + d > duration:
            break
        if kind == "partition":
            size = rng.randint(1, max(1, n // 2))
            targets = sorted(rng.sample(range(n), size))
        else:
            targets = [rng.randrange(n)]
        out.append(Fault(kind, round(t, 1), d, targets))
        t += d + rng.uniform(1.0, 3.0)
    return out


# ---------------------------------------------------------------------- load


OVER_BOUND = 1_300          # one-label batches of the honest over-bound annotator (default)
REPEAT_ITEMS = 20           # the repeating annotator labels only these first items


@dataclass
class Submission:
    batch_id: str
    raw: str
    valid: bool
    outcome: str = "pending"   # acked | redundant | in_doubt | refused | not_sent
    node: int | None = None
    detail: str = ""           # for acked: the status (accepted, accepted_overlapping, duplicate)
    role: str = "load"         # load | heavy (over-bound, one label per item) | repeater


def sign_batches(seed: int, network_id: bytes, task_id: bytes, count: int) -> list[Submission]:
    """``count`` pre-signed submissions, about INVALID_SHARE of them invalid."""
    from protocol.messages import AnnotationBatch, sign_message

    rng = random.Random(seed * 1_000_003 + 1)
    now = int(time.time() * 1000)
    out = []
    for k in range(count):
        sk = nacl.signing.SigningKey(hashlib.sha256(b"labelmesh-chaos/%d/%d" % (seed, k)).digest())
        items = sorted(rng.sample(range(ITEMS), LABELS_PER_BATCH))
        bad = rng.random() < INVALID_SHARE
        bad_label = bad and rng.random() < 0.5
        pairs = tuple((i, (len(LABELS) + 4) if bad_label and j == 0 else rng.randrange(len(LABELS)))
                      for j, i in enumerate(items))
        body = AnnotationBatch(annotator=bytes(sk.verify_key), task_id=task_id, created_at=now, labels=pairs)
        m = sign_message(body, sk, network_id)
        raw = m.raw
        if bad and not bad_label:  # flip one bit of the signature (the id does not cover it)
            from protocol.codec import pack
            sig = bytearray(m.signature)
            sig[rng.randrange(64)] ^= 1 << rng.randrange(8)
            raw = pack([m.body_bytes, bytes(sig)])
        out.append(Submission(m.compute_id(network_id).hex(), raw.hex(), not bad))
    return out


def sign_over_bound(seed: int, network_id: bytes, task_id: bytes, n: int, first_item: int) -> list[Submission]:
    """The over-bound annotators' submissions (module docstring): ``n`` one-label batches of
    one key on items ``first_item ..`` (each item once), and ``n // 4`` one-label batches of
    another key on the first REPEAT_ITEMS items (repeats and equivocations)."""
    from protocol.messages import AnnotationBatch, sign_message

    rng = random.Random(seed * 1_000_003 + 2)
    now = int(time.time() * 1000)
    heavy = nacl.signing.SigningKey(hashlib.sha256(b"labelmesh-chaos/%d/heavy" % seed).digest())
    repeater = nacl.signing.SigningKey(hashlib.sha256(b"labelmesh-chaos/%d/repeater" % seed).digest())
    rows = [("heavy", heavy, first_item + k) for k in range(n)]
    rows += [("repeater", repeater, rng.randrange(REPEAT_ITEMS)) for _ in range(n // 4)]
    out = []
    for k, (role, sk, item) in enumerate(rows):
        body = AnnotationBatch(annotator=bytes(sk.verify_key), task_id=task_id, created_at=now + k,
                               labels=((item, rng.randrange(len(LABELS))),))
        m = sign_message(body, sk, network_id)
        out.append(Submission(m.compute_id(network_id).hex(), m.raw.hex(), True, role=role))
    rng.shuffle(out)
    return out


def submit(sock_path: Path, raw_hex: str, timeout: float, method: str = "annotations_submit") -> tuple[str, str]:
    """One submission call (``annotations_submit``, or ``transfer`` for debit orders),
    classified: (acked | redundant | in_doubt | refused | not_sent, detail: the status or
    the error)."""
    with RpcClient(sock_path, timeout=timeout) as client:
        try:
            client.connect()
        except OSError as e:
            return "not_sent", f"connect: {e.strerror or e}"
        try:
            result = client.call(method, {"raw": raw_hex})
        except RpcCallError as e:
            return "refused", f"{e.code}: {e.message[:120]}"
        except ConnectionError:
            return "in_doubt", "connection closed before the answer"
        except OSError as e:
            return "in_doubt", f"{type(e).__name__}: {e}"
    status = result.get("status")
    if status in ("accepted", "accepted_overlapping", "duplicate"):
        return "acked", status
    return ("redundant", status) if status == "redundant" else ("refused", f"status {status}")


class LoadGenerator:
    def __init__(self, root: Path, n: int, subs: list[Submission], rate: float, seed: int,
                 method: str = "annotations_submit"):
        self.root, self.n, self.subs, self.rate, self.method = root, n, subs, rate, method
        self.rng = random.Random(seed * 7 + 3)
        self.dead: set[int] = set()          # killed by the schedule: don't bother connecting
        self.lock = threading.Lock()
        self.next = 0
        self.stop = threading.Event()
        self.t0 = 0.0
        self.threads: list[threading.Thread] = []

    def start(self, workers: int = 2) -> None:
        self.t0 = time.monotonic()
        for _ in range(workers):
            t = threading.Thread(target=self._work, daemon=True)
            t.start()
            self.threads.append(t)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=RPC_TIMEOUT_S * MAX_SEND_TRIES + 5)

    def _take(self) -> tuple[Submission, random.Random] | None:
        with self.lock:
            if self.next >= len(self.subs) or self.stop.is_set():
                return None
            k = self.next
            self.next += 1
            due = self.t0 + k / self.rate
            rng = random.Random(self.rng.getrandbits(64))  # node choices of this submission
        delay = due - time.monotonic()
        if delay > 0 and self.stop.wait(delay):
            return None  # stopped while waiting: stays "pending" (never sent)
        return self.subs[k], rng

    def _work(self) -> None:
        while True:
            took = self._take()
            if took is None:
                return
            sub, rng = took
            outcome, detail, node = "not_sent", "no live node", None
            refused: set[int] = set()  # nodes that refused this submission's connection
            for _ in range(MAX_SEND_TRIES):
                live = ([i for i in range(self.n) if i not in self.dead and i not in refused]
                        or [i for i in range(self.n) if i not in self.dead] or list(range(self.n)))
                node = rng.choice(live)
                outcome, detail = submit(self.root / f"node-{node}" / "node.sock", sub.raw, RPC_TIMEOUT_S,
                                         self.method)
                if outcome != "not_sent":
                    break
                refused.add(node)
                time.sleep(0.05)
            sub.outcome, sub.detail, sub.node = outcome, detail, node


# ---------------------------------------------------------------------- transfers (the ledger)


def chaos_keys(seed: int) -> list[nacl.signing.SigningKey]:
    return [nacl.signing.SigningKey(hashlib.sha256(b"labelmesh-chaos-ledger/%d/%d" % (seed, k)).digest())
            for k in range(TRANSFER_ACCOUNTS)]


def sign_transfers(seed: int, network_id: bytes, keys, count: int) -> tuple[list[Submission], int]:
    """About ``count`` pre-signed debit orders among the chaos accounts, in sequence per
    account, amounts up to a third of the starting funds (some chains overspend before
    they end); for DOUBLE_SPEND_SHARE of the slots a second order for the same sequence
    number to another recipient (a double-spend attempt: the load sends the two, one
    after the other, to random nodes). (orders, double-spend attempts)."""
    from protocol.messages import DEST_ACCOUNT, Transfer, sign_message

    rng = random.Random(seed * 1_000_033 + 7)
    pubs = [bytes(k.verify_key) for k in keys]
    now = int(time.time() * 1000)
    out: list[Submission] = []
    seq = [0] * len(keys)
    doubles = 0
    while len(out) < count:
        a = rng.randrange(len(keys))
        others = [b for b in range(len(keys)) if b != a]
        double = rng.random() < DOUBLE_SPEND_SHARE
        doubles += double
        for variant in range(2 if double else 1):
            body = Transfer(pubs[a], seq[a], now + variant, 1 + rng.randrange(TRANSFER_FUNDS // 3), DEST_ACCOUNT,
                            pubs[rng.choice(others)])
            m = sign_message(body, keys[a], network_id)
            out.append(Submission(m.compute_id(network_id).hex(), m.raw.hex(), True))
        seq[a] += 1
    return out, doubles


class LedgerLoad:
    """The transfers of a chaos run: funding, pre-signed orders sent beside the labels, a
    sampler of the supply invariant on every live node, and the final ledger check."""

    def __init__(self, root: Path, n: int, network_id: bytes, seed: int, rate: float, duration: float, rep):
        self.root, self.n, self.seed, self.rate = root, n, seed, rate
        keys = chaos_keys(seed)
        self.accounts = [bytes(k.verify_key).hex() for k in keys]
        for a in self.accounts:  # the requester (node 0) funds each chaos account, one certified transfer each
            r = rpc(root, 0, "transfer", {"account": "requester", "to": a, "amount": TRANSFER_FUNDS,
                                           "wait_ms": 30_000}, timeout=40)
            if r["status"] != "applied":
                raise DevnetError(f"funding a chaos account did not complete: {r['status']}")
        self.subs, rep.double_spend_attempts = sign_transfers(seed, network_id, keys, max(2, int(rate * duration / 4)))
        self.samples = 0
        self.violations: list[str] = []
        self.stop = threading.Event()

    def start(self, load: "LoadGenerator") -> None:
        """Send the orders (a quarter of the label rate) and sample the invariant until ``join``."""
        self.load = LoadGenerator(self.root, self.n, self.subs, max(0.5, self.rate / 4), self.seed + 1,
                                  method="transfer")
        self.load.dead = load.dead  # one view of which nodes the schedule killed
        self.load.start(workers=1)
        self.sampler = threading.Thread(target=self._sample, args=(load,), daemon=True)
        self.sampler.start()

    def join(self) -> None:
        self.load.join()
        self.stop.set()
        self.sampler.join(timeout=30)

    def _sample(self, load: "LoadGenerator") -> None:
        while not self.stop.wait(1.0):
            for i in range(self.n):
                if i in load.dead:
                    continue
                try:
                    led = rpc(self.root, i, "node_info", timeout=2)["ledger"]
                except Exception:  # paused, restarting: no sample
                    continue
                self.samples += 1
                if not led["invariant_ok"]:
                    self.violations.append(f"node {i}: supply invariant broken: {led}")

    def classify(self, rep, out) -> None:
        rep.transfers_submitted = sum(1 for s in self.subs if s.outcome != "pending")
        rep.transfers_acked = sum(1 for s in self.subs if s.outcome == "acked")
        rep.transfers_refused = sum(1 for s in self.subs if s.outcome == "refused")
        out(f"transfers: {rep.transfers_submitted} submitted ({rep.double_spend_attempts} double-spend attempts), "
            f"{rep.transfers_acked} acknowledged, {rep.transfers_refused} refused (insufficient balance, slot used)")

    def view(self, i: int) -> dict:
        """Node ``i``'s balances and histories of the chaos accounts, and its ledger totals."""
        hist = {}
        for a in self.accounts:
            h = rpc(self.root, i, "ledger_history", {"account": a, "limit": 10_000}, timeout=10)
            hist[a] = (h["balance"], tuple((e["kind"], e["amount"], e["ref"]) for e in h["entries"]))
        return {"accounts": hist, "ledger": rpc(self.root, i, "node_info", timeout=10)["ledger"]}

    def check(self, rep, settle: float) -> None:
        """Wait (within ``settle`` s) until every node shows the same ledger; the violations."""
        rep.ledger_samples = self.samples
        rep.violations += self.violations[:5]
        views = None
        end = time.monotonic() + settle
        while time.monotonic() < end:
            try:
                views = [self.view(i) for i in range(self.n)]
            except Exception:
                views = None
            if views and all(v == views[0] for v in views) and all(v["ledger"]["invariant_ok"] for v in views):
                rep.ledger_converged = True
                break
            time.sleep(0.5)
        if views:
            rep.supply = views[0]["ledger"]["supply"]
            rep.transfers_applied = sum(1 for _, h in views[0]["accounts"].values() for e in h
                                        if e[0] == "transfer_out")
            for v in views:
                if not v["ledger"]["invariant_ok"]:
                    rep.violations.append(f"supply invariant broken at the end: {v['ledger']}")
                rep.violations += [f"account {a[:16]} negative: {b}" for a, (b, _) in v["accounts"].items() if b < 0]
        if not rep.ledger_converged:
            rep.violations.append("the nodes' ledgers (balances and histories of the chaos accounts) did not converge")


# ---------------------------------------------------------------------- faults


class FaultRunner:
    """Applies faults and always undoes them (``restore``)."""

    def __init__(self, root: Path, n: int, load: LoadGenerator, log):
        self.root, self.n, self.load, self.log = root, n, load, log
        self.paused: set[int] = set()
        self.killed: set[int] = set()
        self.partitioned = False

    def _pid(self, i: int) -> tuple[int, str]:
        e = read_pids(self.root)[str(i)]
        return e["pid"], e["data_dir"]

    def begin(self, f: Fault) -> None:
        i = f.targets[0]
        if f.kind == "kill":
            pid, dd = self._pid(i)
            self.load.dead.add(i)
            self.killed.add(i)
            if is_alive(pid, dd):
                os.kill(pid, signal.SIGKILL)
            poll(lambda: not is_alive(pid, dd) or _reap(pid), 30, f"node {i} to die")
        elif f.kind == "pause":
            pid, _ = self._pid(i)
            os.kill(pid, signal.SIGSTOP)
            self.paused.add(i)
        else:
            netns.partition(self.root, f.targets)
            self.partitioned = True

    def end(self, f: Fault) -> None:
        i = f.targets[0]
        if f.kind == "kill":
            start_node(self.root, i)
            self.killed.discard(i)
            self.load.dead.discard(i)
        elif f.kind == "pause":
            pid, _ = self._pid(i)
            os.kill(pid, signal.SIGCONT)
            self.paused.discard(i)
        else:
            netns.heal(self.root)
            self.partitioned = False

    def restore(self) -> None:
        for i in sorted(self.paused):
            try:
                os.kill(self._pid(i)[0], signal.SIGCONT)
            except OSError:
                pass
        self.paused.clear()
        if self.partitioned:
            netns.heal(self.root)
            self.partitioned = False
        for i in sorted(self.killed):
            start_node(self.root, i)
            self.load.dead.discard(i)
        self.killed.clear()


def _reap(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False


# ---------------------------------------------------------------------- checker


def node_view(root: Path, i: int, task_id: str) -> dict:
    batches, offset = {}, 0
    while True:
        r = rpc(root, i, "annotations_list", {"task_id": task_id, "limit": 10_000, "offset": offset}, timeout=10)
        batches.update((b["batch_id"], (b["annotator"], tuple(map(tuple, b["labels"])))) for b in r["batches"])
        offset += len(r["batches"])
        if offset >= r["total"] or not r["batches"]:
            break
    c = rpc(root, i, "consensus_get", {"task_id": task_id, "items": False}, timeout=10)
    return {"ids": set(batches), "batches": batches, "set_root": c["set_root"], "result_root": c["result_root"],
            "status": c["status"], "certified_batches": c["batches"] if c["status"] == "certified" else None}


def pinned_ids(root: Path, i: int, task_id: str) -> set[str] | None:
    """The ids the task's certificate pins, from node ``i`` (None if it knows none)."""
    out, offset = set(), 0
    while offset is not None:
        r = rpc(root, i, "certificate_get", {"task_id": task_id, "ids": True, "limit": 10_000, "offset": offset},
                timeout=10)["pinned"]
        if r is None:
            return None
        out |= set(r["ids"])
        offset = r["next_offset"]
    return out


def kept_ids(batches: dict) -> set[str]:
    """protocol.keep's rule over a node's batches {id hex: (annotator hex, labels)}."""
    from protocol.keep import compute_kept_batches
    from protocol.messages import AnnotationBatch

    rows = [(bytes.fromhex(i), AnnotationBatch(annotator=bytes.fromhex(a), task_id=bytes(32), created_at=0,
                                               labels=labels)) for i, (a, labels) in batches.items()]
    return {i.hex() for i in compute_kept_batches(rows)}


@dataclass
class Report:
    nodes: int
    seed: int
    duration_s: float
    network: str
    partitions_enabled: bool
    faults: list = field(default_factory=list)
    submitted: int = 0
    acked: int = 0
    in_doubt: int = 0
    in_doubt_stored: int = 0
    refused: int = 0
    not_sent: int = 0
    invalid_submitted: int = 0
    invalid_acked: int = 0
    lost: int = 0
    phantom: int = 0
    invalid_stored: int = 0
    over_bound: int = 0             # batches of the over-bound annotators submitted
    over_bound_acked: int = 0
    redundant: int = 0              # answered "redundant" (valid, not stored)
    dropped_by_keep_rule: int = 0   # acknowledged, then dropped: their annotator repeated them with smaller ids
    labels_lost: int = 0            # acknowledged labels held nowhere (their item no equivocation either)
    held_redundant: int = 0         # batches a node holds that the keep rule does not keep (nor the certificate)
    batches_by_node: list = field(default_factory=list)
    converged: bool = False
    converged_after_s: float | None = None
    certified: bool = False
    certified_after_s: float | None = None
    stored_outside_certified_set: int | None = None
    set_root: str = ""
    result_root: str = ""
    task_id: str = ""
    transfers_submitted: int = 0
    transfers_acked: int = 0
    transfers_refused: int = 0
    double_spend_attempts: int = 0
    transfers_applied: int = 0
    ledger_samples: int = 0
    ledger_converged: bool = False
    supply: int = 0
    violations: list = field(default_factory=list)
    lost_examples: list = field(default_factory=list)
    phantom_examples: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def run(root: Path, *, duration: float, seed: int, rate: float, settle: float, over_bound: int = OVER_BOUND,
        out=print) -> Report:
    """One chaos run on the devnet in ``root`` (see the module docstring); the report."""
    n, network_id, rep = _check_devnet(root, duration, seed, rate)
    if not 0 <= over_bound <= 100_000:
        raise DevnetError("--over-bound must be 0..100000 batches")
    task_id, deadline_ms, subs, schedule = _post_task_and_load(root, n, network_id, rep, duration, seed, rate,
                                                               over_bound, out)
    ledger = LedgerLoad(root, n, network_id, seed, rate, duration, rep)
    last_fault_end = _run_faults(root, n, subs, schedule, duration, len(subs) / duration, seed, out, ledger)
    acked, doubt, invalid = _classify_load(rep, subs, out)
    ledger.classify(rep, out)
    views, errors = _converge(root, n, task_id, deadline_ms, subs, rep, settle, last_fault_end, out)
    ledger.check(rep, settle)
    _check_sets(rep, n, views, errors, subs, acked, doubt, invalid, settle)
    if rep.certified:
        _check_keep_rule(rep, root, task_id, views)
    return rep


def _check_devnet(root: Path, duration: float, seed: int, rate: float) -> tuple[int, bytes, Report]:
    """(nodes, network id, an empty report) of a running devnet fit for chaos; DevnetError if not."""
    meta_path = root / "devnet.json"
    if not meta_path.exists():
        raise DevnetError(f"no devnet in {root}: start one with `scripts/devnet up` (add --netns for partitions)")
    meta = json.loads(meta_path.read_text())
    n = meta["nodes"]
    if n < 2:
        raise DevnetError("chaos needs a devnet of at least 2 nodes")
    pids = read_pids(root)
    dead = [i for i in range(n) if str(i) not in pids or not is_alive(pids[str(i)]["pid"], pids[str(i)]["data_dir"])]
    if dead:
        raise DevnetError(f"nodes {dead} are not running; restart the devnet (`scripts/devnet down && up`)")
    if duration < 5 or duration > 3600:
        raise DevnetError("--duration must be 5..3600 seconds")
    if not 0.1 <= rate <= 500:
        raise DevnetError("--rate must be 0.1..500 batches per second")
    has_netns = netns.load(root) is not None
    rep = Report(nodes=n, seed=seed, duration_s=duration, partitions_enabled=has_netns,
                 network="network namespaces" if has_netns else "loopback (no partitions: `up --netns` enables them)")
    network_id = bytes.fromhex(meta["network_id"])

    return n, network_id, rep


def _post_task_and_load(root: Path, n: int, network_id: bytes, rep: Report, duration: float, seed: int,
                        rate: float, over_bound: int, out) -> tuple[str, int, list[Submission], list[Fault]]:
    """Post the chaos task (deadline after the fault window), sign the load and plan the
    faults: (task id, deadline ms, submissions, schedule)."""
    poll(lambda: all(rpc(root, i, "node_info", timeout=5)["peer_count"] >= 1 for i in range(n)), 60,
          "every node to have a peer")
    deadline_s = duration + DEADLINE_MARGIN_S
    t = rpc(root, 0, "task_post", {"account": "requester", "title": f"chaos run, seed {seed}", "labels": LABELS,
                                    "items": [f"chaos item {i}" for i in range(ITEMS + over_bound)],
                                    "duration_s": deadline_s,
                                    "redundancy": 5, "bounty": 100_000, "nonce": seed})
    task_id = t["task_id"]
    rep.task_id = task_id
    deadline_ms = t["deadline_ms"]
    poll(lambda: all(any(x["task_id"] == task_id for x in rpc(root, i, "tasks_list", timeout=5)["tasks"])
                      for i in range(n)), 30, "the chaos task to reach every node")
    subs = sign_batches(seed, network_id, bytes.fromhex(task_id), max(1, int(rate * duration)))
    extra = sign_over_bound(seed, network_id, bytes.fromhex(task_id), over_bound, ITEMS)
    if extra:  # spread through the load, in a seeded order
        at = set(random.Random(seed * 31 + 7).sample(range(len(subs) + len(extra)), len(extra)))
        it_load, it_extra = iter(subs), iter(extra)
        subs = [next(it_extra) if k in at else next(it_load) for k in range(len(subs) + len(extra))]
    rep.over_bound = len(extra)
    schedule = make_schedule(seed, duration, n, rep.partitions_enabled)
    rep.faults = schedule
    out(f"chaos: {n} nodes, seed {seed}, {duration:.0f} s of faults on {rep.network}; "
        f"task {task_id[:16]}…, {len(subs)} pre-signed batches at {len(subs) / duration:.0f}/s"
        + (f" ({len(extra)} of them by the over-bound annotators)" if extra else ""))
    for f in schedule:
        out(f"  planned: {f.describe(n)}")
    return task_id, deadline_ms, subs, schedule


def _run_faults(root: Path, n: int, subs: list[Submission], schedule: list[Fault], duration: float, rate: float,
                seed: int, out, ledger: LedgerLoad) -> float:
    """The faults of ``schedule`` under the load (labels and transfers), always undone at
    the end; the monotonic time the last fault ended."""
    load = LoadGenerator(root, n, subs, rate, seed)
    runner = FaultRunner(root, n, load, out)
    t0 = time.monotonic()
    last_fault_end = t0
    load.start()
    ledger.start(load)
    try:
        for f in schedule:
            _sleep_until(t0 + f.at)
            f.started = round(time.monotonic() - t0, 2)
            runner.begin(f)
            out(f"  {f.started:6.1f} s  {f.describe(n).split(' at ')[0]}")
            _sleep_until(t0 + f.at + f.duration)
            runner.end(f)
            last_fault_end = time.monotonic()
            f.ended = round(last_fault_end - t0, 2)
            out(f"  {f.ended:6.1f} s  end of {f.kind}")
        _sleep_until(t0 + duration)
    finally:
        runner.restore()
        load.join()
        ledger.join()
    if not schedule:
        last_fault_end = time.monotonic()
    return last_fault_end


def _classify_load(rep: Report, subs: list[Submission], out) -> tuple[set, set, set]:
    """Count the submissions by outcome into ``rep``; (acknowledged, in doubt, invalid) batch ids."""
    acked = {s.batch_id for s in subs if s.outcome == "acked"}
    doubt = {s.batch_id for s in subs if s.outcome == "in_doubt"}
    rep.redundant = sum(1 for s in subs if s.outcome == "redundant")
    rep.over_bound_acked = sum(1 for s in subs if s.outcome == "acked" and s.role != "load")
    invalid = {s.batch_id for s in subs if not s.valid}
    rep.submitted = sum(1 for s in subs if s.outcome != "pending")
    rep.acked, rep.in_doubt = len(acked), len(doubt)
    rep.refused = sum(1 for s in subs if s.outcome == "refused")
    rep.not_sent = sum(1 for s in subs if s.outcome == "not_sent")
    rep.invalid_submitted = sum(1 for s in subs if not s.valid and s.outcome != "pending")
    rep.invalid_acked = len(acked & invalid)
    refused_valid = [s for s in subs if s.valid and s.outcome == "refused"]
    if refused_valid:
        out(f"  note: {len(refused_valid)} valid batches refused, e.g. {refused_valid[0].detail}")
    out(f"load: {rep.submitted} submitted, {rep.acked} acknowledged, {rep.in_doubt} in doubt, "
        f"{rep.refused} refused ({rep.invalid_submitted} invalid), {rep.redundant} redundant, {rep.not_sent} not sent")
    return acked, doubt, invalid


def acked_missing(subs: list[Submission], view: dict) -> tuple[set, set]:
    """The acknowledged batches a node does not hold: (missing, dropped by the keep rule --
    batches that the node's set makes redundant: for each of their labels, a batch of the
    same annotator with a smaller id carries it, or two smaller labels of that item are
    held; PROTOCOL.md 6.3)."""
    from protocol.messages import decode_message
    from protocol.params import DEFAULT_PARAMS

    missing = [x for x in subs if x.outcome == "acked" and x.batch_id not in view["ids"]]
    if not missing:
        return set(), set()
    carrier: dict[tuple, str] = {}   # (annotator, item, label) -> smallest id holding it
    labels: dict[tuple, set] = {}    # (annotator, item) -> labels held
    for bid, (a, pairs) in view["batches"].items():
        for item, label in pairs:
            k = (a, item, label)
            if k not in carrier or bid < carrier[k]:
                carrier[k] = bid
            labels.setdefault((a, item), set()).add(label)
    legit = set()
    for x in missing:
        body = decode_message(bytes.fromhex(x.raw), DEFAULT_PARAMS).body
        a = body.annotator.hex()
        if all((carrier.get((a, i, l)) or x.batch_id) < x.batch_id
               or sum(1 for m in labels.get((a, i), ()) if m < l) >= 2 for i, l in body.labels):
            legit.add(x.batch_id)
    return {x.batch_id for x in missing} - legit, legit


def _converge(root: Path, n: int, task_id: str, deadline_ms: int, subs: list[Submission], rep: Report,
              settle: float, last_fault_end: float, out) -> tuple[dict, dict]:
    """Poll every node until they hold the same set (every acknowledged batch in it, or
    dropped by the keep rule) and roots, then the same certificate, within ``settle`` s;
    (last view of each node, last error of each unreachable node)."""
    views: dict[int, dict] = {}
    errors: dict[int, str] = {}
    next_progress = time.monotonic() + 5.0
    settle_end = time.monotonic() + settle
    while time.monotonic() < settle_end:
        for i in range(n):
            try:
                views[i] = node_view(root, i, task_id)
            except Exception as e:  # restarting, busy: not converged yet
                views.pop(i, None)
                errors[i] = f"{type(e).__name__}: {e}"
        nodes_ok = [views.get(i) for i in range(n)]
        if time.monotonic() >= next_progress:
            next_progress = time.monotonic() + 5.0
            out("  waiting: " + "  ".join(
                f"node {i}: " + (f"{len(v['ids'])} batches ({len(acked_missing(subs, v)[0])} acked missing), "
                                 f"{v['status']}" if v else f"unreachable ({errors.get(i, '?')[:60]})")
                for i, v in enumerate(nodes_ok)))
        if all(nodes_ok):
            same_set = (len({frozenset(v["ids"]) for v in nodes_ok}) == 1
                        and not acked_missing(subs, nodes_ok[0])[0])
            same_roots = len({(v["set_root"], v["result_root"]) for v in nodes_ok}) == 1
            if same_set and same_roots and not rep.converged:
                rep.converged = True
                rep.converged_after_s = round(time.monotonic() - last_fault_end, 1)
                out(f"converged: {n} nodes hold the same {len(nodes_ok[0]['ids'])} batches and roots, "
                    f"{rep.converged_after_s} s after the last fault")
            # past the deadline the validators certify; until then keep polling
            certified = all(v["status"] == "certified" for v in nodes_ok) and same_roots
            if rep.converged and certified and time.time() * 1000 > deadline_ms:
                rep.certified = True
                rep.certified_after_s = round(time.monotonic() - last_fault_end, 1)
                break
        time.sleep(0.5)
    return views, errors


def _check_sets(rep: Report, n: int, views: dict, errors: dict, subs: list[Submission], acked: set, doubt: set,
                invalid: set, settle: float) -> None:
    """The set checker, on the last view of every node: lost, phantom, violations."""
    missing: set[str] = set()
    dropped: set[str] = set()
    phantom: set[str] = set()
    for i in range(n):
        v = views.get(i)
        if v is None:
            rep.violations.append(f"node {i} did not answer at the end ({errors.get(i, '?')})")
            continue
        lost_here, dropped_here = acked_missing(subs, v)
        missing |= lost_here
        dropped |= dropped_here
        phantom |= v["ids"] - acked - (doubt - invalid)
    rep.batches_by_node = [len(views[i]["ids"]) if views.get(i) else None for i in range(n)]
    rep.dropped_by_keep_rule = len(dropped)
    if views.get(0):  # every acknowledged label is held, or its item shows the annotator's equivocation
        from protocol.messages import decode_message
        from protocol.params import DEFAULT_PARAMS

        held: dict[tuple, set] = {}
        for a, labels in views[0]["batches"].values():
            for item, label in labels:
                held.setdefault((a, item), set()).add(label)
        for x in subs:
            if x.outcome == "acked":
                body = decode_message(bytes.fromhex(x.raw), DEFAULT_PARAMS).body
                got = [held.get((body.annotator.hex(), item), set()) for item, _ in body.labels]
                rep.labels_lost += sum(1 for (_, label), g in zip(body.labels, got) if label not in g and len(g) < 2)
    stored_anywhere = set().union(*(v["ids"] for v in views.values())) if views else set()
    rep.lost, rep.phantom = len(missing), len(phantom)
    rep.lost_examples, rep.phantom_examples = sorted(missing)[:5], sorted(phantom)[:5]
    rep.invalid_stored = len(stored_anywhere & invalid)
    rep.in_doubt_stored = len(stored_anywhere & doubt)
    if views.get(0):
        rep.set_root, rep.result_root = views[0]["set_root"], views[0]["result_root"]
    if rep.certified and views.get(0):
        rep.stored_outside_certified_set = len(views[0]["ids"]) - views[0]["certified_batches"]
    if rep.lost:
        rep.violations.append(f"lost {rep.lost} acknowledged batches")
    if rep.labels_lost:
        rep.violations.append(f"{rep.labels_lost} acknowledged labels are held by no batch")
    if rep.phantom:
        rep.violations.append(f"{rep.phantom} phantom batches (never acknowledged nor in doubt)")
    if rep.invalid_acked:
        rep.violations.append(f"{rep.invalid_acked} invalid batches were acknowledged")
    if not rep.converged:
        rep.violations.append(f"nodes did not converge within {settle:.0f} s after the last fault")
    elif not rep.certified:
        rep.violations.append(f"nodes did not all report the task certified within {settle:.0f} s after the last fault")


def _check_keep_rule(rep: Report, root: Path, task_id: str, views: dict) -> None:
    """Once certified, every node holds exactly what the keep rule keeps, plus what the
    certificate pins (PROTOCOL.md 6.3)."""
    pinned = pinned_ids(root, 0, task_id) or set()
    for i, v in sorted(views.items()):
        extra = v["ids"] - kept_ids(v["batches"]) - pinned
        rep.held_redundant += len(extra)
        if extra:
            rep.violations.append(f"node {i} holds {len(extra)} batches the keep rule drops and no certificate pins")


def _sleep_until(t: float) -> None:
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


def print_report(r: Report) -> None:
    print()
    print("=" * 72)
    print(f"labelmesh chaos — {r.nodes} nodes, seed {r.seed}, {r.duration_s:.0f} s of faults, {r.network}")
    print("=" * 72)
    kinds = {}
    for f in r.faults:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    print("faults       " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())))
    print(f"load         {r.submitted} submitted: {r.acked} acknowledged, {r.in_doubt} in doubt "
          f"({r.in_doubt_stored} of them stored), {r.refused} refused ({r.invalid_submitted} invalid, "
          f"{r.invalid_acked} of those acknowledged), {r.not_sent} not sent")
    print(f"lost         {r.lost}" + (f"   e.g. {', '.join(x[:16] for x in r.lost_examples)}" if r.lost else ""))
    if r.over_bound:
        print(f"over-bound   {r.over_bound} batches of 2 annotators over the old cap ({r.over_bound_acked} acknowledged, "
              f"{r.redundant} answered redundant); {r.dropped_by_keep_rule} acknowledged ones dropped by the keep rule "
              f"(their annotator repeated them with smaller ids), {r.labels_lost} acknowledged labels lost, "
              f"{r.held_redundant} redundant batches held")
    print(f"phantom      {r.phantom}" + (f"   e.g. {', '.join(x[:16] for x in r.phantom_examples)}" if r.phantom else "")
          + f"   (invalid stored: {r.invalid_stored})")
    conv = f"{r.converged_after_s} s after the last fault (target 30 s)" if r.converged else "NO"
    print(f"converged    {conv}")
    cert = f"{r.certified_after_s} s after the last fault (deadline + grace included)" if r.certified else "NO"
    print(f"certified    {cert}")
    if r.stored_outside_certified_set:
        print(f"             note: {r.stored_outside_certified_set} stored batches reached the validators after "
              f"their snapshot: stored everywhere but not in the certified set")
    print(f"transfers    {r.transfers_submitted} submitted ({r.double_spend_attempts} double-spend attempts): "
          f"{r.transfers_acked} acknowledged, {r.transfers_refused} refused, {r.transfers_applied} applied; "
          f"ledgers identical on all nodes: {'yes' if r.ledger_converged else 'NO'}; supply invariant held in "
          f"{r.ledger_samples} samples of live nodes")
    print(f"roots        set {r.set_root[:16]}…  result {r.result_root[:16]}…  identical on all nodes: "
          f"{'yes' if r.converged else 'no'}")
    print(f"RESULT       {'PASS' if r.ok else 'FAIL: ' + '; '.join(r.violations)}")


def main(root: Path, args) -> int:
    try:
        rep = run(root, duration=args.duration, seed=args.seed, rate=args.rate, settle=args.settle,
                  over_bound=args.over_bound,
                  out=(lambda s: print(s, file=sys.stderr, flush=True)) if args.json else
                  (lambda s: print(s, flush=True)))
    except KeyboardInterrupt:
        print("chaos: interrupted (faults undone)", file=sys.stderr)
        return 130
    except (DevnetError, netns.NetnsError) as e:
        print(f"chaos: {e}", file=sys.stderr)
        return 2
    if args.json:
        d = asdict(rep)
        d["ok"] = rep.ok
        print(json.dumps(d))
    else:
        print_report(rep)
    return 0 if rep.ok else 1

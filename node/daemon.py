"""The labelmesh daemon: one Node wires the store, the network and the RPC server.

How it works
------------
Every message, whatever its source (RPC, gossip, sync), goes through
``Node.ingest``: decode -> dedupe by content id -> validate_basic -> verify the
signature -> validate against local state -> durable group-committed write ->
in-memory indexes updated. Only then is it acknowledged (RPC) or forwarded
(gossip validator returns ACCEPT). Messages that name a task we have not seen
yet are IGNOREd but parked in a bounded orphan pool and re-ingested when the
task arrives (anti-entropy sync repairs anything else gossip loses).

Results (consensus labels, rewards) are never stored as truth: they are a pure
function of the stored set, computed on demand by ``protocol.tally`` and
cached by (task id, set root).

Structured concurrency: ``Node.run`` opens one nursery; the store writer, the
network, the publisher and the RPC server are started with ``nursery.start``
and are ready when it returns.
"""
from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import trio
from sortedcontainers import SortedList

from protocol.genesis import Genesis
from protocol.messages import (
    KIND_ATTESTATION, KIND_BATCH, KIND_GOLD, KIND_NAMES, KIND_TASK, AnnotationBatch, GoldReveal,
    ACCEPT, Outcome, SignedMessage, TaskAnnouncement, Verdict, decode_message, ignore, reject,
    validate_basic, validate_in_context,
)
from protocol.bundle import group_envelopes, payload_of, split_payload
from protocol.errors import DecodeError

if TYPE_CHECKING:  # protocol.tally loads numpy (~11 MB RSS): imported when a result is first computed
    from protocol.tally import TaskResult

from .store import Record, Store, StoreError, StoreWriter
from .verifier import Verifier, verify_all

log = logging.getLogger("labelmesh.node")

MAX_ORPHANS = 20_000
# Sources whose batches are stored even past the per-annotator cap: our own messages and
# batches that a validator's attestation or a certificate pins (fetched by the finality
# service); everything else (gossip, sync, rpc) is capped.
UNCAPPED_SOURCES = frozenset({"local", "pinned"})
ARRIVALS_KEPT = 200_000  # stored-at times remembered for messages_arrival (RPC)
#: Ids of valid messages this node declined to store under its storage policy (the
#: per-annotator batch cap, FinalityService.storage_verdict), most recent kept: sync does
#: not fetch them again from peers that hold them (32 bytes each, ~20 MB at most).
DECLINED_KEPT = 262_144
#: Task results kept in memory (ResultCache), counted in items: a result holds 4 tuples of
#: Python ints per item (~90 bytes), so about 100 MB at most.  It used to be 1,024 results
#: of any size (up to 1,024 x 100,000 items), cleared all at once when full.
RESULT_CACHE_ITEMS = 1_000_000
#: Node.prepare_result reads and aggregates a task's set in a worker thread from this many
#: messages on (with the usual 100 labels per batch, ~0.1 s of work with gold; below it the
#: thread hop costs more than it saves)
RESULT_THREAD_MIN_MESSAGES = 200
VERIFY_OFFLOAD_MIN = 16  # signatures verified off the event loop (node/verifier.py) from this many per group on


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def topic_for(network_id: bytes, kind: int) -> str:
    return f"/labelmesh/{network_id.hex()[:16]}/{KIND_NAMES[kind]}/1"


class TaskIndex:
    """Per task: the sorted ids of the messages we hold and their fingerprint sum
    (what anti-entropy sync compares). Kept in memory, rebuilt from the store at start."""

    def __init__(self):
        self.task_ids = SortedList()
        self.ids: dict[bytes, SortedList] = {}
        self.sums: dict[bytes, int] = {}

    def add_task(self, task_id: bytes) -> None:
        if task_id not in self.ids:
            self.task_ids.add(task_id)
            self.ids[task_id] = SortedList()
            self.sums[task_id] = 0

    def add(self, task_id: bytes, mid: bytes) -> None:
        lst = self.ids.get(task_id)
        if lst is None:
            self.add_task(task_id)
            lst = self.ids[task_id]
        if mid in lst:
            return
        lst.add(mid)
        self.sums[task_id] = (self.sums[task_id] + int.from_bytes(mid, "big")) % (1 << 256)

    def fingerprint(self, task_id: bytes) -> tuple[int, bytes]:
        from protocol.sync import fingerprint_from_sum
        lst = self.ids.get(task_id)
        if lst is None:
            return 0, fingerprint_from_sum(0, 0)
        return len(lst), fingerprint_from_sum(self.sums[task_id], len(lst))


@dataclass
class Counters:
    accepted: int = 0
    rejected: int = 0
    ignored: int = 0
    duplicates: int = 0
    published: int = 0  # gossip messages published (a bundle counts once)
    published_envelopes: int = 0  # accepted messages gossiped (each envelope of a bundle counts)
    over_batch_cap: int = 0  # batches IGNOREd by the per-annotator, per-task cap
    votes_not_stored: int = 0  # attestations IGNOREd by the finality storage bound (storage_verdict)
    rate_limited: int = 0  # gossip messages IGNOREd (or REJECTed as abuse) by node/ratelimit.py
    publish_dropped: int = 0  # accepted messages not gossiped because the publish queue was full


class ResultCache:
    """Least-recently-used task results by (set root, reputation snapshot), bounded by the
    total number of items they hold (the newest result is kept whatever its size).  Used
    on the event-loop thread only."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._entries: OrderedDict[bytes, TaskResult] = OrderedDict()
        self._items = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> TaskResult | None:
        res = self._entries.get(key)
        if res is not None:
            self._entries.move_to_end(key)
        return res

    def put(self, key: bytes, res: TaskResult) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._items -= len(old.label) + 1
        self._entries[key] = res
        self._items += len(res.label) + 1
        while self._items > self.max_items and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._items -= len(evicted.label) + 1

    def clear(self) -> None:
        self._entries.clear()
        self._items = 0


class Node:
    """A labelmesh node. ``p2p`` is any object with the P2PNode interface
    (real libp2p in production, an in-memory fake in tests)."""

    def __init__(self, data_dir: Path, genesis: Genesis, *, p2p_factory: Callable | None,
                 keystore=None, clock: Callable[[], int] = wall_clock_ms,
                 rpc_socket: Path | None = None, validator_account: str = "", sync_interval_s: float = 3.0,
                 validator_key=None, finality_tick_s: float = 0.25, metrics_listen: str = "",
                 rate_limits=None, verify_processes: int = 0):
        self.data_dir = Path(data_dir)
        self.genesis = genesis
        self.params = genesis.params
        self.network_id = genesis.network_id
        self.clock = clock
        self.keystore = keystore
        self.rpc_socket = rpc_socket
        self.validator_account = validator_account
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = Store(self.data_dir / "store")
        self.writer = StoreWriter(self.store)
        self.counters = Counters()
        from .metrics import NodeMetrics
        self.metrics = NodeMetrics(self)  # per-node registry; served only if metrics_listen is set
        self.metrics_listen = metrics_listen
        self.writer.on_commit = self.metrics.observe_commit
        self.tasks: dict[bytes, TaskAnnouncement] = {}
        self.task_index = TaskIndex()
        self._orphans: OrderedDict[bytes, tuple[bytes, str]] = OrderedDict()  # msg id -> (raw, source)
        self._inflight: dict[bytes, trio.Event] = {}
        from .ratelimit import GossipRateLimiter
        self.ratelimit = GossipRateLimiter(rate_limits)  # rate_limits: a ratelimit.RateLimitConfig or None
        # big groups' signatures: in helper processes (labelmesh run), or threads if 0 (in-process nodes)
        self.verifier = Verifier(self.network_id, verify_processes)
        self._batch_counts: dict[bytes, Counter] = {}  # task -> annotator -> batches stored (for the cap)
        self._declined: OrderedDict[bytes, None] = OrderedDict()  # see DECLINED_KEPT
        self._result_cache = ResultCache(RESULT_CACHE_ITEMS)
        #: prepare_result aggregates sets of at least this many messages in a worker thread
        self.result_thread_min_messages = RESULT_THREAD_MIN_MESSAGES
        self._result_limiter = trio.CapacityLimiter(1)
        self._gold_lock = trio.Lock()  # remember_gold / forget_gold rewrite one meta blob
        self.arrival_ms: dict[bytes, int] = {}  # msg id -> clock() when stored, the newest ARRIVALS_KEPT
        self._outcomes: dict = {}  # task id -> TaskOutcome of a certified task (task_outcome)
        self._rewards: dict = {}  # task id -> rewards of a certified task (certified_rewards)
        self._earned: dict[bytes, dict] = {}  # snapshot digest -> earned reputation (reputation_snapshot)
        self.topics = {k: topic_for(self.network_id, k) for k in KIND_NAMES}
        self._kind_of_topic = {t: k for k, t in self.topics.items()}
        self.p2p = p2p_factory(self) if p2p_factory else None
        from .sync import SyncService
        self.sync = SyncService(self, interval_s=sync_interval_s) if self.p2p is not None else None
        from .finality import FinalityService
        if validator_key is None and validator_account and keystore is not None:
            validator_key = keystore.signing_key(validator_account)
        self.finality = FinalityService(self, validator_key, tick_s=finality_tick_s)
        from .blobs import BlobService
        self.blobs = BlobService(self)
        self._publish_send, self._publish_recv = trio.open_memory_channel(4096)
        self.started_at = clock()
        self._load_tasks()

    # ------------------------------------------------------------------ lifecycle

    def _load_tasks(self) -> None:
        for raw in self.store.get_many(self.store.kind_message_ids(KIND_TASK)):
            msg = decode_message(raw, self.params)
            tid = msg.compute_id(self.network_id)
            self.tasks[tid] = msg.body
            self.task_index.add_task(tid)
            for mid in self.store.task_message_ids(tid):
                self.task_index.add(tid, mid)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from .rpc import RpcServer  # local import: rpc imports api which imports this module

        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.writer.run)
                if self.p2p is not None:
                    for t in self.topics.values():
                        self.p2p.subscribe(t)
                    await nursery.start(self.p2p.run)
                    nursery.start_soon(self._publisher)
                    await nursery.start(self.sync.run)
                await nursery.start(self.blobs.run)
                await nursery.start(self.finality.run)
                if self.metrics_listen:
                    await nursery.start(self.metrics.serve, self.metrics_listen)
                if self.rpc_socket is not None:
                    self.rpc = RpcServer(self, self.rpc_socket)
                    await nursery.start(self.rpc.run)
                log.info("node ready", extra={"peer_id": self.peer_id, "network_id": self.network_id.hex(),
                                              "tasks": len(self.tasks), "messages": self.store.count()})
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await self.verifier.aclose()  # stop the signature helper processes, if any
            self.store.close()

    @property
    def peer_id(self) -> str:
        return self.p2p.peer_id if self.p2p is not None else ""

    # ------------------------------------------------------------------ protocol.Context

    def get_task(self, task_id: bytes) -> TaskAnnouncement | None:
        return self.tasks.get(task_id)

    def validator_weight(self, account: bytes) -> int:
        return self.genesis.validator_weight(account)

    # ------------------------------------------------------------------ ingest

    async def ingest(self, raw: bytes, source: str, *, publish: bool = False) -> tuple[Verdict, bytes | None]:
        """Run the whole pipeline on one message; see ``ingest_many``."""
        return (await self.ingest_many([raw], source, publish=publish))[0]

    async def ingest_many(self, raws: list[bytes], source: str, *, publish: bool = False,
                          decoded: list[SignedMessage] | None = None) -> list[tuple[Verdict, bytes | None]]:
        """Run the pipeline on many messages and store the valid ones in one group commit.

        Returns one (verdict, message id or None) per input, in input order.
        ACCEPT means the message is on disk now. A message already stored (or
        listed twice) is IGNOREd as "duplicate". Task announcements are stored
        before the messages that refer to them, so a sync chunk may hold both.
        ``decoded``: the caller's ``decode_message`` of each raw (same order), to
        skip decoding twice.
        """
        results: list = [None] * len(raws)
        tasks, others = [], []
        for k, raw in enumerate(raws):
            try:
                msg = decoded[k] if decoded is not None else decode_message(raw, self.params)
            except DecodeError as e:
                self.counters.rejected += 1
                results[k] = (reject(f"decode: {e}"), None)
                continue
            (tasks if msg.kind == KIND_TASK else others).append((k, msg.compute_id(self.network_id), msg))
        for group in (tasks, others):
            if group:
                await self._ingest_group(group, source, publish, results)
        return results

    async def _ingest_group(self, group, source: str, publish: bool, results: list) -> None:
        now = self.clock()
        records, accepted, seen = [], [], set()
        checked = []  # (k, mid, msg, validate_basic verdict) of messages not stored yet
        pending_batches: Counter = Counter()  # (task, annotator) -> batches admitted in this group
        pending_votes: dict = {}  # (task, validator, round, phase) -> values admitted in this group
        for k, mid, msg in group:
            ev = self._inflight.get(mid)
            if ev is not None:  # being written by another caller right now
                await ev.wait()
        stored = self.store.has_many([mid for _, mid, _ in group])  # one read txn for the group
        for (k, mid, msg), dup in zip(group, stored):
            if dup:
                self.counters.duplicates += 1
                results[k] = (ignore("duplicate"), mid)
                continue
            if mid in self._declined and source in ("gossip", "sync"):
                # the same bytes were valid and left unstored by the storage policy, whose
                # verdicts never change: no need to verify them again (an RPC client is
                # told the policy's own reason again)
                self.counters.ignored += 1
                results[k] = (ignore("not stored: declined before by the storage policy"), mid)
                continue
            checked.append((k, mid, msg, validate_basic(msg, self.params)))
        # Verify signatures in one go; a big group off the event loop (a helper process, see
        # node/verifier.py) while the event loop decodes the next request (two cores busy).
        # Gossip bundles are verified in a thread, never in a helper: there latency is what
        # counts, and on a small machine running many nodes, helper start-ups and pipe hops
        # made whole bundles late (10 nodes at 100 batches/s: p99 ~0.6-0.76 s with helpers,
        # 0.24-0.43 s without; BENCHMARKS.md). Bulk paths (RPC, sync) use the helpers.
        to_verify = [msg for _, _, msg, v in checked if v.ok]
        if len(to_verify) >= VERIFY_OFFLOAD_MIN and source == "gossip":
            sig_ok = iter(await trio.to_thread.run_sync(verify_all, to_verify, self.network_id))
        elif len(to_verify) >= VERIFY_OFFLOAD_MIN:
            sig_ok = iter(await self.verifier.verify(to_verify))
        else:
            sig_ok = iter(verify_all(to_verify, self.network_id))
        for k, mid, msg, v in checked:
            if mid in seen:
                self.counters.duplicates += 1
                results[k] = (ignore("duplicate"), mid)
                if v.ok:
                    next(sig_ok)
                continue
            if v.ok and not next(sig_ok):
                v = reject("bad signature")
            if v.ok:
                v = validate_in_context(msg, self, now, self.params)
            if v.ok and msg.kind == KIND_BATCH and source not in UNCAPPED_SOURCES:
                v = self._check_batch_cap(msg.body, pending_batches)
                if not v.ok:
                    self._decline(mid)
            if v.ok and msg.kind == KIND_ATTESTATION and hasattr(self, "finality"):
                v = self.finality.storage_verdict(msg, pending_votes)
                if not v.ok:
                    self.counters.votes_not_stored += 1
                    self._decline(mid)
            if not v.ok:
                if v.outcome is Outcome.IGNORE and v.reason.startswith("unknown task"):
                    self._park_orphan(mid, msg.raw, source)
                self._count(v)
                results[k] = (v, mid)
                continue
            seen.add(mid)
            task_id = mid if msg.kind == KIND_TASK else msg.body.task_id
            records.append(Record(msg_id=mid, kind=msg.kind, task_id=task_id, raw=msg.raw))
            accepted.append((k, mid, msg))
        if not records:
            return
        written = trio.Event()  # one for the group: set when its commit is done (or failed)
        for _, mid, _ in accepted:
            self._inflight[mid] = written
        try:
            flags = await self.writer.put(records)
        finally:
            for _, mid, _ in accepted:
                self._inflight.pop(mid, None)
            written.set()
        for (k, mid, msg), new in zip(accepted, flags):
            if not new:  # raced with another writer: already stored
                self.counters.duplicates += 1
                results[k] = (ignore("duplicate"), mid)
                continue
            self.counters.accepted += 1
            self._on_accepted(mid, msg)
            results[k] = (ACCEPT, mid)
            if publish and self.p2p is not None:
                # Never make an acknowledged write wait for gossip: the publisher is paced
                # (token bucket) far below what ingest accepts, and gossip is best effort
                # anyway. A full queue drops the publish; anti-entropy sync delivers it.
                try:
                    self._publish_send.send_nowait((self.topics[msg.kind], msg.raw))
                except trio.WouldBlock:
                    self.counters.publish_dropped += 1
        for k, mid, msg in accepted:
            if msg.kind == KIND_TASK:
                await self._adopt_orphans(mid)

    def _count(self, v: Verdict) -> None:
        if v.outcome is Outcome.REJECT:
            self.counters.rejected += 1
        elif v.outcome is Outcome.IGNORE:
            self.counters.ignored += 1

    def _on_accepted(self, mid: bytes, msg: SignedMessage) -> None:
        self.arrival_ms[mid] = self.clock()  # for messages_arrival (propagation measurements)
        if len(self.arrival_ms) > ARRIVALS_KEPT:
            del self.arrival_ms[next(iter(self.arrival_ms))]
        if msg.kind == KIND_TASK:
            self.tasks[mid] = msg.body
            self.task_index.add_task(mid)
            if hasattr(self, "blobs"):
                self.blobs.on_task(mid, msg.body)
        self.task_index.add(mid if msg.kind == KIND_TASK else msg.body.task_id, mid)
        if self.sync is not None:
            self.sync.touch(mid if msg.kind == KIND_TASK else msg.body.task_id)
        if msg.kind == KIND_BATCH:
            counts = self._batch_counts.get(msg.body.task_id)
            if counts is not None:
                counts[msg.body.annotator] += 1
        if msg.kind == KIND_ATTESTATION and hasattr(self, "finality"):
            self.finality.on_attestation(msg)
        log.debug("stored %s %s", KIND_NAMES[msg.kind], mid.hex()[:16])

    def _check_batch_cap(self, batch: AnnotationBatch, pending: Counter) -> Verdict:
        """IGNORE a batch past ``params.max_batches_per_annotator`` batches of its annotator
        for its task (a local storage bound, never a REJECT; see SECURITY.md for why this
        is safe with sync and finality). Admits it into ``pending`` otherwise."""
        counts = self._batch_counts.get(batch.task_id)
        if counts is None:  # first batch for this task since start: count what is stored
            counts = self._batch_counts[batch.task_id] = Counter(
                decode_message(raw, self.params).body.annotator
                for raw in self.store.task_messages(batch.task_id, KIND_BATCH))
        key = (batch.task_id, batch.annotator)
        cap = self.params.max_batches_per_annotator
        if counts[batch.annotator] + pending[key] >= cap:
            self.counters.over_batch_cap += 1
            return ignore(f"annotator already has {cap} batches for this task (the per-annotator cap); "
                          f"put more labels in each batch")
        pending[key] += 1
        return ACCEPT

    def _decline(self, mid: bytes) -> None:
        self._declined[mid] = None
        self._declined.move_to_end(mid)
        while len(self._declined) > DECLINED_KEPT:
            self._declined.popitem(last=False)

    def declined(self, mid: bytes) -> bool:
        """Whether this valid message was recently left unstored by the storage policy
        (sync skips it: asking peers for it again would only be declined again)."""
        return mid in self._declined

    def _park_orphan(self, mid: bytes, raw: bytes, source: str) -> None:
        if mid in self._orphans:
            return
        self._orphans[mid] = (raw, source)
        while len(self._orphans) > MAX_ORPHANS:
            self._orphans.popitem(last=False)

    async def _adopt_orphans(self, task_id: bytes) -> None:
        waiting = []
        for mid, (raw, source) in list(self._orphans.items()):
            try:
                m = decode_message(raw, self.params)
            except DecodeError:
                continue
            if getattr(m.body, "task_id", None) == task_id:
                waiting.append((mid, raw, source))
        for mid, raw, source in waiting:
            self._orphans.pop(mid, None)
            await self.ingest(raw, source)

    # ------------------------------------------------------------------ gossip

    async def gossip_validate(self, topic: str, data: bytes, from_peer: str, origin: str | None = None) -> Outcome:
        """Validator for every gossip message: ACCEPT forwards it, REJECT penalises
        the forwarder, IGNORE drops it quietly. ``origin``: the peer that published
        it (libp2p ``from``), if the transport knows it (enables the abuse rule of
        node/ratelimit.py). A message carries one envelope or a bundle of them
        (protocol/bundle.py); rate limits count envelopes, not messages.

        Order, cheapest first: forwarder's rate limit -> split the bundle and decode
        each envelope -> kind matches the topic (else REJECT: no smuggling across
        topics) -> duplicates (never penalised: honest relayers race) -> origin's and
        signers' rate limits -> the ingest pipeline (verify, validate, per-annotator
        cap, store), one group commit for the whole bundle.

        The message's outcome: REJECT if any envelope is invalid or the bundle is
        malformed; ACCEPT if every envelope is now stored (at least one of them new
        from this message), so forwarding it can never carry something we have not
        checked; IGNORE otherwise (all duplicates, or some envelope was only
        rate-limited, parked as an orphan or over a cap — what was valid is stored
        anyway, and sync brings the rest to our peers)."""
        if from_peer == self.peer_id:
            return Outcome.ACCEPT  # our own publish: already validated and stored
        now_s = trio.current_time()
        rl = self.ratelimit
        try:
            raws = split_payload(data, self.params)
        except DecodeError:
            self.counters.rejected += 1
            return Outcome.REJECT
        limited = rl.on_message(from_peer, origin, now_s, len(raws))
        if limited is not None:
            return self._rate_limited(limited)
        want = self._kind_of_topic.get(topic)
        fresh, fresh_msgs = [], []
        for raw in raws:
            try:
                msg = decode_message(raw, self.params)
            except DecodeError:
                self.counters.rejected += 1
                return Outcome.REJECT
            if msg.kind != want:
                self.counters.rejected += 1
                return Outcome.REJECT
            mid = msg.compute_id(self.network_id)
            if mid in self._inflight or self.store.has(mid):
                self.counters.duplicates += 1
                continue
            fresh.append(raw)
            fresh_msgs.append(msg)
        if not fresh:
            return Outcome.IGNORE
        limited = rl.on_new_message(from_peer, origin, now_s, len(fresh))
        if limited is not None:
            return self._rate_limited(limited)
        allowed, allowed_msgs = [], []
        for raw, msg in zip(fresh, fresh_msgs):
            if rl.account_allows(msg.body.signer, now_s):
                allowed.append(raw)
                allowed_msgs.append(msg)
            else:
                self._rate_limited("ignore")
        if not allowed:
            return Outcome.IGNORE
        try:
            verdicts = await self.ingest_many(allowed, "gossip", decoded=allowed_msgs)
        except StoreError as e:  # e.g. disk full: drop quietly, sync repairs once space is back
            log.warning("cannot store gossip message: %s", e)
            return Outcome.IGNORE
        outcome = Outcome.ACCEPT if len(allowed) == len(fresh) else Outcome.IGNORE
        new = 0
        for (v, _), msg in zip(verdicts, allowed_msgs):
            if v.ok or (v.outcome is Outcome.IGNORE and v.reason != "duplicate"):
                rl.on_account_used(msg.body.signer, now_s)  # verified and stored (or parked): it costs a token
            if v.outcome is Outcome.REJECT:
                return Outcome.REJECT
            if v.ok:
                new += 1
            elif v.reason != "duplicate":
                outcome = Outcome.IGNORE
        return outcome if new else Outcome.IGNORE

    def _rate_limited(self, what: str) -> Outcome:
        self.counters.rate_limited += 1
        if what == "reject":
            self.counters.rejected += 1
            return Outcome.REJECT
        self.counters.ignored += 1
        return Outcome.IGNORE

    async def _publisher(self) -> None:
        """Gossip what local clients submitted. Each round takes everything queued
        and publishes it per topic, several envelopes as one bundle (protocol/bundle.py):
        under light load a message leaves alone and at once; under heavy load each
        round first waits for a publish slot (P2PConfig.publish_rate_per_s) while the
        queue fills, then gathers — so the network gets fewer, bigger messages and
        labels/s grows without growing the per-message cost every peer pays."""
        async for topic, raw in self._publish_recv:
            await self.p2p.wait_publish_slot()  # first the token, then gather: a bundle leaves as soon as it is made
            by_topic: dict[str, list[bytes]] = {topic: [raw]}
            while True:
                try:
                    t, r = self._publish_recv.receive_nowait()
                except trio.WouldBlock:
                    break
                by_topic.setdefault(t, []).append(r)
            # Task announcements first, so no peer sees a batch before its task.
            for t in sorted(by_topic, key=lambda t: self._kind_of_topic.get(t, 0)):
                for run in group_envelopes(by_topic[t], self.p2p.max_payload_bytes):
                    try:
                        await self.p2p.publish(t, payload_of(run))
                        self.counters.published += 1
                        self.counters.published_envelopes += len(run)
                    except Exception as e:  # the network must not take the node down
                        log.warning("publish failed: %s", e)

    # ------------------------------------------------------------------ reads

    def _decode_ids(self, ids) -> list[tuple[bytes, SignedMessage]]:
        out = []
        for mid, raw in zip(ids, self.store.get_many(list(ids))):
            if raw is not None:
                out.append((mid, decode_message(raw, self.params)))
        return out

    def task_batches(self, task_id: bytes, ids=None) -> dict[bytes, AnnotationBatch]:
        """Decoded batches of a task: all we hold, or those among ``ids``."""
        if ids is None:
            ids = self.store.task_message_ids(task_id, KIND_BATCH)
        return {mid: m.body for mid, m in self._decode_ids(ids) if m.kind == KIND_BATCH}

    def task_pinnable_ids(self, task_id: bytes) -> list[bytes]:
        """Everything that can be pinned in a task's set: its batches and its gold reveals."""
        return self.store.task_message_ids(task_id, KIND_BATCH) + self.store.task_message_ids(task_id, KIND_GOLD)

    # ------------------------------------------------------------------ gold (commit-reveal)

    GOLD_META = "gold_secrets"

    def gold_secrets(self) -> dict:
        """Local bookkeeping: task id -> [requester account name, salt, answers] of tasks
        this node posted with hidden gold, until their reveal is stored (then the reveal
        holds them; reveal_due_gold forgets the secret, so the blob it reads every tick
        holds open tasks only)."""
        import msgpack
        raw = self.store.get_meta(self.GOLD_META)
        return msgpack.unpackb(raw, strict_map_key=False) if raw else {}

    async def remember_gold(self, task_id: bytes, account: str, salt: bytes, answers) -> None:
        import msgpack
        async with self._gold_lock:  # read-modify-write of one blob: one writer at a time
            secrets_ = self.gold_secrets()
            secrets_[task_id] = [account, salt, [list(a) for a in answers]]
            await self.writer.write(self.store.put_meta, self.GOLD_META, msgpack.packb(secrets_, use_bin_type=True))

    async def reveal_gold(self, task_id: bytes) -> tuple[Verdict, bytes | None]:
        """Sign and ingest the GoldReveal of a task this node committed for."""
        from protocol.messages import sign_message
        sec = self.gold_secrets().get(task_id)
        if sec is None:
            stored = self.store.task_message_ids(task_id, KIND_GOLD)
            if stored:  # revealed already (and the secret forgotten)
                return ignore("duplicate"), stored[0]
            return reject("this node holds no gold secret for the task"), None
        account, salt, answers = sec
        task = self.tasks[task_id]
        body = GoldReveal(requester=task.requester, task_id=task_id, created_at=max(self.clock(), task.deadline),
                          salt=salt, answers=tuple(tuple(a) for a in answers))
        msg = sign_message(body, self.keystore.signing_key(account), self.network_id)
        return await self.ingest(msg.raw, "local", publish=True)

    async def reveal_due_gold(self) -> None:
        """Reveal the gold of every task of ours whose deadline has passed (idempotent)."""
        if self.keystore is None:
            return
        now = self.clock()
        done = []
        for task_id in list(self.gold_secrets()):
            t = self.tasks.get(task_id)
            if t is None or now < t.deadline:
                continue
            if not self.store.task_message_ids(task_id, KIND_GOLD):
                v, _ = await self.reveal_gold(task_id)
                if not v.ok:
                    log.warning("gold reveal for %s refused: %s", task_id.hex()[:16], v.reason)
                    continue
                log.info("gold revealed", extra={"task": task_id.hex()[:16]})
            done.append(task_id)
        if done:
            await self.forget_gold(done)

    async def forget_gold(self, task_ids) -> None:
        """Drop the secrets of tasks whose reveal is stored."""
        import msgpack
        async with self._gold_lock:
            secrets_ = self.gold_secrets()
            for task_id in task_ids:
                secrets_.pop(task_id, None)
            await self.writer.write(self.store.put_meta, self.GOLD_META, msgpack.packb(secrets_, use_bin_type=True))

    # ------------------------------------------------------------------ reputation

    def task_outcome(self, task_id: bytes):
        """The certified outcome of a task for reputation, or None if not certified (or
        its certified result cannot be reproduced here yet)."""
        from protocol.reputation import AnnotatorOutcome, TaskOutcome

        t = self.tasks.get(task_id)
        return self._certified_summary(self._outcomes, task_id, lambda res: TaskOutcome(
            task_id=task_id, deadline=t.deadline, domain=t.schema.domain, n_classes=len(t.schema.labels),
            annotators=tuple(AnnotatorOutcome(a.account, a.labels, a.score, a.equivocations)
                             for a in res.annotators)))

    def _certified_summary(self, cache: dict, task_id: bytes, summarise):
        """``summarise(result)`` of the result over a task's certified set, kept in
        ``cache`` per task; None (not kept) unless this node holds the whole set and gets
        the certificate's result_root (not certified, fetching, or a different reputation
        snapshot here)."""
        hit = cache.get(task_id)
        if hit is None:
            cert, res = self.finality.certified_result(task_id)
            if cert is None or res is None or res.result_root != cert.result_root:
                return None
            hit = cache[task_id] = summarise(res)
        return hit

    def certified_rewards(self, task_id: bytes):
        """(refund, ((account, reward, labels, accuracy), ...)) of a certified task whose
        certified result this node reproduces, else None.  Kept per task (small), so
        rewards_get over many certified tasks does not need their full results again."""
        return self._certified_summary(self._rewards, task_id, lambda res: (
            res.refund, tuple((a.account, a.reward, a.labels, a.accuracy) for a in res.annotators)))

    def reputation_snapshot(self, created_at: int) -> tuple[dict, bytes]:
        """Earned reputation for a task created at ``created_at`` and a digest of the
        certified tasks it was computed from (for cache keys)."""
        from protocol.codec import sha256
        from protocol.reputation import compute_earned

        lag = self.params.reputation_lag_ms
        outcomes = []
        for tid, t in sorted(self.tasks.items()):
            if t.deadline <= created_at - lag and self.finality.is_certified(tid):
                o = self.task_outcome(tid)
                if o is not None:
                    outcomes.append(o)
        digest = sha256(b"".join(o.task_id for o in outcomes))
        # compute_earned is linear in all certified (task, annotator) pairs (~0.16 s at 5,000
        # tasks x 20 annotators) and is asked for on every result lookup and finality tick;
        # the same certified set gives the same snapshot, so keep the last few.
        earned = self._earned.get(digest)
        if earned is None:
            earned = compute_earned(outcomes)
            if len(self._earned) >= 16:
                self._earned.pop(next(iter(self._earned)))
            self._earned[digest] = earned
        return earned, digest

    def weight_fn(self, task: TaskAnnouncement):
        """(weight_of(account) -> fixed point, snapshot digest) for ``task``."""
        from protocol.reputation import compute_weight

        earned, digest = self.reputation_snapshot(task.created_at)
        domain = task.schema.domain
        return (lambda a: compute_weight(a, domain, earned, self.genesis.reputation, self.params)), digest

    # ------------------------------------------------------------------ results

    def task_result(self, task_id: bytes) -> TaskResult:
        """Provisional result over every batch (and gold reveal) this node holds for the task."""
        return self.compute_result(task_id, None)

    def compute_result(self, task_id: bytes, ids) -> TaskResult:
        """Result over exactly the pinned message ids ``ids`` (batches and at most one
        gold reveal; None: all held). Cached by (set root, reputation snapshot).

        Runs the aggregation on the calling (event-loop) thread when it is not cached;
        the finality service and the RPC methods call :meth:`prepare_result` first, so a
        big task's aggregation runs in a worker thread and this finds it cached."""
        key, cached, job = self._result_job(task_id, ids)
        if cached is not None:
            return cached
        res = self._run_result_job(job)
        self._result_cache.put(key, res)
        return res

    async def prepare_result(self, task_id: bytes, ids=None) -> TaskResult:
        """:meth:`compute_result`, with the reading, decoding and aggregation of a set of
        at least ``result_thread_min_messages`` messages in a worker thread (one at a
        time), so the event loop (gossip, sync, RPC) keeps running meanwhile.  A
        max-size task with gold takes seconds (BENCHMARKS.md); small sets stay on the
        loop, where a thread hop would cost more than it saves."""
        key, cached, job = self._result_job(task_id, ids)
        if cached is not None:
            return cached
        if len(job[2]) < self.result_thread_min_messages:
            res = self._run_result_job(job)
        else:
            async with self._result_limiter:
                cached = self._result_cache.get(key)  # computed while we waited for the limiter
                if cached is not None:
                    return cached
                res = await trio.to_thread.run_sync(self._run_result_job, job)
        self._result_cache.put(key, res)  # on the loop thread: the cache is not thread-safe
        return res

    def _result_job(self, task_id: bytes, ids):
        """(cache key, cached result or None, job for _run_result_job or None) for the
        result over ``ids``: the set and the reputation snapshot are fixed here, on the
        loop thread; reading and decoding the messages is left to the job."""
        from protocol.messages import compute_set_root

        ids = list(self.task_pinnable_ids(task_id) if ids is None else ids)
        task = self.tasks[task_id]
        weight_of, snap = self.weight_fn(task)
        key = compute_set_root(task_id, ids) + snap
        cached = self._result_cache.get(key)
        if cached is not None:
            return key, cached, None
        return key, None, (task_id, task, ids, weight_of)

    def _run_result_job(self, job) -> TaskResult:
        """Read the set's messages and compute one result (safe in a worker thread: store
        reads are, and the rest is pure)."""
        from protocol.tally import compute_task_result

        task_id, task, ids, weight_of = job
        started = time.perf_counter()
        batches, golds = {}, []
        for mid, m in self._decode_ids(ids):
            if m.kind == KIND_BATCH:
                batches[mid] = m.body
            elif m.kind == KIND_GOLD:
                golds.append((mid, m.body))
        # Every valid reveal of a task carries the same answers (they match one
        # commitment); pin the smallest id so the set is canonical.
        gold_id, gold = min(golds, key=lambda g: g[0]) if golds else (None, None)
        res = compute_task_result(task_id, task, batches, gold, weight_of, self.params, gold_id=gold_id)
        self.metrics.observe_consensus(time.perf_counter() - started)
        return res

    def task_status(self, task_id: bytes) -> str:
        t = self.tasks[task_id]
        return "open" if self.clock() <= t.deadline else "closed"

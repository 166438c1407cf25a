"""NodeCore: the state machine of a node -- every message goes through one ingest pipeline.

How it works
------------
Every message, whatever its source (RPC, gossip, sync), goes through
``NodeCore.ingest``: decode -> dedupe by content id -> validate_basic -> verify the
signature -> validate against local state -> durable group-committed write ->
in-memory indexes updated. Only then is it acknowledged (RPC) or forwarded
(gossip validator returns ACCEPT). Messages that name a task we have not seen
yet are IGNOREd but parked in a bounded orphan pool and re-ingested when the
task arrives (anti-entropy sync repairs anything else gossip loses).

Results (consensus labels, rewards) are never stored as truth: they are a pure
function of the stored set (``node/core/results.py``); gold secrets are
``node/core/gold.py``.

The core knows its services (sync, finality, blobs, metrics) only as attributes that
the composition root (``node/app.py``) sets, and never imports them: ``None`` until then.
Structured concurrency: ``start_core`` starts the store writer, the network and the
publisher in the caller's nursery (``node.app.Node.run``), each ready when it returns.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import trio

from protocol.bundle import group_envelopes, payload_of, split_payload
from protocol.errors import DecodeError
from protocol.genesis import Genesis
from protocol.messages import (
    ACCEPT, KIND_ATTESTATION, KIND_BATCH, KIND_GOLD, KIND_NAMES, KIND_TASK, LEDGER_BUCKET, UNKNOWN_TASK,
    AnnotationBatch, Outcome,
    SignedMessage, TaskAnnouncement, Verdict, decode_message, reject, validate_basic, validate_in_context,
)

from ..policy.ratelimit import GossipRateLimiter
from ..storage.errors import StoreError
from ..storage.layout import Record
from ..storage.store import Store
from ..storage.writer import StoreWriter
from .gold import GoldSecrets
from .indexes import TaskIndex
from .keep import GOLD_SURPLUS, BatchKeeper
from .ledger import TASK_NOT_FUNDED, Ledger
from .replica import Replica
from .results import Results
from .verdicts import DECLINED_BEFORE, DUPLICATE, SURPLUS
from .verifier import Verifier, verify_all

log = logging.getLogger("labelmesh.node")

MAX_ORPHANS = 20_000
# Sources whose batches and gold reveals are stored even when the keep rule (node/core/keep.py)
# finds them redundant: our own messages, and what a validator's prevote or a certificate
# names (fetched by the finality service, which must hold a set to check or reproduce it).
# They are counted all the same, and dropped later if nothing protects them.
STORED_ANYWAY_SOURCES = frozenset({"local", "pinned"})
ARRIVALS_KEPT = 200_000  # stored-at times remembered for messages_arrival (RPC)
#: Ids of valid messages this node declined to store (or dropped) under its storage policy
#: (the keep rule, FinalityService.storage_verdict), most recent kept: sync does not fetch
#: them again from peers that hold them (32 bytes each, ~20 MB at most).
DECLINED_KEPT = 262_144
VERIFY_OFFLOAD_MIN = 16  # signatures verified off the event loop (node/core/verifier.py) from this many per group on


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def topic_for(network_id: bytes, kind: int) -> str:
    return f"/labelmesh/{network_id.hex()[:16]}/{KIND_NAMES[kind]}/1"


@dataclass
class Counters:
    accepted: int = 0
    rejected: int = 0
    ignored: int = 0
    duplicates: int = 0
    published: int = 0  # gossip messages published (a bundle counts once)
    published_envelopes: int = 0  # accepted messages gossiped (each envelope of a bundle counts)
    redundant: int = 0  # batches and gold reveals the keep rule did not store (node/core/keep.py)
    dropped: int = 0  # stored messages deleted since: batches and gold reveals made redundant by a later
    # arrival, votes from rounds after the task's certificate
    votes_not_stored: int = 0  # attestations IGNOREd by the finality storage bound (storage_verdict)
    ledger_not_stored: int = 0  # transfers and ledger votes IGNOREd by the ledger's storage policy
    not_funded: int = 0  # batches IGNOREd (parked) because their task's bounty is not escrowed yet
    not_followed: int = 0  # batches, gold reveals, attestations IGNOREd: domain not followed or task pruned here
    rate_limited: int = 0  # gossip messages IGNOREd (or REJECTed as abuse) by node/policy/ratelimit.py
    publish_dropped: int = 0  # accepted messages not gossiped because the publish queue was full


class NodeCore(GoldSecrets, Results, Ledger, Replica):
    """The ingest pipeline, gossip validation and the node's state. ``p2p`` is any object
    with the P2PNode interface (real libp2p in production, an in-memory fake in tests),
    made by ``p2p_factory(node)``. ``node.app.Node`` adds the services and servers."""

    def __init__(self, data_dir: Path, genesis: Genesis, *, p2p_factory: Callable | None,
                 keystore=None, clock: Callable[[], int] = wall_clock_ms, rate_limits=None, verify_processes: int = 0,
                 replica=None):
        self.data_dir = Path(data_dir)
        self.genesis = genesis
        self.params = genesis.params
        self.network_id = genesis.network_id
        self.clock = clock
        self.keystore = keystore
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = Store(self.data_dir / "store")
        self.writer = StoreWriter(self.store)
        self.counters = Counters()
        # the services, set by the composition root (node/app.py); None in a bare core
        self.metrics = self.sync = self.finality = self.blobs = self.rpc = self.ledger_service = None
        self.tasks: dict[bytes, TaskAnnouncement] = {}
        self.task_index = TaskIndex()
        self._orphans: OrderedDict[bytes, tuple[bytes, str]] = OrderedDict()  # msg id -> (raw, source)
        self._inflight: dict[bytes, trio.Event] = {}
        self.ratelimit = GossipRateLimiter(rate_limits)  # rate_limits: a policy.ratelimit.RateLimitConfig or None
        # big groups' signatures: in helper processes (labelmesh run), or threads if 0 (in-process nodes)
        self.verifier = Verifier(self.network_id, verify_processes)
        self.keeper = BatchKeeper(self.store, self.params)  # which batches and gold reveals are kept
        self._declined: OrderedDict[bytes, None] = OrderedDict()  # see DECLINED_KEPT
        self._init_results()
        self._init_ledger()
        self._init_replica(replica)  # replica: a core.replica.ReplicaConfig (what this node follows and keeps)
        self._gold_lock = trio.Lock()  # remember_gold / forget_gold rewrite one meta blob
        self.arrival_ms: dict[bytes, int] = {}  # msg id -> clock() when stored, the newest ARRIVALS_KEPT
        self.topics = {k: topic_for(self.network_id, k) for k in KIND_NAMES}
        self._kind_of_topic = {t: k for k, t in self.topics.items()}
        self.p2p = p2p_factory(self) if p2p_factory else None
        self._publish_send, self._publish_recv = trio.open_memory_channel(4096)
        self.started_at = clock()

    # ------------------------------------------------------------------ lifecycle

    def load_tasks(self) -> None:
        """Rebuild the task table and the per-task index from the store (at start)."""
        for raw in self.store.get_many(self.store.kind_message_ids(KIND_TASK)):
            msg = decode_message(raw, self.params)
            tid = msg.compute_id(self.network_id)
            self.tasks[tid] = msg.body
            self.task_index.add_task(tid)
            for mid in self.store.task_message_ids(tid):
                self.task_index.add(tid, mid)
            self.join_domain(msg.body.schema.domain)
        for mid in self.store.task_message_ids(LEDGER_BUCKET):
            self.task_index.add(LEDGER_BUCKET, mid)
        self.load_stubs()
        self.load_settlements()
        self.load_ledger()

    async def start_core(self, nursery: trio.Nursery) -> None:
        """Start the store writer, then the network (topics joined) and the publisher."""
        await nursery.start(self.writer.run)
        for domain in sorted(self.replica.follow_domains or ()):
            self.join_domain(domain)  # the domains named in the config; with all, each as its first task arrives
        if self.p2p is not None:
            for t in self.topics.values():
                self.p2p.subscribe(t)
            await nursery.start(self.p2p.run)
            nursery.start_soon(self._publisher)

    async def close_core(self) -> None:
        """Stop the signature helper processes (if any) and close the store."""
        with trio.CancelScope(shield=True):
            await self.verifier.aclose()
        self.store.close()

    @property
    def orphan_count(self) -> int:
        """Messages parked until the task they name arrives."""
        return len(self._orphans)

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
        """The pipeline for ``group`` [(k, id, msg)]: screen, verify signatures, decide,
        commit; ``results[k]`` gets each message's (verdict, id)."""
        now = self.clock()
        checked = await self._screen(group, source, results)
        sig_ok = await self._verify_signatures([msg for _, _, msg, v in checked if v.ok], source)
        records, accepted, kept_as, displaced = self._decide(checked, sig_ok, source, now, results)
        if displaced:  # batches displaced within this group are not written at all
            records, accepted = self._skip_displaced(records, accepted, displaced, results)
        if self._pending_stubs:
            await self.keep_stubs()
        if records:
            await self._commit(records, accepted, publish, results, kept_as)
        if displaced:
            await self._drop_displaced(displaced)

    async def _screen(self, group, source: str, results: list) -> list:
        """Drop what is stored already (waiting for writes in flight) and what the storage
        policy declined before; (k, id, msg, validate_basic verdict) of the rest."""
        checked = []
        for k, mid, msg in group:
            ev = self._inflight.get(mid)
            if ev is not None:  # being written by another caller right now
                await ev.wait()
        stored = self.store.has_many([mid for _, mid, _ in group])  # one read txn for the group
        for (k, mid, msg), dup in zip(group, stored):
            if dup:
                self.counters.duplicates += 1
                results[k] = (DUPLICATE, mid)
                continue
            if mid in self._declined and source in ("gossip", "sync"):
                # the same bytes were valid and left unstored by the storage policy, whose
                # verdicts never change: no need to verify them again (an RPC client is
                # told the policy's own reason again)
                self.counters.ignored += 1
                results[k] = (DECLINED_BEFORE, mid)
                continue
            checked.append((k, mid, msg, validate_basic(msg, self.params)))
        return checked

    async def _verify_signatures(self, msgs: list[SignedMessage], source: str):
        """An iterator of each message's signature check, in order.

        Verified in one go; a big group off the event loop (a helper process, see
        node/core/verifier.py) while the event loop decodes the next request (two cores busy).
        Gossip bundles are verified in a thread, never in a helper: there latency is what
        counts, and on a small machine running many nodes, helper start-ups and pipe hops
        made whole bundles late (10 nodes at 100 batches/s: p99 ~0.6-0.76 s with helpers,
        0.24-0.43 s without; BENCHMARKS.md). Bulk paths (RPC, sync) use the helpers."""
        if len(msgs) >= VERIFY_OFFLOAD_MIN and source == "gossip":
            return iter(await trio.to_thread.run_sync(verify_all, msgs, self.network_id))
        if len(msgs) >= VERIFY_OFFLOAD_MIN:
            return iter(await self.verifier.verify(msgs))
        return iter(verify_all(msgs, self.network_id))

    def _decide(self, checked: list, sig_ok, source: str, now: int, results: list) -> tuple[list, list, dict, list]:
        """Signature, then state (validate_in_context), then what is kept (the keep rule of
        batches and gold reveals, the finality storage bound): the records to write, their
        (k, id, msg), the accepted ones whose ACCEPT carries a note (KEPT_OVERLAPPING) and the
        (task, kind, id) of stored messages the keep rule now drops; every other message gets
        its verdict in ``results``."""
        records, accepted, seen = [], [], set()
        kept_as: dict[bytes, Verdict] = {}
        displaced: list[tuple[bytes, int, bytes]] = []
        pending_gold: dict = {}  # task -> smallest gold reveal admitted in this group
        pending_votes: dict = {}  # (task, validator, round, phase) -> values admitted in this group
        for k, mid, msg, v in checked:
            if mid in seen:
                self.counters.duplicates += 1
                results[k] = (DUPLICATE, mid)
                if v.ok:
                    next(sig_ok)
                continue
            if v.ok and not next(sig_ok):
                v = reject("bad signature")
            if v.ok:
                # a batch, gold reveal or attestation of a task not followed here, or pruned
                # (node/core/replica.py): not judged further (a task stub has no items)
                rv = self.replica_verdict(msg)
                if rv is None:
                    v = validate_in_context(msg, self, now, self.params)
                    rv = self.stub_verdict(mid, msg) if v.ok else None  # a task of a domain not followed
                if rv is not None:
                    self.counters.not_followed += 1
                    self._decline(mid)
                    v = rv
            if v.ok and msg.kind == KIND_BATCH and not self.is_open_for_labels(msg.body.task_id):
                self.counters.not_funded += 1
                self.wait_for_funding(msg.body.task_id)
                v = TASK_NOT_FUNDED  # before the keep rule, which counts what it admits
            if v.ok and msg.kind in (KIND_BATCH, KIND_GOLD):
                v = self._check_keep(mid, msg, source, displaced, pending_gold)
            if v.ok and msg.kind == KIND_ATTESTATION and self.finality is not None:
                v = self.finality.storage_verdict(msg, pending_votes)
                if not v.ok:
                    self.counters.votes_not_stored += 1
                    self._decline(mid)
            if v.ok:
                # the ledger's storage policy (orders, votes): most refusals can change as
                # credits arrive (docs/ledger.md); only final ones are remembered as declined
                lv = self.ledger_verdict(mid, msg)
                if lv is not None and not lv.ok:
                    self.counters.ledger_not_stored += 1
                    if self.ledger.is_refusal_final(msg.body):
                        self._decline(mid)  # sync need not fetch it again
                    v = lv
            if not v.ok:
                if v == UNKNOWN_TASK or v == TASK_NOT_FUNDED:
                    self._park_orphan(mid, msg.raw, source)
                self._count(v)
                results[k] = (v, mid)
                continue
            seen.add(mid)
            if v != ACCEPT:
                kept_as[mid] = v  # e.g. KEPT_OVERLAPPING
            task_id = mid if msg.kind == KIND_TASK else msg.body.task_id
            records.append(Record(msg_id=mid, kind=msg.kind, task_id=task_id, raw=msg.raw))
            accepted.append((k, mid, msg))
        return records, accepted, kept_as, displaced

    def _skip_displaced(self, records: list[Record], accepted: list, displaced: list, results: list):
        """``records`` and ``accepted`` without what a later message of the same group made
        redundant (its verdict becomes SURPLUS)."""
        gone = {d[2] for d in displaced}
        for k, mid, msg in accepted:
            if mid in gone:
                self.counters.redundant += 1
                self._decline(mid)
                results[k] = (GOLD_SURPLUS if msg.kind == KIND_GOLD else SURPLUS, mid)
        return [r for r in records if r.msg_id not in gone], [a for a in accepted if a[1] not in gone]

    async def _commit(self, records: list[Record], accepted: list, publish: bool, results: list,
                      kept_as: dict) -> None:
        """One group commit; then the accepted messages update the indexes, are queued for
        gossip (``publish``) and adopt the orphans waiting for a new task."""
        written = trio.Event()  # one for the group: set when its commit is done (or failed)
        for _, mid, _ in accepted:
            self._inflight[mid] = written
        try:
            flags = await self.writer.put(records)
        except StoreError:
            self.keeper.forget()  # it counted this group's batches
            self._declined.clear()  # some verdicts may rest on them
            raise
        finally:
            for _, mid, _ in accepted:
                self._inflight.pop(mid, None)
            written.set()
        for (k, mid, msg), new in zip(accepted, flags):
            if not new:  # raced with another writer: already stored
                self.counters.duplicates += 1
                results[k] = (DUPLICATE, mid)
                continue
            self.counters.accepted += 1
            self._on_accepted(mid, msg)
            results[k] = (kept_as.get(mid, ACCEPT), mid)
            if publish and self.p2p is not None:
                # Never make an acknowledged write wait for gossip: the publisher is paced
                # (token bucket) far below what ingest accepts, and gossip is best effort
                # anyway. A full queue drops the publish; anti-entropy sync delivers it.
                try:
                    self._publish_send.send_nowait((self.topic_of(msg), msg.raw))
                except trio.WouldBlock:
                    self.counters.publish_dropped += 1
        for k, mid, msg in accepted:
            if msg.kind == KIND_TASK:
                await self._adopt_orphans(mid)
        for task_id in self.take_newly_funded():  # escrows that arrived: their parked batches
            await self._adopt_orphans(task_id)

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
            self.stubs.pop(mid, None)  # a stub no more (node/core/replica.py)
            self.task_index.add_task(mid)
            self.join_domain(msg.body.schema.domain)
            if self.blobs is not None:
                self.blobs.on_task(mid, msg.body)
        self.task_index.add(mid if msg.kind == KIND_TASK else msg.body.task_id, mid)
        if self.sync is not None:
            self.sync.touch(mid if msg.kind == KIND_TASK else msg.body.task_id)
        if msg.kind == KIND_ATTESTATION and self.finality is not None:
            self.finality.on_attestation(msg)
        self._feed_ledger(mid, msg)
        log.debug("stored %s %s", KIND_NAMES[msg.kind], mid.hex()[:16])

    def _check_keep(self, mid: bytes, msg: SignedMessage, source: str, displaced: list, pending_gold: dict) -> Verdict:
        """The keep rule (node/core/keep.py) for a valid batch or gold reveal: ACCEPT (or
        KEPT_OVERLAPPING), or IGNORE as redundant; what it displaces goes to ``displaced``.
        Sources in STORED_ANYWAY_SOURCES store it even when redundant."""
        if msg.kind == KIND_BATCH:
            v, gone = self.keeper.check_batch(mid, msg.body)
        else:
            v, gone = self.keeper.check_gold(mid, msg.body.task_id, pending_gold)
        displaced.extend((msg.body.task_id, msg.kind, g) for g in gone)
        if v.ok or source in STORED_ANYWAY_SOURCES:
            return ACCEPT if not v.ok else v
        self.counters.redundant += 1
        self._decline(mid)
        return v

    async def _drop_displaced(self, displaced: list[tuple[bytes, int, bytes]], protected=None) -> int:
        """Delete stored batches and gold reveals that a newer arrival made redundant,
        except what finality still needs (FinalityService.protected_batch_ids)."""
        doomed, keep = [], {}
        for task_id, kind, mid in displaced:
            if task_id not in keep:
                keep[task_id] = protected if protected is not None else (
                    self.finality.protected_batch_ids(task_id) if self.finality is not None else frozenset())
            if mid not in keep[task_id] and self.store.has(mid):
                doomed.append((task_id, kind, mid))
        return await self.remove_messages(doomed)

    async def remove_messages(self, doomed: list[tuple[bytes, int, bytes]]) -> int:
        """Delete stored messages ``(task_id, kind, id)`` that a storage rule no longer
        keeps (the keep rule here, votes after a certificate: FinalityService), durably, and
        from the sync index; they are remembered as declined, so sync does not fetch them
        back. Returns how many were stored."""
        if not doomed:
            return 0
        n = await self.writer.write(self.store.delete_messages, doomed)
        for task_id, kind, mid in doomed:
            self.task_index.remove(task_id, mid)
            self.arrival_ms.pop(mid, None)
            self._decline(mid)
        self.counters.dropped += n
        log.info("dropped %d stored messages no longer kept", n, extra={"task": doomed[0][0].hex()[:16]})
        return n

    async def drop_redundant(self, task_id: bytes, protected: frozenset) -> int:
        """Delete the task's stored batches and gold reveals that the keep rule does not
        keep and nothing ``protected`` (e.g. stored as ``pinned`` for finality, or left by a
        crash between a write and the deletion it caused); returns how many. Run when the
        task is certified: then every node holds the same set."""
        batches = self.store.task_message_ids(task_id, KIND_BATCH)
        golds = sorted(self.store.task_message_ids(task_id, KIND_GOLD))
        doomed = [(task_id, KIND_GOLD, g) for g in golds[1:] if g not in protected]
        if not protected.issuperset(batches):
            kept = self.keeper.kept_batch_ids(task_id)
            doomed += [(task_id, KIND_BATCH, b) for b in batches if b not in kept and b not in protected]
        return await self._drop_displaced(doomed, protected)

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
        node/policy/ratelimit.py). A message carries one envelope or a bundle of them
        (protocol/bundle.py); rate limits count envelopes, not messages.

        Order, cheapest first: forwarder's rate limit -> split the bundle and decode
        each envelope -> kind matches the topic (else REJECT: no smuggling across
        topics) -> duplicates (never penalised: honest relayers race) -> origin's and
        signers' rate limits -> the ingest pipeline (verify, validate, keep rule,
        store), one group commit for the whole bundle.

        The message's outcome: REJECT if any envelope is invalid or the bundle is
        malformed; ACCEPT if every envelope is now stored, a duplicate or redundant
        under the keep rule (at least one of them new from this message), so forwarding
        it can never carry something we have not checked; IGNORE otherwise (nothing new,
        or some envelope was only rate-limited or parked as an orphan — what was valid
        is stored anyway, and sync brings the rest to our peers)."""
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
        fresh = self._fresh_envelopes(raws, topic)
        if fresh is None:
            return Outcome.REJECT
        if not fresh:
            return Outcome.IGNORE
        limited = rl.on_new_message(from_peer, origin, now_s, len(fresh))
        if limited is not None:
            return self._rate_limited(limited)
        allowed, allowed_msgs = [], []
        for raw, msg in fresh:
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
        return self._gossip_outcome(verdicts, allowed_msgs, all_allowed=len(allowed) == len(fresh), now_s=now_s)

    def _fresh_envelopes(self, raws: list[bytes], topic: str) -> list[tuple[bytes, SignedMessage]] | None:
        """(raw, decoded) of the envelopes of a gossip message that this node does not hold
        yet; None (REJECT, counted) if one does not decode or is not of the topic's kind."""
        want = self.topic_kinds(topic)  # a domain topic carries batches, gold reveals and attestations
        fresh = []
        for raw in raws:
            try:
                msg = decode_message(raw, self.params)
            except DecodeError:
                self.counters.rejected += 1
                return None
            if want is None or msg.kind not in want:
                self.counters.rejected += 1
                return None
            mid = msg.compute_id(self.network_id)
            if mid in self._inflight or self.store.has(mid):
                self.counters.duplicates += 1
                continue
            fresh.append((raw, msg))
        return fresh

    def _gossip_outcome(self, verdicts, msgs: list[SignedMessage], *, all_allowed: bool, now_s: float) -> Outcome:
        """A gossip message's outcome from its envelopes' verdicts (see gossip_validate);
        each envelope verified and kept takes its signer's rate-limit token."""
        outcome = Outcome.ACCEPT if all_allowed else Outcome.IGNORE
        new = 0
        for (v, _), msg in zip(verdicts, msgs):
            if v.ok or (v.outcome is Outcome.IGNORE and v != DUPLICATE):
                self.ratelimit.on_account_used(msg.body.signer, now_s)  # verified and stored (or parked): it costs a token
            if v.outcome is Outcome.REJECT:
                return Outcome.REJECT
            if v.ok:
                new += 1
            elif v != DUPLICATE and v != SURPLUS:  # a redundant envelope is valid and fully checked:
                outcome = Outcome.IGNORE            # it does not keep the others from being forwarded
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

    def task_status(self, task_id: bytes) -> str:
        t = self.tasks[task_id]
        return "open" if self.clock() <= t.deadline else "closed"

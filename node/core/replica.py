"""What this node follows and keeps: partial replication (``follow_domains``) and pruning
(``retain_batches_days``). A mixin of NodeCore (uses its store, writer, tasks, genesis,
params, task index and finality).

How it works (docs/scaling.md "Partial replication and pruning"; PROTOCOL.md 17)
-------------------------------------------------------------------------------
Every node stores every task announcement and all ledger traffic. Per task, a node is in
one of three modes (``replica_mode``):

* ``full``: it holds the task's batches, gold reveals and attestations, runs finality on
  them and computes the result itself (every task on a node that follows everything and
  keeps everything: validators and archive nodes);
* ``summary``: the task's domain is not followed. The node stores none of the task's
  batches, gold reveals or attestations (IGNOREd, and not on its gossip topics); once the
  task is past its grace period it fetches the certificate and the result bytes from a
  peer (sync CERTIFIED), verifies both (protocol/replica.py ``check_certified``), and keeps
  the *settlement*: per annotator the numbers reputation and the ledger use, the refund,
  the fee and the roots. The ledger releases the escrow from it, reputation counts it:
  balances and reputation are those of a full node. It serves no result of that task;
* ``pruned``: a followed task whose deadline is more than ``retain_batches_days`` ago.
  Once it is certified here, the node keeps the settlement *with its proof* (the
  certificate and the result bytes, which it serves to peers) and deletes the task's
  batches, gold reveals and attestations. A node that never held them (it joined
  later) fetches the settlement and proof by sync instead of the batches.

Settlements are stored under ``b"settled/" + task_id`` in the store's derived table and
loaded at start. Sync never reconciles a ``summary`` or ``pruned`` task's messages, and a
node reports such tasks with count 0 in its SUMMARY, so peers do not try to reconcile
them against it either (node/services/sync.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from protocol.errors import DecodeError
from protocol.finality import Certificate, decode_certificate, encode_certificate
from protocol.messages import KIND_ATTESTATION, KIND_BATCH, KIND_GOLD, KIND_TASK, ignore
from protocol.replica import (
    Settlement, check_certified, decode_settlement, decode_task_stub, domain_topic, encode_result, encode_settlement,
    encode_task_stub, make_settlement, settlement_result,
)

log = logging.getLogger("labelmesh.replica")

SETTLED_PREFIX = b"settled/"
STUB_PREFIX = b"stub/"
DAY_MS = 86_400_000
#: The kinds a node stores only for the tasks it holds in full (they travel on domain topics).
DOMAIN_KINDS = frozenset({KIND_BATCH, KIND_GOLD, KIND_ATTESTATION})
NOT_FOLLOWED = ignore("not stored: this node does not follow the task's domain (follow_domains); "
                      "send it to a node that does")
PRUNED = ignore("not stored: the task is certified and its batches are pruned here (retain_batches_days)")
TASK_STUB = ignore("kept as a stub (every field but the items): this node does not follow the task's domain "
                   "(follow_domains)")

FULL, SUMMARY, PRUNED_MODE = "full", "summary", "pruned"


@dataclass(frozen=True)
class ReplicaConfig:
    """``follow_domains``: the label-schema domains this node follows (None: all);
    ``retain_batches_ms``: how long after a task's deadline its batches are kept
    (None: for ever)."""
    follow_domains: frozenset | None = None
    retain_batches_ms: int | None = None

    @classmethod
    def from_settings(cls, follow_domains, retain_batches_days) -> "ReplicaConfig":
        """From the config's values: ``["*"]`` (or None) follows every domain; 0 (or
        None) days keeps every batch."""
        follow = None if follow_domains is None or "*" in follow_domains else frozenset(follow_domains)
        days = retain_batches_days or 0
        return cls(follow, int(days * DAY_MS) if days > 0 else None)

    @property
    def follows_all(self) -> bool:
        return self.follow_domains is None

    @property
    def archive(self) -> bool:
        """Follows every domain and keeps every batch (what validators and archives do)."""
        return self.follow_domains is None and self.retain_batches_ms is None

    def as_json(self) -> dict:
        return {"follow_domains": "all" if self.follow_domains is None else sorted(self.follow_domains),
                "retain_batches_days": None if self.retain_batches_ms is None else self.retain_batches_ms / DAY_MS,
                "archive": self.archive}


class Replica:
    """Modes, settlements and pruning (see the module docstring)."""

    def _init_replica(self, config: ReplicaConfig | None) -> None:
        self.replica = config or ReplicaConfig()
        self.settlements: dict[bytes, Settlement] = {}  # task -> settlement, without its proof bytes
        self._proofs: set[bytes] = set()  # tasks whose settlement keeps the certificate and R (servable)
        self._domain_topics: dict[str, str] = {}  # domain -> topic, for the domains this node joined
        self.pruned_messages = 0  # messages deleted by pruning since start
        self._pruned: set[bytes] = set()  # tasks pruned (or checked to hold nothing to prune) since start
        self.stubs: dict[bytes, int] = {}  # task -> number of items, for the tasks kept as stubs
        self._pending_stubs: list = []  # (task id, TaskAnnouncement) decided by ingest, to write

    def load_stubs(self) -> None:
        """The tasks kept as stubs, into the task table (before the ledger is rebuilt).
        A stub of a domain followed now is dropped: the task is unknown again, so sync
        fetches the whole announcement (its items) before any of its batches is judged."""
        for key, value in self.store.derived_items(STUB_PREFIX):
            tid = key[len(STUB_PREFIX):]
            try:
                task, n_items = decode_task_stub(value)
            except DecodeError as e:
                log.error("unreadable task stub %s in the store: %s", tid.hex()[:16], e)
                continue
            if self.follows_domain(task.schema.domain):
                self.store.delete_derived(key)
                continue
            self._add_stub(tid, task, n_items)

    def _add_stub(self, tid: bytes, task, n_items: int) -> None:
        self.tasks[tid] = task
        self.stubs[tid] = n_items
        self.task_index.add_task(tid)

    def stub_verdict(self, mid: bytes, msg):
        """TASK_STUB for a valid task of a domain this node does not follow (queued to be
        kept as a stub by ``keep_stubs``), else None."""
        if msg.kind != KIND_TASK or self.follows_domain(msg.body.schema.domain):
            return None
        self._pending_stubs.append((mid, msg.body))
        return TASK_STUB

    async def keep_stubs(self) -> None:
        """Write the stubs ingest decided on, and enter them in the task table and ledger."""
        todo, self._pending_stubs = self._pending_stubs, []
        todo = [(tid, t) for tid, t in dict(todo).items() if tid not in self.tasks]
        if not todo:
            return

        await self.writer.write(self.store.put_derived_many, [(STUB_PREFIX + tid, encode_task_stub(t)) for tid, t in todo])
        for tid, t in todo:
            self._add_stub(tid, replace(t, items=()), len(t.items))
            self.ledger.add_task(tid, t.requester, t.bounty)
        if self.ledger_service is not None:
            self.ledger_service.wake()

    def load_settlements(self) -> None:
        for key, value in self.store.derived_items(SETTLED_PREFIX):
            try:
                self._remember_settlement(decode_settlement(value))
            except DecodeError as e:
                log.error("unreadable settlement %s in the store: %s", key[len(SETTLED_PREFIX):].hex()[:16], e)

    @property
    def proof_tasks(self) -> frozenset:
        """The tasks whose settlement keeps its certificate and R (pruned here: servable)."""
        return frozenset(self._proofs)

    def _remember_settlement(self, s: Settlement) -> None:
        if s.servable:
            self._proofs.add(s.task_id)
        self.settlements[s.task_id] = replace(s, cert_bytes=b"", result_bytes=b"")

    # ------------------------------------------------------------------ modes

    def follows_domain(self, domain: str) -> bool:
        f = self.replica.follow_domains
        return f is None or domain in f

    def replica_mode(self, task_id: bytes) -> str:
        """``full``, ``summary`` or ``pruned`` (module docstring); ``full`` for the ledger
        bucket and for tasks not known here."""
        t = self.tasks.get(task_id)
        if t is None:
            return FULL
        if not self.follows_domain(t.schema.domain):
            return SUMMARY
        keep = self.replica.retain_batches_ms
        if keep is not None and self.clock() >= t.deadline + self.params.grace_period_ms + keep:
            return PRUNED_MODE
        return FULL

    def holds_in_full(self, task_id: bytes) -> bool:
        """Whether sync reconciles this task's messages here (and reports them to peers):
        the ledger bucket, unknown tasks and tasks in ``full`` mode."""
        return self.replica_mode(task_id) == FULL

    def replica_verdict(self, msg) -> object | None:
        """The storage policy of partial replication and pruning for a validated message:
        None (no objection) or the IGNORE verdict (NOT_FOLLOWED, PRUNED)."""
        if msg.kind not in DOMAIN_KINDS:
            return None
        mode = self.replica_mode(msg.body.task_id)
        if mode == SUMMARY:
            return NOT_FOLLOWED
        if mode == PRUNED_MODE and msg.body.task_id in self.settlements:
            return PRUNED
        return None

    # ------------------------------------------------------------------ topics

    def topic_of(self, msg) -> str:
        """The gossip topic a message is published on (PROTOCOL.md 7.2)."""
        if msg.kind in DOMAIN_KINDS:
            t = self.tasks.get(msg.body.task_id)
            if t is not None:
                return domain_topic(self.network_id, t.schema.domain)
        return self.topics[msg.kind]

    def join_domain(self, domain: str) -> None:
        """Join a domain's topic if this node follows the domain (idempotent)."""
        if domain in self._domain_topics or not self.follows_domain(domain):
            return
        topic = self._domain_topics[domain] = domain_topic(self.network_id, domain)
        self._kind_of_topic[topic] = KIND_BATCH  # for ordering; the kinds allowed are DOMAIN_KINDS
        if self.p2p is not None:
            self.p2p.subscribe(topic)

    def domain_topics(self) -> dict[str, str]:
        return dict(self._domain_topics)

    def topic_kinds(self, topic: str) -> frozenset | None:
        """The message kinds a gossip topic carries (None: not one of ours)."""
        if topic in self._domain_topics.values():
            return DOMAIN_KINDS
        k = self._kind_of_topic.get(topic)
        return None if k is None else frozenset({k})

    # ------------------------------------------------------------------ settlements

    def settled_view(self, task_id: bytes):
        """(certificate, result view) of a settled task, or (None, None). The certificate
        carries its signatures when the proof is kept here, else none (summary)."""
        s = self.settlements.get(task_id)
        if s is None:
            return None, None
        if task_id in self._proofs:
            full = self._stored_settlement(task_id)
            if full is not None and full.servable:
                return decode_certificate(full.cert_bytes, self.params), settlement_result(full)
        cert = Certificate(task_id, s.round, s.set_root, s.result_root, ())
        return cert, settlement_result(s)

    def _stored_settlement(self, task_id: bytes) -> Settlement | None:
        raw = self.store.get_derived(SETTLED_PREFIX + task_id)
        return decode_settlement(raw) if raw is not None else None

    async def certified_proof(self, task_id: bytes) -> tuple[bytes, bytes] | None:
        """(certificate bytes, R) of a task this node can prove: a pruned one (kept), or one
        it holds in full and has certified (its result computed, a big one in the worker
        thread, and cached: the finality service has usually done it already)."""
        if task_id in self._proofs:
            s = self._stored_settlement(task_id)
            return (s.cert_bytes, s.result_bytes) if s is not None and s.servable else None
        if task_id not in self.tasks or self.replica_mode(task_id) == SUMMARY or self.finality is None \
                or not self.finality.is_certified(task_id):
            return None
        await self.finality.prepare_certified_result(task_id)
        cert, res = self.finality.certified_result(task_id, settled=False)
        if cert is None or res is None or res.result_root != cert.result_root:
            return None
        return encode_certificate(cert), encode_result(res)

    async def save_settlement(self, cert: Certificate, res, *, proof: bytes | None) -> Settlement:
        """Keep a certified task's settlement durably (with its proof if ``proof``, R)."""
        s = make_settlement(cert, res, keep_proof=proof)
        await self.writer.write(self.store.put_derived, SETTLED_PREFIX + cert.task_id, encode_settlement(s))
        self._remember_settlement(s)
        return s

    async def accept_certified(self, task_id: bytes, cert_bytes: bytes, result_bytes: bytes) -> bool:
        """A peer's certificate and R for ``task_id`` (sync CERTIFIED): verified, then kept
        as this node's settlement of the task. False if not wanted (already settled, task
        unknown, or held in full); DecodeError if it does not verify (the peer lied)."""
        if not self._wants_settlement(task_id):
            return False
        cert, view = check_certified(task_id, cert_bytes, result_bytes, dict(self.genesis.validators),
                                     self.network_id, self.params)
        if not self._wants_settlement(task_id):  # settled while we verified
            return False
        proof = result_bytes if self.replica_mode(task_id) == PRUNED_MODE else None
        await self.save_settlement(cert, view, proof=proof)
        log.info("task settled from its certificate", extra={"task": task_id.hex()[:16], "proof_kept": bool(proof)})
        return True

    def settlements_wanted(self, now: int) -> list[bytes]:
        """Tasks past their grace period that this node settles without their batches and
        has no settlement of yet (what the finality service asks peers for)."""
        g = self.params.grace_period_ms
        return [tid for tid, t in self.tasks.items() if now >= t.deadline + g and self._wants_settlement(tid)]

    def _wants_settlement(self, task_id: bytes) -> bool:
        """A known task held without its batches and not settled yet here -- or settled
        without the proof that a pruned task keeps (it was of a domain not followed then)."""
        if task_id not in self.tasks:
            return False
        mode = self.replica_mode(task_id)
        if mode == FULL:
            return False
        return task_id not in self.settlements or (mode == PRUNED_MODE and task_id not in self._proofs)

    # ------------------------------------------------------------------ pruning

    async def prune_due(self) -> int:
        """Prune what is due: every task in ``pruned`` mode whose certified result this
        node holds keeps its settlement with proof, then loses its batches, gold reveals and
        attestations. Returns the number of messages deleted."""
        if self.replica.retain_batches_ms is None or self.finality is None:
            return 0
        deleted = 0
        for tid in sorted(self.tasks):
            if tid in self._pruned or self.replica_mode(tid) != PRUNED_MODE:
                continue
            if tid not in self._proofs:
                if tid in self.settlements:
                    continue  # a summary settlement (the domain was not followed then): nothing to prune
                cert, res = self.finality.certified_result(tid, settled=False)
                if cert is None or res is None or res.result_root != cert.result_root:
                    continue  # not certified (or not reproduced) here yet: keep everything
                await self.save_settlement(cert, res, proof=encode_result(res))
            doomed = [(tid, kind, mid) for kind in (KIND_BATCH, KIND_GOLD, KIND_ATTESTATION)
                      for mid in self.store.task_message_ids(tid, kind)]
            if doomed:
                n = await self.writer.write(self.store.delete_messages, doomed)
                for _, _, mid in doomed:
                    self.task_index.remove(tid, mid)
                    self.arrival_ms.pop(mid, None)
                deleted += n
            self._pruned.add(tid)
        if deleted:
            self.pruned_messages += deleted
            log.info("pruned %d messages of certified tasks", deleted)
        return deleted

    def replica_status(self) -> dict:
        """node_info's ``replication``: what this node follows and keeps."""
        by_mode = {FULL: 0, SUMMARY: 0, PRUNED_MODE: 0}
        for tid in self.tasks:
            by_mode[self.replica_mode(tid)] += 1
        return {**self.replica.as_json(), "domain_topics": sorted(self._domain_topics),
                "tasks_by_mode": by_mode, "task_stubs": len(self.stubs), "settlements": len(self.settlements),
                "proofs_kept": len(self._proofs), "pruned_messages": self.pruned_messages}

"""Certified finality service: drives ``protocol.finality.TaskFinality`` per task.

How it works
------------
Every node (validator or observer) keeps one TaskFinality per task and feeds it
every stored attestation (``on_attestation``; at start-up all stored attestations
are replayed first, so a restarted validator remembers its own votes and its
lock). Every ``tick_s`` it ticks each task that is past deadline + grace and not
yet certified. A validator node signs the intents the state machine returns
and ingests them like any message, so its own attestation is durably stored
before it is gossiped (a crash cannot make it equivocate).

The proposal handed to the state machine is the value over the node's own
current set, except when the round's leader has prevoted a value that this node
can check and that leaves nothing out: it holds every listed batch, recomputes
the same result_root over exactly them, and the list contains every batch the
node held when it first ticked past deadline + grace (its *snapshot*). Then the
leader's value is the proposal. So a leader whose set is merely *bigger* (late
or back-dated batches) is followed, a leader that misses a batch some validator
already held at grace end is not (and catches up through sync before a later
round), and an adversary who keeps injecting back-dated batches after grace end
cannot stall finality: they never enter a snapshot. Batches listed by the leader's prevote, by a polka
or by the certificate that this node lacks are fetched from peers.

Once certified, ``certified_result`` is the result over exactly the certified
batch ids, and it is what ``consensus_get`` reports.
"""
from __future__ import annotations

import logging

import trio

from protocol.errors import ValidationError
from protocol.finality import ROUND_AHEAD, TaskFinality, compute_round_start
from protocol.keep import compute_kept_batches
from protocol.messages import (
    ACCEPT, KIND_ATTESTATION, PHASE_PREVOTE, Attestation, SignedMessage, Verdict, decode_message,
    sign_message,
)

from ..core.replica import FULL, SUMMARY
from ..core.verdicts import DUPLICATE

log = logging.getLogger("labelmesh.finality")

SETTLEMENT_RETRY_S = 5.0  # a task's settlement is asked of peers again after this long
MAX_SETTLEMENTS_ASKED = 256  # per tick
PRUNE_EVERY_S = 5.0


class FinalityService:
    def __init__(self, node, signing_key=None, tick_s: float = 0.25):
        self.node = node
        self.key = signing_key
        self.me = bytes(signing_key.verify_key) if signing_key is not None else None
        self.validators = {a: w for a, w in node.genesis.validators}
        if self.me is not None and self.me not in self.validators:
            log.warning("account %s is not a genesis validator: running as an observer", self.me.hex()[:16])
            self.me, self.key = None, None
        self.tick_s = tick_s
        self.tasks: dict[bytes, TaskFinality] = {}
        self._pending: dict[bytes, list[SignedMessage]] = {}  # attestations the machine IGNOREd for now
        self._certified_logged: set[bytes] = set()
        self._certified_prepared: set[bytes] = set()  # certified result computed once (prepare_certified_result)
        self._votes_trimmed: set[bytes] = set()  # votes after the certificate's round deleted
        self._order: list = []  # the node's tasks by (deadline, id), re-sorted when one is added
        self._snapshots: dict[bytes, frozenset] = {}
        self.fetch_requests = 0
        self._asked: dict[bytes, float] = {}  # task -> trio time we last asked peers for its settlement
        self._next_prune = 0.0

    def machine(self, task_id: bytes) -> TaskFinality | None:
        fin = self.tasks.get(task_id)
        if fin is None:
            task = self.node.tasks.get(task_id)
            if task is None:
                return None
            fin = self.tasks[task_id] = TaskFinality(task_id, self.validators, self.me, task.deadline,
                                                     self.node.params)
        return fin

    def replay(self) -> None:
        """Feed every stored attestation to its task's machine (start-up)."""
        for task_id in list(self.node.tasks):
            for raw in self.node.store.task_messages(task_id, KIND_ATTESTATION):
                self.on_attestation(decode_message(raw, self.node.params))

    def on_attestation(self, msg: SignedMessage) -> None:
        fin = self.machine(msg.body.task_id)
        if fin is None:
            return
        v = fin.on_attestation(msg)
        if v == ROUND_AHEAD:
            self._pending.setdefault(msg.body.task_id, []).append(msg)

    def storage_verdict(self, msg: SignedMessage, pending: dict) -> Verdict:
        """TaskFinality.storage_verdict for a validated attestation; ``pending`` (one per
        write group, filled here) holds the values already admitted in the group."""
        fin = self.machine(msg.body.task_id)
        if fin is None:
            return ACCEPT
        att = msg.body
        key = (att.task_id, att.validator, att.round, att.phase)
        held = pending.setdefault(key, set())
        v = fin.storage_verdict(msg, held)
        if v.ok:
            held.add((att.set_root, att.result_root))
        return v

    def protected_batch_ids(self, task_id: bytes) -> frozenset:
        """Batches (and gold reveals) the node must not drop under the keep rule even when
        redundant: once the task is certified, the certified set (every node keeps exactly
        it, so every node can reproduce the result); before, the sets this validator
        prevoted (so a certificate made of its votes can be fetched from it)."""
        fin = self.tasks.get(task_id)
        if fin is None:
            return frozenset()
        if fin.certificate is not None:
            return frozenset(fin.certified_batch_ids or ())
        return frozenset(fin.get_own_prevoted_ids())

    def is_certified(self, task_id: bytes) -> bool:
        fin = self.tasks.get(task_id)
        return (fin is not None and fin.certificate is not None) or task_id in self.node.settlements

    # ------------------------------------------------------------------ loop

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.replay()
        task_status.started()
        while True:
            await self.tick()
            await trio.sleep(self.tick_s)

    async def tick(self) -> None:
        await self.node.reveal_due_gold()
        now = self.node.clock()
        p = self.node.params
        await self._fetch_settlements(now)
        await self._prune()
        # oldest first: a task's reputation snapshot needs the certified results of older
        # tasks, which are then already prepared (in the worker thread if big), not
        # computed inline on the loop (after a restart every certified result is recomputed)
        if len(self._order) != len(self.node.tasks):  # tasks are only ever added
            self._order = sorted(self.node.tasks.items(), key=lambda kv: (kv[1].deadline, kv[0]))
        for task_id, task in self._order:
            if now < task.deadline + p.grace_period_ms:
                continue
            mode = self.node.replica_mode(task_id)
            if mode != FULL:  # settled from its certified result (node/core/replica.py)
                if task_id in self.node.settlements:
                    if task_id not in self._certified_prepared:
                        self._certified_prepared.add(task_id)
                        self._settle(task_id)
                    continue
                held = self.tasks.get(task_id)
                if mode == SUMMARY or held is None or held.certificate is None:
                    continue  # its settlement is asked of peers (_fetch_settlements)
                # a task to prune that this node certified itself: settled as usual, pruned after
            fin = self.machine(task_id)
            if fin.certificate is not None:
                if task_id not in self._certified_logged:
                    self._certified_logged.add(task_id)
                    c = fin.certificate
                    log.info("task certified", extra={"task": task_id.hex()[:16], "round": c.round,
                                                      "result_root": c.result_root.hex()[:16]})
                    if self.node.metrics is not None:
                        self.node.metrics.observe_certified(task_id, now)
                await self._fetch_missing(task_id, fin)
                if task_id not in self._certified_prepared and await self.prepare_certified_result(task_id):
                    self._certified_prepared.add(task_id)
                    self._settle(task_id)
                    await self.node.drop_redundant(task_id, self.protected_batch_ids(task_id))
                if task_id not in self._votes_trimmed and await self._drop_votes_after_certificate(task_id, fin):
                    self._votes_trimmed.add(task_id)
                continue
            if not self.node.is_open_for_labels(task_id):
                continue  # its bounty is not escrowed: validators do not certify it (docs/ledger.md)
            for msg in self._pending.pop(task_id, []):
                self.on_attestation(msg)
            await self._fetch_missing(task_id, fin)
            try:
                proposal = await self._proposal(task_id, fin)
                now = self.node.clock()  # the proposal may have taken seconds (a big task's aggregation)
                intents = fin.on_tick(now, proposal)
            except ValidationError as e:  # a bug, not input: log and go on
                log.error("finality tick failed for %s: %s", task_id.hex()[:16], e)
                continue
            for it in intents:
                # never stamped before the round starts (peers REJECT that), even if the
                # clock stepped back after the machine entered the round
                created_at = max(now, compute_round_start(task.deadline, it.round, p))
                att = Attestation(validator=self.me, task_id=task_id, created_at=created_at, round=it.round,
                                  phase=it.phase, set_root=it.set_root, result_root=it.result_root,
                                  batch_ids=it.batch_ids if it.phase == PHASE_PREVOTE else ())
                msg = sign_message(att, self.key, self.node.network_id)
                v, _ = await self.node.ingest(msg.raw, "local", publish=True)
                if not v.ok and v != DUPLICATE:
                    log.error("own attestation refused: %s", v.reason)

    async def _fetch_settlements(self, now_ms: int) -> None:
        """Ask peers for the certificate and result of the tasks this node settles without
        their batches (node/core/replica.py), each at most every SETTLEMENT_RETRY_S."""
        if self.node.sync is None or self.node.replica.archive:
            return  # an archive node holds every task in full
        t = trio.current_time()
        want = [tid for tid in self.node.settlements_wanted(now_ms)
                if t - self._asked.get(tid, -SETTLEMENT_RETRY_S) >= SETTLEMENT_RETRY_S][:MAX_SETTLEMENTS_ASKED]
        if not want:
            return
        for tid in want:
            self._asked[tid] = t
        await self.node.sync.fetch_certified(want)
        for tid in want:
            if tid in self.node.settlements:
                self._asked.pop(tid, None)

    async def _prune(self) -> None:
        if self.node.replica.retain_batches_ms is None or trio.current_time() < self._next_prune:
            return
        self._next_prune = trio.current_time() + PRUNE_EVERY_S
        await self.node.prune_due()

    async def _proposal(self, task_id: bytes, fin: TaskFinality):
        """The value this node can vouch for now (see the module docstring)."""
        snap = self._snapshots.get(task_id)
        if snap is None:
            snap = self._snapshots[task_id] = frozenset(self.node.task_pinnable_ids(task_id))
        if fin.round >= 0:
            lv = fin.get_leader_value(fin.round)
            if lv is not None:
                ids = fin.get_batch_ids(lv[0])
                if (ids is not None and self._leaves_nothing_out(task_id, snap, ids)
                        and all(self.node.store.has(i) for i in ids)):
                    res = await self.node.prepare_result(task_id, ids)
                    if res.result_root == lv[1]:
                        return (res.set_root, res.result_root, res.batch_ids)
        res = await self.node.prepare_result(task_id)
        return (res.set_root, res.result_root, res.batch_ids)

    def _leaves_nothing_out(self, task_id: bytes, snap: frozenset, ids) -> bool:
        """Whether a leader's set ``ids`` holds every batch of this node's snapshot that still
        counts: a snapshot batch this node no longer holds (the keep rule dropped it), or one
        that the leader's set makes redundant (its annotator's batches in the set with smaller
        ids carry its labels, protocol/keep.py), need not be in it."""
        out = [i for i in snap.difference(ids) if self.node.store.has(i)]
        if not out:
            return True
        idset = set(ids)
        batches = self.node.task_batches(task_id, list(ids) + out)
        for i in out:
            b = batches.get(i)
            if b is None:  # a gold reveal: the smallest id is the one pinned
                if not any(g < i for g in idset if g not in batches):
                    return False
                continue
            mine = [(j, x) for j, x in batches.items() if j in idset and x.annotator == b.annotator]
            if i in compute_kept_batches(mine + [(i, b)]):
                return False
        return True

    async def _drop_votes_after_certificate(self, task_id: bytes, fin: TaskFinality) -> bool:
        """Delete the task's stored attestations from rounds after its certificate's: they
        can change nothing any more, and a node stores them or not depending on whether it
        held the certificate when they came (storage_verdict), so without this nodes would
        end with different sets. Done (True) once a prevote of the certificate's round or
        earlier lists the certified ids here (the later ones are then not needed for them)."""
        cert = fin.certificate
        after, listed = [], False
        ids = self.node.store.task_message_ids(task_id, KIND_ATTESTATION)
        for mid, raw in zip(ids, self.node.store.get_many(ids)):
            if raw is None:
                continue
            att = decode_message(raw, self.node.params).body
            if att.round > cert.round:
                after.append((task_id, KIND_ATTESTATION, mid))
            elif att.phase == PHASE_PREVOTE and att.set_root == cert.set_root:
                listed = True
        if not listed:
            return False
        await self.node.remove_messages(after)
        return True

    async def _fetch_missing(self, task_id: bytes, fin: TaskFinality) -> None:
        want = fin.missing_batch_ids(self.node.store.has)
        if fin.round >= 0:
            lv = fin.get_leader_value(fin.round)
            if lv is not None:
                want |= {i for i in (fin.get_batch_ids(lv[0]) or ()) if not self.node.store.has(i)}
        if want and self.node.sync is not None:
            self.fetch_requests += 1
            await self.node.sync.fetch_ids(sorted(want))

    # ------------------------------------------------------------------ results

    async def prepare_certified_result(self, task_id: bytes) -> bool:
        """Compute (off the event loop if big) and cache the result over the certified set
        if it is all here, so certified_result, reputation and the RPC find it cached.
        False if the task is not certified or certified messages are still missing."""
        fin = self.tasks.get(task_id)
        ids = fin.certified_batch_ids if fin is not None and fin.certificate is not None else None
        if ids is None or not all(self.node.store.has(i) for i in ids):
            return task_id in self.node.settlements  # settled from its certified result
        await self.node.prepare_result(task_id, ids)
        return True

    def _settle(self, task_id: bytes) -> None:
        """Release the escrow of a certified task whose certified result is reproduced here."""
        cert, res = self.certified_result(task_id)
        if res is not None and res.result_root == cert.result_root:
            self.node.settle_task(task_id, res)

    def certified_result(self, task_id: bytes, settled: bool = True):
        """(certificate, result over exactly the certified set) — result None while
        some certified batches are still being fetched. A task this node settled from
        its certified result (node/core/replica.py: a domain it does not follow, or a
        pruned task) gives the verified result it keeps (``settled``; a
        protocol.replica.ResultView)."""
        fin = self.tasks.get(task_id)
        if fin is not None and fin.certificate is not None:
            ids = fin.certified_batch_ids
            if ids is not None and all(self.node.store.has(i) for i in ids):
                return fin.certificate, self.node.compute_result(task_id, ids)
        if settled and task_id in self.node.settlements:
            return self.node.settled_view(task_id)
        if fin is None or fin.certificate is None:
            return None, None
        return fin.certificate, None

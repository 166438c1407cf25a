"""Certified finality of one task: a Tendermint-style two-phase vote, sans-IO.

How it works
------------
After a task's deadline + grace period, the genesis validators vote on a *value*
``(set_root, result_root)``: the exact annotation set and the result computed over
it. Voting runs in rounds; round ``r`` covers the wall-clock interval

    [deadline + grace + r*T, deadline + grace + (r+1)*T)      T = params.round_timeout_ms

and has two phases, PREVOTE then PRECOMMIT. ``q`` below is a *quorum*: validators
holding more than 2/3 of the total weight (integer test ``3*w > 2*total``).

* A **polka** for v in round r is a quorum of prevotes for v in round r.
* **Leader.** Each round has a leader drawn by weight from a hash of (task, round)
  (``compute_leader``). Its prevote is the round's proposal. It prevotes its own
  choice (below) at the round start (round 0) or T/5 after it (later rounds, so it
  has heard of every polka that locked someone in the previous round).
* **Own choice.** The value of the highest-round polka seen in an earlier round, if
  any, else the value over the validator's own current set (the node's
  ``proposal``). A locked validator uses its lock unless that polka is for another
  value and from a later round than its lock.
* **Prevote (followers).** As soon as the leader's prevote for r is known and
  *acceptable*, prevote it. Acceptable: if locked, it is the locked value or has a
  polka in a round after the lock (and before r); if not locked, it is the node's
  own proposal value or has a polka in some earlier round. Without an acceptable
  leader value by T*2/5 into the round, prevote the own choice. Nothing is
  prevoted while there is no choice (no proposal, no lock, no polka).
* **Precommit.** While in round r, on seeing a polka for v in round r, precommit v.
  The **lock** is the value of the validator's highest-round precommit (so it is a
  function of its own signed votes and survives a restart that replays them).
* **Certificate.** Precommits for one value in one round from a quorum, by signer.

Each validator signs at most one prevote and one precommit per round; the state
machine never returns the same (round, phase) twice. Two different values signed
by one validator in one (round, phase) is an **equivocation**: the pair is kept as
evidence. Counting (see docs/finality.md for why):

* prevote tallies: a validator counts once toward every value it signed in that
  round, and an equivocator counts toward *every* value of that round (its weight
  is a wildcard). Quorum knowledge only grows as messages arrive, so an
  equivocator cannot hide a polka from some honest validators by what it shows
  them; safety still holds because two quorums overlap in > 1/3 of the weight,
  which the < 1/3 faulty weight cannot cover alone.
* precommit tallies (certificates): signatures only; each validator at most once
  per value. A third-party verifier sees exactly the same thing.
* at most two distinct values are stored per (validator, round, phase): the
  evidence pair. Further ones change no tally and are IGNOREd. A node stores an
  attestation only if ``storage_verdict`` says so: not a third value, not the same
  vote signed again, and nothing from a round after a certificate it holds.

Safety (< 1/3 faulty weight): at most one value is ever certified for a task.
Liveness: once messages between honest validators arrive within D ms, clocks are
within E ms, ``5*(D + 2E) <= T`` and the honest validators' proposals agree (or a
polka exists), every round with an honest leader certifies. docs/finality.md has
the argument and the limits.

What the node must do: persist every attestation it signs *before* sending it
(a validator that forgets its votes after a crash can equivocate), and on start
feed the stored attestations of the task (its own included) to
``on_attestation`` before the first ``on_tick``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .codec import pack, sha256, unpack
from .errors import DecodeError, ValidationError
from .messages import (
    ACCEPT, PHASE_PRECOMMIT, PHASE_PREVOTE, AccountKey, Attestation, SignedMessage, TaskId, Verdict,
    compute_round_start, compute_set_root, decode_message, ignore, reject, verify_signature,
)
from .params import Params

#: IGNORE: an attestation for a round beyond what the local clock allows yet (retry
#: later); callers compare verdicts with this name, not with its reason text.
ROUND_AHEAD = ignore("round too far ahead of the local clock")

Value = tuple[bytes, bytes]          # (set_root, result_root)
Weight = int
Proposal = tuple[bytes, bytes, tuple[bytes, ...]]   # (set_root, result_root, sorted batch ids)
Slot = tuple[int, int]               # (round, phase)

CERT_VERSION = 1
LEADER_TAG = b"labelmesh/finality-leader/v1\x00"
MAX_CERT_ATTESTATIONS = 1000         # = protocol.genesis.MAX_VALIDATORS


# --------------------------------------------------------------------------- pure helpers


def is_quorum(weight: Weight, total: Weight) -> bool:
    """True iff ``weight`` is more than 2/3 of ``total`` (exact integer test)."""
    return 3 * weight > 2 * total


def compute_round(deadline: int, now_ms: int, params: Params) -> int:
    """The round in progress at ``now_ms``, or -1 before round 0 starts."""
    start = compute_round_start(deadline, 0, params)
    if now_ms < start:
        return -1
    return (now_ms - start) // params.round_timeout_ms


def compute_horizon(round_: int, params: Params) -> int:
    """Highest round accepted from other validators while the current round is ``round_``
    (-1 before round 0 counts as 0): an honest validator's clock may run up to
    clock_skew_ms ahead of ours, so allow that many rounds past the current one."""
    return max(round_, 0) + params.clock_skew_ms // params.round_timeout_ms + 1


def compute_leader(task_id: TaskId, round_: int, validators: dict[AccountKey, Weight]) -> AccountKey:
    """The leader of ``round_``: drawn with probability proportional to weight from
    sha256(tag || task_id || round as 8 bytes), walking the validators in key order.
    Same answer on every node; independent draws per round."""
    total = sum(validators.values())
    x = int.from_bytes(sha256(LEADER_TAG + task_id + round_.to_bytes(8, "big")), "big") % total
    for account in sorted(validators):
        x -= validators[account]
        if x < 0:
            return account
    raise AssertionError("unreachable: weights sum to total")


def _check_validators(validators: dict[AccountKey, Weight]) -> None:
    if not validators:
        raise ValidationError("finality needs at least one validator")
    for account, w in validators.items():
        if type(account) is not bytes or len(account) != 32:
            raise ValidationError("validator accounts must be 32-byte public keys")
        if type(w) is not int or w <= 0:
            raise ValidationError(f"validator {account.hex()} must have a positive integer weight")


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class AttestIntent:
    """An attestation the local validator should sign now (the node adds validator,
    task_id and created_at, signs it, persists it, feeds it back to
    ``on_attestation`` and gossips it). ``batch_ids`` is empty for a precommit."""

    round: int
    phase: int
    set_root: bytes
    result_root: bytes
    batch_ids: tuple[bytes, ...]


@dataclass(frozen=True)
class Certificate:
    """Precommits for one value in one round from validators holding > 2/3 of the
    weight. ``attestations`` are the signed envelopes (``SignedMessage`` whose body is
    an ``Attestation``), one per validator, sorted by validator key, so the
    certificate can be verified and re-encoded by anyone."""

    task_id: TaskId
    round: int
    set_root: bytes
    result_root: bytes
    attestations: tuple[SignedMessage, ...]

    @property
    def value(self) -> Value:
        return (self.set_root, self.result_root)


def _value(att: Attestation) -> Value:
    return (att.set_root, att.result_root)


def _is_consistent(msg: SignedMessage) -> bool:
    """The decoded body is what was signed, and the envelope wraps exactly those bytes.
    (A hand-built SignedMessage could otherwise pair a real signature with other fields.)"""
    return pack(msg.body.body_fields()) == msg.body_bytes and pack([msg.body_bytes, msg.signature]) == msg.raw


def _check_attestation_shape(att: Attestation) -> str:
    """Empty string if the attestation is well formed, else the reason."""
    if att.phase == PHASE_PREVOTE:
        ids = att.batch_ids
        if any(ids[i] >= ids[i + 1] for i in range(len(ids) - 1)):
            return "attestation batch ids must be sorted and distinct"
        if compute_set_root(att.task_id, ids) != att.set_root:
            return "set_root does not match the listed batch ids"
        return ""
    if att.phase == PHASE_PRECOMMIT:
        return "a precommit lists no batch ids" if att.batch_ids else ""
    return f"unknown attestation phase {att.phase}"


# --------------------------------------------------------------------------- state machine


class TaskFinality:
    """Finality state of one task on one node (validator or observer).

    ``validators`` maps account -> positive integer weight (the genesis set);
    ``me`` is the local validator account, or None for an observer that only
    assembles certificates; ``deadline`` is the task's deadline (ms).
    Raises ValidationError on a malformed validator set or a ``me`` outside it.
    """

    def __init__(self, task_id: TaskId, validators: dict[AccountKey, Weight], me: AccountKey | None,
                 deadline: int, params: Params):
        _check_validators(validators)
        if me is not None and me not in validators:
            raise ValidationError("the local account is not a validator; pass me=None for an observer")
        self.task_id = task_id
        self.validators = dict(validators)
        self.total_weight: Weight = sum(validators.values())
        self.me = me
        self.deadline = deadline
        self.params = params
        self.round = -1                       # round in progress at the last tick; -1 = not started
        self.locked: Value | None = None      # value of my highest-round precommit
        self.locked_round = -1
        self.certificate: Certificate | None = None
        self.conflicting_certificate: Certificate | None = None   # proof that >= 1/3 of the weight is faulty
        # votes[(round, phase)][validator] = {value: signed attestation}, at most 2 values
        self._votes: dict[Slot, dict[AccountKey, dict[Value, SignedMessage]]] = {}
        self._single: dict[Slot, dict[Value, Weight]] = {}   # weight of non-equivocators per value
        self._signed: dict[Slot, dict[Value, Weight]] = {}   # weight of distinct signers per value
        self._equivocating: dict[Slot, Weight] = {}          # weight of equivocators in the slot
        self._polkas: dict[int, Value] = {}                  # round -> value with a prevote quorum
        self._ids: dict[bytes, tuple[bytes, ...]] = {}       # set_root -> sorted batch ids
        self._sent: dict[Slot, Value] = {}                   # my own votes
        self._evidence: dict[tuple[AccountKey, int, int], tuple[SignedMessage, SignedMessage]] = {}
        self._checked_proposal: Proposal | None = None     # last proposal validated (nodes re-send it every tick)

    # ----------------------------------------------------------------- queries

    @property
    def evidence(self) -> list[tuple[SignedMessage, SignedMessage]]:
        """Equivocations seen, one pair per (validator, round, phase), sorted by that key;
        each pair is sorted by envelope bytes."""
        return [self._evidence[k] for k in sorted(self._evidence)]

    def get_leader(self, round_: int) -> AccountKey:
        return compute_leader(self.task_id, round_, self.validators)

    def get_polka(self, round_: int) -> Value | None:
        """The value with a prevote quorum in ``round_``, if one is known."""
        return self._polkas.get(round_)

    def get_leader_value(self, round_: int) -> Value | None:
        """The value the leader of ``round_`` prevoted, if known (None if it equivocated)."""
        return self._leader_value(round_, self.get_leader(round_))

    def get_batch_ids(self, set_root: bytes) -> tuple[bytes, ...] | None:
        """The sorted batch ids behind ``set_root``, if any prevote listing them is known."""
        return self._ids.get(set_root)

    @property
    def certified_batch_ids(self) -> tuple[bytes, ...] | None:
        """The exact annotation set the certificate pins (None until both are known)."""
        if self.certificate is None:
            return None
        return self._ids.get(self.certificate.set_root)

    def get_own_prevoted_ids(self) -> set[bytes]:
        """The batch ids of every value the local validator prevoted (known ids only):
        what it vouched for, and must go on holding until the task is certified."""
        out: set[bytes] = set()
        for (_, phase), value in self._sent.items():
            if phase == PHASE_PREVOTE:
                out.update(self._ids.get(value[0], ()))
        return out

    def missing_batch_ids(self, have: Callable[[bytes], bool]) -> set[bytes]:
        """Batch ids listed by prevotes of a polka value or of the certified value that
        ``have(id)`` says we do not hold: what to fetch through sync."""
        roots = {v[0] for v in self._polkas.values()}
        if self.certificate is not None:
            roots.add(self.certificate.set_root)
        out: set[bytes] = set()
        for root in sorted(roots):
            out.update(i for i in self._ids.get(root, ()) if not have(i))
        return out

    def status(self) -> dict:
        """JSON-friendly summary for RPC and logs."""
        hexv = lambda v: None if v is None else {"set_root": v[0].hex(), "result_root": v[1].hex()}
        cert = self.certificate
        return {
            "task_id": self.task_id.hex(),
            "round": self.round,
            "role": "observer" if self.me is None else "validator",
            "leader": self.get_leader(self.round).hex() if self.round >= 0 else None,
            "locked": hexv(self.locked),
            "locked_round": self.locked_round,
            "polkas": [{"round": r, **hexv(v)} for r, v in sorted(self._polkas.items())],
            "votes_sent": [{"round": r, "phase": "prevote" if p == PHASE_PREVOTE else "precommit", **hexv(v)}
                           for (r, p), v in sorted(self._sent.items())],
            "certificate": None if cert is None else {
                "round": cert.round, **hexv(cert.value), "signers": len(cert.attestations),
                "weight": sum(self.validators[a.body.validator] for a in cert.attestations),
                "total_weight": self.total_weight},
            "conflicting_certificate": self.conflicting_certificate is not None,
            "equivocations": len(self._evidence),
        }

    # ----------------------------------------------------------------- storage

    def storage_verdict(self, msg: SignedMessage, pending: set[Value] = frozenset()) -> Verdict:
        """Whether a node should store an attestation that passed ``check_message``
        (storage policy, never a validity rule: it IGNOREs, never REJECTs).

        Store only what can still change a tally or a certificate here: a new value of
        another validator in a (round, phase) where it has fewer than two (``pending``:
        the values of this validator, round and phase admitted but not yet fed to
        ``on_attestation``, e.g. earlier in the same write); once the task is certified,
        nothing from a round after the certificate's, except a prevote for the
        certified value while its batch ids are unknown here.  Without this rule a
        faulty validator could make every node store a vote per value, per re-signing
        and per past round, for ever (SECURITY.md).  The local validator's own votes
        are always stored (replay after a restart)."""
        att = msg.body
        if not isinstance(att, Attestation) or att.task_id != self.task_id or att.validator == self.me:
            return ACCEPT
        value = _value(att)
        held = set(self._votes.get((att.round, att.phase), {}).get(att.validator, ())) | set(pending)
        if value in held:
            return ignore("attestation not stored: this validator's vote for that value, round and phase "
                          "is held already (signed again)")
        if len(held) >= 2:
            return ignore("attestation not stored: this validator's equivocation in that round and phase "
                          "is held already")
        cert = self.certificate
        if cert is not None and att.round > cert.round and not (
                att.phase == PHASE_PREVOTE and value == cert.value and cert.set_root not in self._ids):
            return ignore(f"attestation not stored: the task is certified in round {cert.round}; "
                          f"later rounds cannot change it")
        return ACCEPT

    # ----------------------------------------------------------------- input

    def on_attestation(self, msg: SignedMessage) -> Verdict:
        """Record a signature-verified attestation (``msg.body`` is an Attestation).

        Idempotent. Returns ACCEPT if it changed the state, IGNORE for a duplicate,
        another task, a round too far ahead of the local clock (retry later), or a
        third value from a validator already caught equivocating in that
        (round, phase); REJECT if it is malformed or not from a validator. Invalid
        input leaves the state untouched.
        """
        att = msg.body
        if not isinstance(att, Attestation):
            return reject("not an attestation")
        if att.task_id != self.task_id:
            return ignore("attestation for another task")
        weight = self.validators.get(att.validator, 0)
        if weight <= 0:
            return reject("attestation signer is not a validator of this network")
        problem = _check_attestation_shape(att)
        if problem:
            return reject(problem)
        if not _is_consistent(msg):
            return reject("attestation fields do not match the signed bytes")
        if att.validator != self.me and att.round > self._round_horizon():
            return ROUND_AHEAD
        slot = (att.round, att.phase)
        value = _value(att)
        theirs = self._votes.setdefault(slot, {}).setdefault(att.validator, {})
        if value in theirs:
            if msg.raw < theirs[value].raw:   # same vote signed twice: keep the smaller copy,
                theirs[value] = msg           # so what we store does not depend on arrival order
                if len(theirs) == 2:
                    self._record_evidence(att, theirs)
            return ignore("duplicate vote")
        if len(theirs) >= 2:
            return ignore("validator already equivocated in this round and phase")
        theirs[value] = msg
        if att.phase == PHASE_PREVOTE:
            self._ids.setdefault(att.set_root, att.batch_ids)
        single = self._single.setdefault(slot, {})
        if len(theirs) == 1:
            single[value] = single.get(value, 0) + weight
        else:                                 # equivocation: from now on a wildcard (module doc)
            (first,) = [v for v in theirs if v != value]
            single[first] -= weight
            self._equivocating[slot] = self._equivocating.get(slot, 0) + weight
            self._record_evidence(att, theirs)
        signed = self._signed.setdefault(slot, {})
        signed[value] = signed.get(value, 0) + weight
        if att.validator == self.me:
            self._record_own(slot, value)
        if att.phase == PHASE_PREVOTE:
            self._update_polka(att.round)
        else:
            self._update_certificate(att.round, value)
        return ACCEPT

    def on_tick(self, now_ms: int, proposal: Proposal | None) -> list[AttestIntent]:
        """Advance to the round in progress at ``now_ms`` and return the attestations
        the local validator should sign now (prevote before precommit; never a
        (round, phase) twice; none for observers or once certified).

        ``proposal`` = (set_root, result_root, sorted batch ids) over the node's
        current set, or None if it cannot compute yet. Raises ValidationError if the
        ids are unsorted or do not hash to set_root (the state is left untouched).
        """
        if proposal is not None and proposal != self._checked_proposal:
            self._check_proposal(proposal)
            self._checked_proposal = proposal
        r = compute_round(self.deadline, now_ms, self.params)
        if r > self.round:
            self.round = r            # rounds never go back, even if the clock does
        r = self.round
        if self.me is None or r < 0 or self.certificate is not None:
            return []
        out: list[AttestIntent] = []
        if (r, PHASE_PREVOTE) not in self._sent:
            choice = self._choose_prevote(now_ms, r, proposal)
            if choice is not None:
                if proposal is not None and choice == (proposal[0], proposal[1]):
                    self._ids.setdefault(proposal[0], tuple(proposal[2]))
                ids = self._ids.get(choice[0])
                if ids is not None:   # always known: the value came from a prevote or the proposal
                    self._record_own((r, PHASE_PREVOTE), choice)
                    out.append(AttestIntent(r, PHASE_PREVOTE, choice[0], choice[1], ids))
        polka = self._polkas.get(r)
        if polka is not None and (r, PHASE_PRECOMMIT) not in self._sent:
            self._record_own((r, PHASE_PRECOMMIT), polka)
            out.append(AttestIntent(r, PHASE_PRECOMMIT, polka[0], polka[1], ()))
        return out

    # ----------------------------------------------------------------- internals

    def _round_horizon(self) -> int:
        """Highest round accepted from others (see compute_horizon)."""
        return compute_horizon(self.round, self.params)

    def _check_proposal(self, proposal: Proposal) -> None:
        if type(proposal) is not tuple or len(proposal) != 3:
            raise ValidationError("proposal must be (set_root, result_root, sorted batch ids)")
        set_root, result_root, ids = proposal
        ids = tuple(ids)
        if any(ids[i] >= ids[i + 1] for i in range(len(ids) - 1)):
            raise ValidationError("proposal batch ids must be sorted and distinct")
        if compute_set_root(self.task_id, ids) != set_root:
            raise ValidationError("proposal set_root does not match its batch ids")
        if type(result_root) is not bytes or len(result_root) != 32:
            raise ValidationError("proposal result_root must be 32 bytes")

    def _record_evidence(self, att: Attestation, theirs: dict[Value, SignedMessage]) -> None:
        a, b = sorted(theirs.values(), key=lambda m: m.raw)
        self._evidence[(att.validator, att.round, att.phase)] = (a, b)

    def _record_own(self, slot: Slot, value: Value) -> None:
        self._sent.setdefault(slot, value)
        r, phase = slot
        if phase == PHASE_PRECOMMIT and r > self.locked_round:
            self.locked, self.locked_round = self._sent[slot], r

    def _update_polka(self, round_: int) -> None:
        if round_ in self._polkas:
            return                   # tallies only grow: a polka never disappears
        slot = (round_, PHASE_PREVOTE)
        wild = self._equivocating.get(slot, 0)
        single = self._single[slot]
        found = [v for v in self._signed[slot] if is_quorum(single.get(v, 0) + wild, self.total_weight)]
        if found:
            self._polkas[round_] = min(found)   # two only if >= 1/3 is faulty; fixed tie-break

    def _update_certificate(self, round_: int, value: Value) -> None:
        slot = (round_, PHASE_PRECOMMIT)
        if not is_quorum(self._signed[slot][value], self.total_weight):
            return
        if self.certificate is not None:
            if self.certificate.value != value and self.conflicting_certificate is None:
                self.conflicting_certificate = self._build_certificate(round_, value)
            return
        self.certificate = self._build_certificate(round_, value)

    def _build_certificate(self, round_: int, value: Value) -> Certificate:
        per = self._votes[(round_, PHASE_PRECOMMIT)]
        atts = tuple(per[v][value] for v in sorted(per) if value in per[v])
        return Certificate(self.task_id, round_, value[0], value[1], atts)

    def _highest_polka_before(self, round_: int) -> tuple[int, Value] | None:
        rounds = [r for r in self._polkas if r < round_]
        if not rounds:
            return None
        best = max(rounds)
        return best, self._polkas[best]

    def _own_choice(self, round_: int, proposal: Proposal | None) -> Value | None:
        polka = self._highest_polka_before(round_)
        if self.locked is not None:
            if polka is not None and polka[0] > self.locked_round and polka[1] != self.locked:
                return polka[1]
            return self.locked
        if polka is not None:
            return polka[1]
        if proposal is not None:
            return (proposal[0], proposal[1])
        return None

    def _is_acceptable(self, value: Value, round_: int, proposal: Proposal | None) -> bool:
        if self.locked is not None:
            if value == self.locked:
                return True
            return any(self.locked_round < r < round_ and v == value for r, v in self._polkas.items())
        if proposal is not None and value == (proposal[0], proposal[1]):
            return True
        return any(r < round_ and v == value for r, v in self._polkas.items())

    def _leader_value(self, round_: int, leader: AccountKey) -> Value | None:
        per = self._votes.get((round_, PHASE_PREVOTE), {}).get(leader, {})
        if len(per) != 1:
            return None              # no prevote yet, or the leader equivocated: ignore it
        return next(iter(per))

    def _choose_prevote(self, now_ms: int, round_: int, proposal: Proposal | None) -> Value | None:
        start = compute_round_start(self.deadline, round_, self.params)
        timeout = self.params.round_timeout_ms
        leader = self.get_leader(round_)
        if leader == self.me:
            if round_ > 0 and now_ms < start + timeout // 5:
                return None          # give the previous round's polkas time to reach us
            return self._own_choice(round_, proposal)
        offered = self._leader_value(round_, leader)
        if offered is not None and self._is_acceptable(offered, round_, proposal):
            return offered
        if now_ms >= start + 2 * timeout // 5:
            return self._own_choice(round_, proposal)
        return None


# --------------------------------------------------------------------------- certificates


def verify_certificate(cert: Certificate, validators: dict[AccountKey, Weight], network_id: bytes) -> bool:
    """True iff every attestation is a consistent, validly signed precommit for the
    certificate's task, round and value, by distinct validators of ``validators``
    whose weights sum to more than 2/3 of the total. Never raises on a bad certificate."""
    try:
        _check_validators(validators)
    except ValidationError:
        return False
    total = sum(validators.values())
    seen: set[AccountKey] = set()
    weight = 0
    for msg in cert.attestations:
        att = getattr(msg, "body", None)
        if not isinstance(att, Attestation):
            return False
        if (att.phase != PHASE_PRECOMMIT or att.task_id != cert.task_id or att.round != cert.round
                or _value(att) != cert.value or att.batch_ids):
            return False
        if att.validator in seen or att.validator not in validators:
            return False
        if not _is_consistent(msg) or not verify_signature(msg, network_id):
            return False
        seen.add(att.validator)
        weight += validators[att.validator]
    return is_quorum(weight, total)


def encode_certificate(cert: Certificate) -> bytes:
    """Canonical bytes: msgpack ``[version, [attestation envelope, ...]]`` with the
    envelopes sorted by validator key. Task, round and value are read from them."""
    envs = [m.raw for m in sorted(cert.attestations, key=lambda m: m.body.validator)]
    return pack([CERT_VERSION, envs])


def decode_certificate(data: bytes, params: Params) -> Certificate:
    """Inverse of ``encode_certificate``. Checks structure only (one task, round, value,
    precommits, strictly increasing validators, canonical bytes); signatures and
    weights are ``verify_certificate``'s job. Raises DecodeError."""
    top = unpack(data, max_bytes=params.max_message_bytes, max_array=MAX_CERT_ATTESTATIONS,
                 max_bin=params.max_message_bytes, max_str=0)
    if type(top) is not list or len(top) != 2:
        raise DecodeError("certificate must be [version, [attestations]]")
    if top[0] != CERT_VERSION or type(top[0]) is not int:
        raise DecodeError(f"unsupported certificate version {top[0]!r}; this node speaks {CERT_VERSION}")
    envs = top[1]
    if type(envs) is not list or not envs:
        raise DecodeError("certificate must hold at least one attestation")
    msgs = []
    for raw in envs:
        if type(raw) is not bytes:
            raise DecodeError("certificate attestations must be message envelopes (bytes)")
        msg = decode_message(raw, params)
        if not isinstance(msg.body, Attestation) or msg.body.phase != PHASE_PRECOMMIT:
            raise DecodeError("a certificate holds precommit attestations only")
        msgs.append(msg)
    first = msgs[0].body
    for a, b in zip(msgs, msgs[1:]):
        if a.body.validator >= b.body.validator:
            raise DecodeError("certificate attestations must be sorted by validator, one each")
    for m in msgs:
        b = m.body
        if (b.task_id, b.round, b.set_root, b.result_root) != (first.task_id, first.round, first.set_root,
                                                                first.result_root):
            raise DecodeError("certificate attestations disagree on task, round or value")
        if b.batch_ids:
            raise DecodeError("a precommit lists no batch ids")
    return Certificate(first.task_id, first.round, first.set_root, first.result_root, tuple(msgs))

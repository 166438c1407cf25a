"""Certified finality (protocol/finality.py): unit tests and a deterministic simulator.

The simulator runs N TaskFinality instances (validators, Byzantine validators and
observers) exchanging signed attestations over an in-memory network on a fake
clock, with seeded random delays, drops, partitions, clock offsets, gossip relay
and periodic anti-entropy. Everything is driven by ``random.Random(seed)``, so a
failing seed replays exactly.
"""
from __future__ import annotations

import heapq
import random
import subprocess
import sys
from dataclasses import replace

import pytest

from protocol.codec import pack, sha256
from protocol.errors import DecodeError, ValidationError
from protocol.finality import (
    AttestIntent, Certificate, TaskFinality, compute_leader, compute_round, compute_round_start,
    decode_certificate, encode_certificate, is_quorum, verify_certificate,
)
from protocol.messages import (
    PHASE_PRECOMMIT, PHASE_PREVOTE, Attestation, Outcome, SignedMessage, compute_set_root, sign_message,
)
from protocol.params import Params

from .helpers import T0, key

P = Params(grace_period_ms=1_000, round_timeout_ms=2_000).validate()
T = P.round_timeout_ms
NET = sha256(b"finality-test-network")
OTHER_NET = sha256(b"another-network")
TASK = sha256(b"finality-test-task")
DEADLINE = T0
START = DEADLINE + P.grace_period_ms
STEP = 50            # simulator tick (ms)
AE_MS = 500          # anti-entropy period (ms)

KEYS = [key(3000 + i) for i in range(12)]
PKS = [bytes(k.verify_key) for k in KEYS]
IDX = {pk: i for i, pk in enumerate(PKS)}

B = [sha256(b"batch%d" % i) for i in range(6)]   # batch ids
BASE = frozenset(B[:3])
WITH_X = BASE | {B[3]}


def proposal_of(ids) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    """What a node computes over its set: the set root and a result root derived from it."""
    ids = tuple(sorted(ids))
    root = compute_set_root(TASK, ids)
    return root, sha256(b"result" + root), ids


def value_of(ids) -> tuple[bytes, bytes]:
    return proposal_of(ids)[:2]


JUNK = proposal_of({sha256(b"junk")})


def att(i: int, round_: int, phase: int, prop, created_at: int = START, task: bytes = TASK,
        net: bytes = NET) -> SignedMessage:
    """Validator i's signed attestation for ``prop`` = (set_root, result_root, ids)."""
    ids = tuple(prop[2]) if phase == PHASE_PREVOTE else ()
    body = Attestation(validator=PKS[i], task_id=task, created_at=created_at, round=round_, phase=phase,
                       set_root=prop[0], result_root=prop[1], batch_ids=ids)
    return sign_message(body, KEYS[i], net)


def vals(n: int, weights=None) -> dict[bytes, int]:
    return {PKS[i]: (weights[i] if weights else 1) for i in range(n)}


def sign_intent(i: int, it: AttestIntent, now: int) -> SignedMessage:
    body = Attestation(validator=PKS[i], task_id=TASK, created_at=now, round=it.round, phase=it.phase,
                       set_root=it.set_root, result_root=it.result_root, batch_ids=it.batch_ids)
    return sign_message(body, KEYS[i], NET)


# --------------------------------------------------------------------------- simulator


class Node:
    def __init__(self, idx: int, kind: str, fin: TaskFinality, offset: int):
        self.idx = idx              # validator index, or -1 - k for observer k
        self.kind = kind            # honest | observer | silent | split | adaptive
        self.fin = fin
        self.offset = offset        # local clock = global time + offset
        self.known: dict[bytes, SignedMessage] = {}   # the node's store of accepted attestations
        self.plan: dict[int, dict] = {}               # Byzantine: per-round plan
        self.sent_to: set[tuple] = set()              # Byzantine: (dst, round, phase, value) already sent

    @property
    def relays(self) -> bool:
        return self.kind in ("honest", "observer")


class Sim:
    """In-memory network of finality state machines; see the module docstring."""

    def __init__(self, seed: int, weights, kinds, *, sets, n_observers: int = 1, gst: int = START,
                 pre_drop: float = 0.0, pre_delay: int = 100, delay: int = 100, partition=None, skew: int = 0):
        self.rng = random.Random(seed)
        self.validators = {PKS[i]: w for i, w in enumerate(weights)}
        self.nodes: list[Node] = []
        for i, kind in enumerate(kinds):
            fin = TaskFinality(TASK, self.validators, PKS[i], DEADLINE, P)
            self.nodes.append(Node(i, kind, fin, self.rng.randint(-skew, skew)))
        for k in range(n_observers):
            fin = TaskFinality(TASK, self.validators, None, DEADLINE, P)
            self.nodes.append(Node(-1 - k, "observer", fin, self.rng.randint(-skew, skew)))
        self.sets = sets                      # (validator index, global time) -> frozenset of batch ids
        self.gst, self.pre_drop, self.pre_delay, self.delay = gst, pre_drop, pre_delay, delay
        self.partition = partition            # global time -> None (connected) or groups: a link exists iff
        #                                       some group (a set of node positions) holds both ends
        self.t = DEADLINE
        self.queue: list = []
        self.seq = 0
        self._props: dict[frozenset, tuple] = {}

    # ---- network
    def _linked(self, a: int, b: int, t: int) -> bool:
        groups = self.partition(t) if self.partition else None
        return groups is None or any(a in g and b in g for g in groups)

    def send(self, src: int, dst: int, msg: SignedMessage) -> None:
        t = self.t
        if not self._linked(src, dst, t):
            return
        if t < self.gst and self.rng.random() < self.pre_drop:
            return
        d = self.rng.randint(1, self.pre_delay if t < self.gst else self.delay)
        self.seq += 1
        heapq.heappush(self.queue, (t + d, self.seq, dst, msg))

    def broadcast(self, src: int, msg: SignedMessage) -> None:
        for dst in range(len(self.nodes)):
            if dst != src:
                self.send(src, dst, msg)

    def deliver_due(self) -> None:
        while self.queue and self.queue[0][0] <= self.t:
            _, _, dst, msg = heapq.heappop(self.queue)
            node = self.nodes[dst]
            if msg.raw in node.known:       # the node dedupes by message id before finality sees it
                continue
            if node.fin.on_attestation(msg).outcome is Outcome.ACCEPT:
                node.known[msg.raw] = msg
                if node.relays:
                    self.broadcast(dst, msg)

    def anti_entropy(self) -> None:
        """Each relaying node pulls what it lacks from one random peer it can reach."""
        n = len(self.nodes)
        for pos, node in enumerate(self.nodes):
            if not node.relays:
                continue
            peer = self.rng.randrange(n - 1)
            peer += peer >= pos
            src = self.nodes[peer]
            if not src.relays:
                continue
            for raw in sorted(src.known.keys() - node.known.keys()):
                self.send(peer, pos, src.known[raw])

    # ---- nodes
    def proposal(self, i: int):
        s = self.sets(i, self.t)
        if s not in self._props:
            self._props[s] = proposal_of(s)
        return self._props[s]

    def honest_values(self) -> list:
        return sorted({self.proposal(n.idx) for n in self.nodes if n.kind == "honest"} | {JUNK})

    def tick_node(self, pos: int) -> None:
        node = self.nodes[pos]
        now = self.t + node.offset
        if node.kind == "observer":
            node.fin.on_tick(now, None)
        elif node.kind == "honest":
            for it in node.fin.on_tick(now, self.proposal(node.idx)):
                msg = sign_intent(node.idx, it, now)
                assert node.fin.on_attestation(msg).outcome is Outcome.ACCEPT   # persist, then feed back
                node.known[msg.raw] = msg
                self.broadcast(pos, msg)
        elif node.kind == "split":
            self._byz_split(pos, node, now)
        elif node.kind == "adaptive":
            self._byz_adaptive(pos, node, now)

    def _byz_send(self, pos: int, node: Node, dst: int, round_: int, phase: int, prop) -> None:
        k = (dst, round_, phase, prop[:2])
        if k not in node.sent_to:
            node.sent_to.add(k)
            self.send(pos, dst, att(node.idx, round_, phase, prop))

    def _byz_split(self, pos: int, node: Node, now: int) -> None:
        """Each round, prevote and precommit value A to a random half of the nodes and
        value B to the other half, at random times."""
        r = compute_round(DEADLINE, now, P)
        if r < 0:
            return
        if r not in node.plan:
            start = compute_round_start(DEADLINE, r, P)
            others = [p for p in range(len(self.nodes)) if p != pos]
            self.rng.shuffle(others)
            cut = self.rng.randint(0, len(others))
            a, b = self.rng.sample(self.honest_values(), 2)
            node.plan[r] = dict(pv=start + self.rng.randrange(T), pc=start + self.rng.randrange(T),
                                halves=(others[:cut], others[cut:]), values=(a, b), done=set())
        plan = node.plan[r]
        for phase, when in ((PHASE_PREVOTE, plan["pv"]), (PHASE_PRECOMMIT, plan["pc"])):
            if now >= when and phase not in plan["done"]:
                plan["done"].add(phase)
                for half, v in zip(plan["halves"], plan["values"]):
                    for dst in half:
                        self._byz_send(pos, node, dst, r, phase, v)

    def _byz_adaptive(self, pos: int, node: Node, now: int) -> None:
        """Omniscient: tell every node, every round, a prevote for what that node itself
        prevotes (or proposes), and a precommit for whatever polka that node sees —
        pushing each honest node toward certifying its own favourite."""
        r = compute_round(DEADLINE, now, P)
        if r < 0:
            return
        for dst, other in enumerate(self.nodes):
            if dst == pos or other.kind not in ("honest", "observer"):
                continue
            mine = other.fin._sent.get((r, PHASE_PREVOTE))
            if mine is None and other.kind == "honest":
                mine = self.proposal(other.idx)[:2]
            if mine is not None:
                self._byz_send(pos, node, dst, r, PHASE_PREVOTE, self._prop_for(mine))
            polka = other.fin.get_polka(r)
            if polka is not None:
                self._byz_send(pos, node, dst, r, PHASE_PRECOMMIT, self._prop_for(polka))

    def _prop_for(self, value):
        for p in self.honest_values():
            if p[:2] == value:
                return p
        for p in self._props.values():
            if p[:2] == value:
                return p
        raise AssertionError("unknown value")

    # ---- driving
    def watched(self) -> list[Node]:
        return [n for n in self.nodes if n.kind in ("honest", "observer")]

    def all_certified(self) -> bool:
        return all(n.fin.certificate is not None for n in self.watched())

    def run(self, until: int, stop_when_certified: bool = True) -> "Sim":
        while self.t < until:
            self.deliver_due()
            if (self.t - DEADLINE) % AE_MS == 0:
                self.anti_entropy()
            for pos in range(len(self.nodes)):
                self.tick_node(pos)
            if stop_when_certified and self.all_certified():
                break
            self.t += STEP
        return self

    def certified_values(self) -> set:
        return {n.fin.certificate.value for n in self.watched() if n.fin.certificate is not None}

    def assert_safe(self) -> None:
        assert len(self.certified_values()) <= 1, "two different values certified"
        honest = {PKS[n.idx] for n in self.nodes if n.kind == "honest"}
        for n in self.watched():
            assert n.fin.conflicting_certificate is None
            for a, b in n.fin.evidence:
                assert a.body.validator not in honest, "an honest validator equivocated"


def round_at(r: int, frac: float = 0.0) -> int:
    return compute_round_start(DEADLINE, r, P) + int(frac * T)


# --------------------------------------------------------------------------- basic rules


def test_finality_imports_no_io():
    code = ("import sys, protocol.finality;"
            "bad=[m for m in ('trio','lmdb','libp2p','socket','node') if m in sys.modules];"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_quorum_is_strictly_more_than_two_thirds():
    assert not is_quorum(2, 3) and is_quorum(3, 3)
    assert not is_quorum(2, 4) and is_quorum(3, 4)
    assert not is_quorum(4, 6) and is_quorum(5, 6)
    assert not is_quorum(2 * 10**12, 3 * 10**12) and is_quorum(2 * 10**12 + 1, 3 * 10**12)


def test_round_schedule():
    assert compute_round(DEADLINE, START - 1, P) == -1
    assert compute_round(DEADLINE, START, P) == 0
    assert compute_round(DEADLINE, START + T - 1, P) == 0
    assert compute_round(DEADLINE, START + 5 * T, P) == 5
    assert compute_round_start(DEADLINE, 3, P) == DEADLINE + P.grace_period_ms + 3 * T


def test_leader_is_deterministic_and_weighted():
    v = vals(4, [1, 1, 1, 7])
    leaders = [compute_leader(TASK, r, v) for r in range(2000)]
    assert leaders == [compute_leader(TASK, r, dict(reversed(v.items()))) for r in range(2000)]
    share = leaders.count(PKS[3]) / len(leaders)
    assert 0.62 < share < 0.78       # weight 7 of 10
    assert {compute_leader(TASK, r, vals(4)) for r in range(50)} == set(PKS[:4])


def test_constructor_rejects_bad_validator_sets():
    with pytest.raises(ValidationError):
        TaskFinality(TASK, {}, None, DEADLINE, P)
    with pytest.raises(ValidationError):
        TaskFinality(TASK, {PKS[0]: 0}, None, DEADLINE, P)
    with pytest.raises(ValidationError):
        TaskFinality(TASK, vals(4), PKS[9], DEADLINE, P)


def test_no_intents_before_round_0_or_for_observers():
    f = TaskFinality(TASK, vals(4), PKS[0], DEADLINE, P)
    assert f.on_tick(START - 1, proposal_of(BASE)) == [] and f.round == -1
    obs = TaskFinality(TASK, vals(4), None, DEADLINE, P)
    assert obs.on_tick(START + 10 * T, proposal_of(BASE)) == [] and obs.round == 10


def test_bad_proposal_raises_and_leaves_state():
    f = TaskFinality(TASK, vals(4), PKS[0], DEADLINE, P)
    root, res, ids = proposal_of(BASE)
    with pytest.raises(ValidationError):
        f.on_tick(START, (root, res, tuple(reversed(ids))))
    with pytest.raises(ValidationError):
        f.on_tick(START, (sha256(b"x"), res, ids))
    assert f.round == -1


def _leader_first(n: int, round_: int) -> list[int]:
    lead = IDX[compute_leader(TASK, round_, vals(n))]
    return [lead] + [i for i in range(n) if i != lead]


def test_follower_waits_for_leader_then_times_out_to_own_choice():
    lead, me = _leader_first(4, 0)[:2]
    f = TaskFinality(TASK, vals(4), PKS[me], DEADLINE, P)
    prop = proposal_of(BASE)
    assert f.on_tick(START, prop) == []                      # waiting for the leader
    out = f.on_tick(START + 2 * T // 5, prop)                # leader silent: own choice
    assert [(i.round, i.phase, i.set_root) for i in out] == [(0, PHASE_PREVOTE, prop[0])]
    assert out[0].batch_ids == prop[2]
    assert f.on_tick(START + 2 * T // 5 + 1, prop) == []      # never the same (round, phase) twice


def test_follower_adopts_acceptable_leader_value_only():
    lead, me = _leader_first(4, 0)[:2]
    mine, other = proposal_of(BASE), proposal_of(WITH_X)
    f = TaskFinality(TASK, vals(4), PKS[me], DEADLINE, P)
    f.on_attestation(att(lead, 0, PHASE_PREVOTE, other))     # not my proposal, no polka: not acceptable
    assert f.on_tick(START + 1, mine) == []
    assert f.on_tick(START + 2 * T // 5, mine)[0].set_root == mine[0]
    g = TaskFinality(TASK, vals(4), PKS[me], DEADLINE, P)
    g.on_attestation(att(lead, 0, PHASE_PREVOTE, mine))
    assert g.on_tick(START + 1, mine)[0].set_root == mine[0]  # acceptable: prevote at once


def test_precommit_only_after_polka_and_lock_follows_precommit():
    lead, a, b, c = _leader_first(4, 0)
    prop = proposal_of(BASE)
    f = TaskFinality(TASK, vals(4), PKS[a], DEADLINE, P)
    f.on_attestation(att(lead, 0, PHASE_PREVOTE, prop))
    out = f.on_tick(START + 1, prop)
    assert [i.phase for i in out] == [PHASE_PREVOTE]
    for msg in (sign_intent(a, out[0], START + 1), att(b, 0, PHASE_PREVOTE, prop)):
        f.on_attestation(msg)
    assert f.get_polka(0) == prop[:2]
    out = f.on_tick(START + 2, prop)
    assert [(i.phase, i.set_root, i.batch_ids) for i in out] == [(PHASE_PRECOMMIT, prop[0], ())]
    assert f.locked == prop[:2] and f.locked_round == 0
    # a polka for round 0 seen only in round 1 does not cause a round-0 precommit
    g = TaskFinality(TASK, vals(4), PKS[a], DEADLINE, P)
    g.on_tick(round_at(1), prop)
    for i in (lead, b, c):
        g.on_attestation(att(i, 0, PHASE_PREVOTE, prop))
    assert all(i.round == 1 for i in g.on_tick(round_at(1, 0.5), prop))
    assert g.locked is None


def test_locked_validator_keeps_lock_unless_later_polka():
    n = 4
    v, w = proposal_of(BASE), proposal_of(WITH_X)
    me = next(i for i in range(n) if all(compute_leader(TASK, r, vals(n)) != PKS[i] for r in (1, 2, 3)))
    others = [i for i in range(n) if i != me]
    f = TaskFinality(TASK, vals(n), PKS[me], DEADLINE, P)
    f.on_tick(START, v)
    for i in others:                                       # polka for v in round 0 -> precommit, lock
        f.on_attestation(att(i, 0, PHASE_PREVOTE, v))
    assert [i.phase for i in f.on_tick(START + 1, v)][-1] == PHASE_PRECOMMIT
    assert f.locked == v[:2]
    # round 1: my proposal is now w, the leader offers w, but I'm locked on v and see no later polka
    f.on_attestation(att(IDX[f.get_leader(1)], 1, PHASE_PREVOTE, w))
    assert f.on_tick(round_at(1), w) == []                          # not acceptable: wait
    assert f.on_tick(round_at(1, 0.4), w)[0].set_root == v[0]       # timeout: prevote the lock
    # a polka for w in round 1 (later than my lock) unlocks: round 2 prevotes w
    for i in others:
        f.on_attestation(att(i, 1, PHASE_PREVOTE, w))
    assert f.get_polka(1) == w[:2]
    assert f.on_tick(round_at(2, 0.4), v)[0].set_root == w[0]
    assert f.locked == v[:2]                                       # lock changes only by precommitting


def test_unlocked_validator_adopts_highest_polka_over_own_proposal():
    n = 4
    v, w = proposal_of(BASE), proposal_of(WITH_X)
    me = next(i for i in range(n) if compute_leader(TASK, 3, vals(n)) != PKS[i])
    f = TaskFinality(TASK, vals(n), PKS[me], DEADLINE, P)
    for i in [i for i in range(n) if i != me]:
        f.on_attestation(att(i, 1, PHASE_PREVOTE, v))
    f.on_tick(round_at(3), w)
    assert f.on_tick(round_at(3, 0.4), w)[0].set_root == v[0]


def test_restart_replay_restores_votes_and_lock():
    """A validator that persisted its attestations and replays them after a crash
    neither votes twice in a (round, phase) nor forgets its lock."""
    lead, a, b, c = _leader_first(4, 0)
    v, w = proposal_of(BASE), proposal_of(WITH_X)
    f = TaskFinality(TASK, vals(4), PKS[a], DEADLINE, P)
    msgs = [att(lead, 0, PHASE_PREVOTE, v), att(b, 0, PHASE_PREVOTE, v)]
    for m in msgs:
        f.on_attestation(m)
    for it in f.on_tick(START + 1, v):
        msgs.append(sign_intent(a, it, START + 1))
        f.on_attestation(msgs[-1])
    for it in f.on_tick(START + 2, v):
        msgs.append(sign_intent(a, it, START + 2))
        f.on_attestation(msgs[-1])
    assert f.locked == v[:2]
    g = TaskFinality(TASK, vals(4), PKS[a], DEADLINE, P)
    for m in reversed(msgs):
        g.on_attestation(m)
    assert g.locked == v[:2] and g.locked_round == 0
    assert g.on_tick(START + 3, w) == []
    assert g.status() == f.status()


def test_duplicates_idempotent_and_weight_not_double_counted():
    f = TaskFinality(TASK, vals(4), None, DEADLINE, P)
    v = proposal_of(BASE)
    m = att(0, 0, PHASE_PREVOTE, v)
    assert f.on_attestation(m).outcome is Outcome.ACCEPT
    assert f.on_attestation(m).outcome is Outcome.IGNORE
    again = att(0, 0, PHASE_PREVOTE, v, created_at=START + 7)     # same vote re-signed
    assert f.on_attestation(again).outcome is Outcome.IGNORE
    assert f.on_attestation(att(1, 0, PHASE_PREVOTE, v)).ok
    assert f.get_polka(0) is None                                  # 2 of 4, not 4 of 4
    assert f.evidence == []


def test_equivocation_is_evidence_and_counts_as_wildcard():
    v, w, u = proposal_of(BASE), proposal_of(WITH_X), JUNK
    f = TaskFinality(TASK, vals(4), None, DEADLINE, P)
    assert f.on_attestation(att(3, 0, PHASE_PREVOTE, w)).ok
    assert f.on_attestation(att(3, 0, PHASE_PREVOTE, u)).ok
    third = att(3, 0, PHASE_PREVOTE, v)
    assert f.on_attestation(third).outcome is Outcome.IGNORE      # third value: stored no more
    [(a, b)] = f.evidence
    assert {a.body.set_root, b.body.set_root} == {w[0], u[0]} and a.raw < b.raw
    # validator 3 never got its v prevote into our store, yet its equivocation makes it
    # count toward v: we see the polka that an honest node holding 3's v prevote sees.
    f.on_attestation(att(0, 0, PHASE_PREVOTE, v))
    f.on_attestation(att(1, 0, PHASE_PREVOTE, v))
    assert f.get_polka(0) == v[:2]
    honest_view = TaskFinality(TASK, vals(4), None, DEADLINE, P)
    for m in (att(0, 0, PHASE_PREVOTE, v), att(1, 0, PHASE_PREVOTE, v), third):
        honest_view.on_attestation(m)
    assert honest_view.get_polka(0) == v[:2]


def test_storage_verdict_bounds_what_a_faulty_validator_gets_stored():
    """Storage policy (never validity): two values per (validator, round, phase), no vote
    signed again, nothing after a held certificate's round except a prevote naming the
    certified set's batch ids while those are unknown; the local validator's own votes
    always."""
    v, w, u, x = proposal_of(BASE), proposal_of(WITH_X), JUNK, proposal_of({B[5]})
    f = TaskFinality(TASK, vals(4), PKS[3], DEADLINE, P)
    store = lambda m: f.storage_verdict(m).ok and f.on_attestation(m).ok  # what a node does
    assert store(att(2, 5, PHASE_PREVOTE, x)) and store(att(2, 5, PHASE_PREVOTE, w))
    assert not f.storage_verdict(att(2, 5, PHASE_PREVOTE, u)).ok  # a third value
    assert not f.storage_verdict(att(2, 5, PHASE_PREVOTE, x, created_at=START + 1)).ok  # signed again
    assert f.storage_verdict(att(2, 5, PHASE_PRECOMMIT, u)).ok  # another phase
    # values admitted in the same write but not yet fed to on_attestation count as held
    assert f.storage_verdict(att(1, 5, PHASE_PREVOTE, u), pending={x[:2], w[:2]}).outcome is Outcome.IGNORE
    assert f.storage_verdict(att(1, 5, PHASE_PREVOTE, u), pending={x[:2]}).ok
    # certified in round 1 (precommits only: the certified set's batch ids are not known)
    for i in range(3):
        assert store(att(i, 1, PHASE_PRECOMMIT, v))
    assert f.certificate is not None and f.certificate.round == 1
    assert f.storage_verdict(att(0, 0, PHASE_PREVOTE, w)).ok  # rounds up to the certificate's
    assert f.storage_verdict(att(0, 1, PHASE_PRECOMMIT, w)).ok
    later = [att(0, 2, PHASE_PREVOTE, w), att(0, 2, PHASE_PRECOMMIT, v), att(1, 9, PHASE_PRECOMMIT, u)]
    assert [f.storage_verdict(m).outcome for m in later] == [Outcome.IGNORE] * 3
    assert "certified in round 1" in f.storage_verdict(later[0]).reason
    naming_ids = att(0, 7, PHASE_PREVOTE, v)  # the only way to learn the certified batch ids
    assert f.certified_batch_ids is None and store(naming_ids)
    assert f.certified_batch_ids == tuple(sorted(BASE))
    assert not f.storage_verdict(att(1, 8, PHASE_PREVOTE, v)).ok  # known now
    assert f.storage_verdict(att(3, 9, PHASE_PREVOTE, u)).ok  # our own vote: always
    assert f.storage_verdict(att(0, 9, PHASE_PREVOTE, u, task=OTHER_NET)).ok  # not this task's business


def test_equivocating_precommits_cannot_fake_a_certificate():
    v, w = proposal_of(BASE), proposal_of(WITH_X)
    f = TaskFinality(TASK, vals(4), None, DEADLINE, P)
    for m in (att(3, 0, PHASE_PRECOMMIT, v), att(3, 0, PHASE_PRECOMMIT, w), att(0, 0, PHASE_PRECOMMIT, v)):
        f.on_attestation(m)
    assert f.certificate is None                                   # 2 signers of v out of 4
    f.on_attestation(att(1, 0, PHASE_PRECOMMIT, v))
    assert f.certificate is not None and len(f.certificate.attestations) == 3
    assert len(f.evidence) == 1


def test_rejects_malformed_and_foreign_attestations():
    f = TaskFinality(TASK, vals(4), None, DEADLINE, P)
    v = proposal_of(BASE)
    assert f.on_attestation(att(9, 0, PHASE_PREVOTE, v)).outcome is Outcome.REJECT      # not a validator
    assert f.on_attestation(att(0, 0, PHASE_PREVOTE, v, task=sha256(b"t2"))).outcome is Outcome.IGNORE
    good = att(0, 0, PHASE_PREVOTE, v)
    relabeled = SignedMessage(replace(good.body, set_root=JUNK[0], batch_ids=JUNK[2]), good.body_bytes,
                              good.signature, good.raw)
    assert f.on_attestation(relabeled).outcome is Outcome.REJECT
    bad_root = Attestation(PKS[0], TASK, START, 0, PHASE_PREVOTE, JUNK[0], v[1], v[2])
    assert f.on_attestation(sign_message(bad_root, KEYS[0], NET)).outcome is Outcome.REJECT
    far = compute_round(DEADLINE, START, P) + P.clock_skew_ms // T + 5
    assert f.on_attestation(att(0, far, PHASE_PREVOTE, v)).outcome is Outcome.IGNORE
    assert f.status()["polkas"] == [] and f.evidence == []


def test_state_is_independent_of_delivery_order():
    v, w = proposal_of(BASE), proposal_of(WITH_X)
    msgs = [att(i, r, ph, v if (i + r) % 3 else w) for i in range(7) for r in range(3)
            for ph in (PHASE_PREVOTE, PHASE_PRECOMMIT)]
    msgs += [att(6, 1, PHASE_PREVOTE, JUNK), att(5, 2, PHASE_PRECOMMIT, JUNK)]   # equivocations
    ref = None
    for seed in range(6):
        order = msgs[:]
        random.Random(seed).shuffle(order)
        f = TaskFinality(TASK, vals(7), None, DEADLINE, P)
        for m in order:
            f.on_attestation(m)
        status = f.status()
        cert = status.pop("certificate")
        # which round's certificate is assembled first depends on arrival order; its value does not
        got = (status, [(a.raw, b.raw) for a, b in f.evidence], cert["set_root"], cert["result_root"])
        assert ref is None or got == ref
        ref = got
    assert ref[2] == v[0].hex()


def test_missing_batch_ids_lists_polka_and_certified_sets():
    f = TaskFinality(TASK, vals(4), None, DEADLINE, P)
    w = proposal_of(WITH_X)
    f.on_attestation(att(0, 0, PHASE_PREVOTE, JUNK))                # no polka: not fetched
    assert f.missing_batch_ids(lambda i: False) == set()
    for i in range(3):
        f.on_attestation(att(i + 1, 0, PHASE_PREVOTE, w))
    have = set(BASE)
    assert f.missing_batch_ids(have.__contains__) == {B[3]}
    for i in range(3):
        f.on_attestation(att(i, 0, PHASE_PRECOMMIT, w))
    assert f.certified_batch_ids == w[2]


# --------------------------------------------------------------------------- simulations


def _everyone(ids):
    return lambda i, t: ids


def test_all_honest_same_set_certifies_in_round_0():
    sim = Sim(1, [1, 1, 1, 1], ["honest"] * 4, sets=_everyone(WITH_X), skew=40).run(round_at(3))
    assert sim.all_certified()
    assert {n.fin.certificate.round for n in sim.watched()} == {0}
    assert sim.certified_values() == {value_of(WITH_X)}
    cert = sim.nodes[-1].fin.certificate                            # the observer's
    assert verify_certificate(cert, sim.validators, NET)
    assert decode_certificate(encode_certificate(cert), P) == cert


def test_sets_differ_in_round_0_then_converge():
    """Two of four validators lack batch X until the middle of round 1: round 0 splits
    2-2 (no polka); once the sets converge the set with X is certified."""
    late = round_at(1, 0.5)
    sets = lambda i, t: WITH_X if i < 2 or t >= late else BASE
    sim = Sim(2, [1, 1, 1, 1], ["honest"] * 4, sets=sets, skew=40).run(round_at(8))
    assert sim.nodes[0].fin.get_polka(0) is None
    assert sim.all_certified() and sim.certified_values() == {value_of(WITH_X)}
    assert min(n.fin.certificate.round for n in sim.watched()) >= 1
    assert sim.nodes[-1].fin.missing_batch_ids(lambda i: False) == set(WITH_X)


def test_silent_minority_still_certifies():
    sim = Sim(3, [1] * 7, ["honest"] * 5 + ["silent"] * 2, sets=_everyone(WITH_X), skew=40).run(round_at(6))
    assert sim.all_certified() and sim.certified_values() == {value_of(WITH_X)}
    for n in sim.watched():
        signers = {a.body.validator for a in n.fin.certificate.attestations}
        assert signers <= set(PKS[:5])


def test_classic_four_with_one_equivocator():
    for seed, strategy in ((4, "split"), (5, "adaptive")):
        late = round_at(0, 0.7)
        sets = lambda i, t: WITH_X if i == 0 or t >= late else BASE
        sim = Sim(seed, [1] * 4, ["honest"] * 3 + [strategy], sets=sets, skew=40, pre_drop=0.2,
                  gst=round_at(2)).run(round_at(14))
        sim.assert_safe()
        assert sim.all_certified()


def test_partition_without_quorum_then_heal():
    heal = round_at(5)
    halves = [{0, 1, 4}, {2, 3, 5}]                                  # each half: 2 validators + 1 observer
    sim = Sim(6, [1] * 4, ["honest"] * 4, sets=lambda i, t: WITH_X if i < 2 else BASE, n_observers=2,
              partition=lambda t: halves if t < heal else None, gst=heal, skew=40)
    sim.run(heal)
    assert sim.certified_values() == set()
    assert all(n.fin.get_polka(r) is None for n in sim.nodes for r in range(6))
    sim.sets = _everyone(WITH_X)                                     # sets converge via sync after the heal
    sim.run(round_at(14))
    assert sim.all_certified() and sim.certified_values() == {value_of(WITH_X)}


def test_split_locks_resolve_after_heal():
    """Scripted: A locks v in round 0 (only A saw that polka); in round 1 the others
    move to w and only B sees the polka for w, so A is locked on v and B on w. After
    the heal everyone sees both polkas: round 1's is the later one, A unlocks, and w
    is certified."""
    v, w = proposal_of(BASE), proposal_of(WITH_X)
    fins = [TaskFinality(TASK, vals(4), PKS[i], DEADLINE, P) for i in range(4)]
    log: list[SignedMessage] = []

    def tick(now, props, deliver_to):
        out = []
        for i, f in enumerate(fins):
            for it in f.on_tick(now, props[i]):
                m = sign_intent(i, it, now)
                f.on_attestation(m)
                out.append(m)
        log.extend(out)
        for m in out:
            for j in deliver_to:
                fins[j].on_attestation(m)
        return out

    tick(round_at(0, 0.45), [v] * 4, deliver_to=[0])          # all prevote v; only A hears
    tick(round_at(0, 0.5), [v] * 4, deliver_to=[])             # A precommits v alone
    assert fins[0].locked == v[:2] and all(f.locked is None for f in fins[1:])
    tick(round_at(1, 0.45), [w] * 4, deliver_to=[1])           # A: lock v; B, C, D: w; only B hears
    tick(round_at(1, 0.5), [w] * 4, deliver_to=[])
    assert fins[1].locked == w[:2] and fins[1].locked_round == 1 and fins[0].locked == v[:2]
    for f in fins:                                             # heal: anti-entropy delivers everything
        for m in log:
            f.on_attestation(m)
    for step in range(0, 20):
        tick(round_at(2, step / 20), [w] * 4, deliver_to=range(4))
    assert all(f.certificate is not None and f.certificate.value == w[:2] for f in fins)
    assert {f.certificate.round for f in fins} == {2}


def _random_schedule(seed: int) -> Sim:
    rng = random.Random(seed)
    n = rng.choice([4, 4, 5, 7])
    weights = [rng.randint(1, 5) for _ in range(n)]
    total = sum(weights)
    order = list(range(n))
    rng.shuffle(order)
    byz: list[int] = []
    for i in order:                                  # Byzantine weight as large as possible but < 1/3
        if 3 * (sum(weights[j] for j in byz) + weights[i]) < total:
            byz.append(i)
    kinds = ["honest"] * n
    for i in byz:
        kinds[i] = rng.choice(["split", "adaptive", "adaptive"])
    gst = round_at(rng.randint(0, 5), rng.random())
    # batches X and Y reach each validator at its own time before GST: up to 4 competing sets
    arrive = {(i, b): (DEADLINE if rng.random() < 0.3 else rng.randint(DEADLINE, gst)) for i in range(n) for b in (3, 4)}
    sets = lambda i, t: BASE | {B[b] for b in (3, 4) if t >= arrive[i, b]}
    cut = rng.randint(1, n)
    members = list(range(n + 1))
    rng.shuffle(members)
    halves = [set(members[:cut]) | set(byz), set(members[cut:]) | set(byz)]    # the faulty bridge both sides
    p_from, p_to = DEADLINE, DEADLINE
    if rng.random() < 0.7:
        p_from, p_to = sorted(rng.randint(DEADLINE, gst) for _ in range(2))
    return Sim(seed, weights, kinds, sets=sets, gst=gst, pre_drop=rng.choice([0.0, 0.2, 0.5]),
               pre_delay=rng.choice([100, 1000, 3000]), skew=40,
               partition=lambda t: halves if p_from <= t < p_to else None)


def test_property_safety_and_liveness_with_byzantine_minority():
    """~300 seeded schedules: random weights, Byzantine weight < 1/3 (equivocating to
    split halves, or adaptively backing each honest node's own favourite), drops,
    long delays, a partition and diverging sets before GST. Never two certified
    values; every honest node and the observer certify within 8 rounds after GST."""
    for seed in range(300):
        sim = _random_schedule(seed)
        sim.run(sim.gst + 8 * T)
        sim.assert_safe()
        assert sim.all_certified(), f"seed {seed}: not certified 8 rounds after GST"
        some = next(n.fin.certificate for n in sim.watched())
        if seed % 25 == 0:
            assert verify_certificate(some, sim.validators, NET)


def test_negative_control_half_faulty_breaks_safety():
    """With 2 of 4 validators faulty (>= 1/3) and the two honest ones cut off from each
    other, the same harness finds conflicting certificates: the safety property
    above is not vacuous."""
    broke = 0
    for seed in range(5):
        sim = Sim(seed, [1] * 4, ["honest", "honest", "adaptive", "adaptive"],
                  sets=lambda i, t: WITH_X if i == 0 else BASE, partition=lambda t: [{0, 2, 3}, {1, 2, 3, 4}])
        sim.run(round_at(3))
        broke += len(sim.certified_values()) > 1
    assert broke > 0


# --------------------------------------------------------------------------- certificates


def _cert(n=4, signers=(0, 1, 2), round_=0, prop=None, net=NET) -> Certificate:
    prop = prop or proposal_of(WITH_X)
    msgs = tuple(att(i, round_, PHASE_PRECOMMIT, prop, net=net) for i in signers)
    return Certificate(TASK, round_, prop[0], prop[1], msgs)


def test_verify_certificate_accepts_quorum_and_rejects_forgeries():
    v4 = vals(4)
    good = _cert()
    assert verify_certificate(good, v4, NET)
    assert not verify_certificate(good, v4, OTHER_NET)                         # wrong network
    assert not verify_certificate(_cert(signers=(0, 1)), v4, NET)              # 2 of 4: insufficient
    dup = replace(good, attestations=good.attestations[:2] + (good.attestations[0],))
    assert not verify_certificate(dup, v4, NET)                                # duplicated signer
    assert not verify_certificate(good, vals(4, [1, 1, 1, 5]), NET)            # 3 of 8 by weight
    assert verify_certificate(_cert(signers=(3,)), vals(4, [1, 1, 1, 7]), NET)  # 7 of 10
    m = good.attestations[0]
    bad_sig = SignedMessage(m.body, m.body_bytes, bytes([m.signature[0] ^ 1]) + m.signature[1:],
                            pack([m.body_bytes, bytes([m.signature[0] ^ 1]) + m.signature[1:]]))
    assert not verify_certificate(replace(good, attestations=(bad_sig,) + good.attestations[1:]), v4, NET)
    other = att(0, 0, PHASE_PRECOMMIT, JUNK)                                   # real signature, other value
    relabeled = SignedMessage(good.attestations[0].body, other.body_bytes, other.signature, other.raw)
    assert not verify_certificate(replace(good, attestations=(relabeled,) + good.attestations[1:]), v4, NET)
    mixed = replace(good, attestations=good.attestations[:2] + (att(2, 1, PHASE_PRECOMMIT, proposal_of(WITH_X)),))
    assert not verify_certificate(mixed, v4, NET)                              # another round
    prevotes = replace(good, attestations=tuple(att(i, 0, PHASE_PREVOTE, proposal_of(WITH_X)) for i in range(3)))
    assert not verify_certificate(prevotes, v4, NET)                           # prevotes are not precommits
    assert not verify_certificate(replace(good, result_root=JUNK[1]), v4, NET)  # claims another value
    outsider = vals(3) | {PKS[9]: 1}
    assert not verify_certificate(_cert(signers=(0, 1, 2, 5)), outsider, NET)  # non-validator signer
    assert not verify_certificate(replace(good, attestations=()), v4, NET)


def test_certificate_encoding_roundtrip_and_canonical():
    cert = _cert(n=7, signers=(4, 0, 2, 6, 1))
    data = encode_certificate(cert)
    back = decode_certificate(data, P)
    assert encode_certificate(back) == data
    assert [a.body.validator for a in back.attestations] == sorted(PKS[i] for i in (4, 0, 2, 6, 1))
    assert (back.task_id, back.round, back.value) == (cert.task_id, cert.round, cert.value)
    assert verify_certificate(back, vals(7), NET)


@pytest.mark.parametrize("data", [
    b"", b"\xc0", pack([2, []]), pack([1, []]), pack([True, [b"x"]]), pack([1, [b"garbage"]]),
    pack([1, [att(0, 0, PHASE_PREVOTE, JUNK).raw]]),
    pack([1, [att(1, 0, PHASE_PRECOMMIT, JUNK).raw, att(0, 0, PHASE_PRECOMMIT, JUNK).raw]]),   # unsorted
    pack([1, [att(0, 0, PHASE_PRECOMMIT, JUNK).raw, att(0, 0, PHASE_PRECOMMIT, JUNK).raw]]),   # duplicate
    pack([1, [att(0, 0, PHASE_PRECOMMIT, JUNK).raw, att(1, 1, PHASE_PRECOMMIT, JUNK).raw]]),   # two rounds
    pack([1, [att(0, 0, PHASE_PRECOMMIT, JUNK).raw]]) + b"\x00",
])
def test_decode_certificate_rejects(data):
    with pytest.raises(DecodeError):
        decode_certificate(data, P)

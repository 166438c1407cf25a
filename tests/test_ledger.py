"""The ledger (protocol/ledger.py): escrow, transfers, fees, the supply invariant, and no
double spending without a global order -- on the pure state machine, with validators
simulated over random partitions."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from protocol.codec import pack, sha256
from protocol.genesis import make_genesis
from protocol.ledger import (
    ESCROW, FEE, REFUND, REWARD, TRANSFER_IN, TRANSFER_OUT, LedgerError, LedgerState, compute_ledger,
    compute_release,
)
from protocol.messages import (
    DEST_ACCOUNT, DEST_ESCROW, MAX_AMOUNT, LedgerVote, Outcome, Transfer, check_message, sign_message,
)
from protocol.params import DEFAULT_PARAMS, Params

from .helpers import T0, key, pk

V = [pk(1000 + i) for i in range(5)]          # validators, weight 1 each: quorum is 4 of 5
VALIDATORS = {v: 1 for v in V}


def oid_of(order: Transfer) -> bytes:
    return sha256(pack(order.body_fields()))


def order(sender: int, seq: int, amount: int, to: int | bytes, *, escrow: bool = False, t: int = 0) -> Transfer:
    dest = to if isinstance(to, bytes) else pk(to)
    return Transfer(sender=pk(sender), seq=seq, created_at=T0 + t, amount=amount,
                    dest_type=DEST_ESCROW if escrow else DEST_ACCOUNT, dest=dest)


def votes_for(validators, *orders_) -> list[LedgerVote]:
    triples = sorted((o.sender, o.seq, oid_of(o)) for o in orders_)
    return [LedgerVote(validator=v, created_at=T0, votes=tuple(triples)) for v in validators]


def state(balances=((1, 1000), (2, 500)), params: Params = DEFAULT_PARAMS) -> LedgerState:
    return LedgerState([(pk(a), c) for a, c in balances], VALIDATORS, params)


# --------------------------------------------------------------------------- basics


def test_a_certified_transfer_moves_credits_and_keeps_the_supply():
    s = state()
    o = order(1, 0, 300, 2)
    s.add_order(oid_of(o), o)
    for v in votes_for(V[:3], o):            # 3 of 5: no quorum yet
        s.add_vote(v)
    assert s.get_balance(pk(1)) == 1000 and s.get_order_status(oid_of(o))["status"] == "pending"
    s.add_vote(votes_for(V[3:4], o)[0])      # the 4th: > 2/3
    assert (s.get_balance(pk(1)), s.get_balance(pk(2))) == (700, 800)
    assert s.get_next_seq(pk(1)) == 1 and s.get_order_status(oid_of(o))["status"] == "applied"
    assert s.check_supply() and s.totals() == {"supply": 1500, "balances": 1500, "escrow": 0, "burned": 0}
    assert [e.kind for e in s.get_history(pk(1))] == ["genesis", TRANSFER_OUT]
    assert [(e.kind, e.amount) for e in s.get_history(pk(2))][-1] == (TRANSFER_IN, 300)


def test_votes_before_the_order_count_when_it_arrives():
    s = state()
    o = order(1, 0, 300, 2)
    for v in votes_for(V, o):
        s.add_vote(v)
    assert s.get_balance(pk(2)) == 500
    s.add_order(oid_of(o), o)
    assert s.get_balance(pk(2)) == 800


def test_a_certified_order_waits_for_the_credits_that_cover_it():
    """Node sees 2 -> 3 (funded by 1 -> 2) before 1 -> 2: it waits, never goes negative."""
    s = state(balances=((1, 1000),))
    a = order(1, 0, 400, 2)
    b = order(2, 0, 400, 3)
    s.add_order(oid_of(b), b)
    for v in votes_for(V, b):
        s.add_vote(v)
    assert s.get_order_status(oid_of(b))["status"] == "certified"
    assert s.get_balance(pk(2)) == 0 and s.check_supply()
    s.add_order(oid_of(a), a)
    for v in votes_for(V, a):
        s.add_vote(v)
    assert (s.get_balance(pk(1)), s.get_balance(pk(2)), s.get_balance(pk(3))) == (600, 0, 400)


def test_sequence_numbers_apply_in_order():
    s = state()
    o0, o1 = order(1, 0, 100, 2), order(1, 1, 200, 2)
    for o in (o1, o0):
        s.add_order(oid_of(o), o)
    for v in votes_for(V, o1):
        s.add_vote(v)
    assert s.get_balance(pk(1)) == 1000          # seq 1 waits for seq 0
    for v in votes_for(V, o0):
        s.add_vote(v)
    assert s.get_balance(pk(1)) == 700 and s.get_next_seq(pk(1)) == 2


def test_validators_sign_only_the_next_funded_slot():
    s = state()
    over = order(1, 0, 1001, 2)
    ahead = order(1, 1, 10, 2)
    s.add_order(oid_of(over), over)
    s.add_order(oid_of(ahead), ahead)
    assert s.compute_votes(V[0]) == []           # overspend, and a slot that is not next
    ok = order(1, 0, 1000, 2)
    s.add_order(oid_of(ok), ok)
    assert s.compute_votes(V[0]) == [(pk(1), 0, oid_of(ok))]
    s.add_vote(LedgerVote(V[0], T0, ((pk(1), 0, oid_of(ok)),)))
    assert s.compute_votes(V[0]) == []           # one signature per slot, ever
    assert s.compute_votes(V[1]) == [(pk(1), 0, oid_of(ok))]


# --------------------------------------------------------------------------- escrow, release, fee


def _funded_task(s: LedgerState, bounty: int = 600, tid: bytes = b"T" * 32):
    s.add_task(tid, pk(1), bounty)
    e = order(1, 0, bounty, tid, escrow=True)
    s.add_order(oid_of(e), e)
    assert s.compute_votes(V[0]) == [(pk(1), 0, oid_of(e))]
    for v in votes_for(V, e):
        s.add_vote(v)
    return tid, e


def test_escrow_funds_a_task_and_the_release_pays_rewards_and_refund():
    s = state()
    assert not s.is_funded(b"T" * 32)
    tid, _ = _funded_task(s)
    assert s.is_funded(tid) and s.get_balance(pk(1)) == 400 and s.escrow[tid] == 600
    assert s.get_escrow_of(pk(1)) == 600 and s.check_supply()
    rel = compute_release(tid, pk(1), T0 + 5, 600, [(pk(3), 250), (pk(4), 150), (pk(5), 0)], DEFAULT_PARAMS)
    s.add_release(rel)
    assert (s.get_balance(pk(3)), s.get_balance(pk(4)), s.get_balance(pk(5))) == (250, 150, 0)
    assert s.get_balance(pk(1)) == 400 + 200 and tid not in s.escrow and s.check_supply()
    kinds = [e.kind for e in s.get_history(pk(1))]
    assert kinds == ["genesis", ESCROW, REFUND]
    assert s.get_history(pk(3))[0].kind == REWARD


def test_escrow_votes_need_the_task_its_requester_and_its_exact_bounty():
    s = state()
    tid = b"U" * 32
    wrong_amount = order(1, 0, 599, tid, escrow=True)
    s.add_order(oid_of(wrong_amount), wrong_amount)
    assert s.compute_votes(V[0]) == []           # task unknown
    s.add_task(tid, pk(1), 600)
    assert s.compute_votes(V[0]) == []           # not the bounty
    not_requester = order(2, 0, 600, tid, escrow=True)
    s.add_order(oid_of(not_requester), not_requester)
    assert s.compute_votes(V[0]) == []


def test_a_release_before_the_escrow_waits_for_it():
    s = state()
    tid = b"T" * 32
    s.add_release(compute_release(tid, pk(1), T0, 600, [(pk(3), 600)], DEFAULT_PARAMS))
    assert s.get_balance(pk(3)) == 0
    _funded_task(s, tid=tid)
    assert s.get_balance(pk(3)) == 600 and s.get_balance(pk(1)) == 400 and s.check_supply()


@pytest.mark.parametrize("fee_to,burned,validator_credit", [(0, 60, 0), (1, 0, 12)])
def test_the_fee_is_burned_or_paid_to_validators(fee_to, burned, validator_credit):
    p = Params(ledger_fee_bps=1000, ledger_fee_to=fee_to).validate()     # 10 %
    s = state(params=p)
    tid, _ = _funded_task(s)
    s.add_release(compute_release(tid, pk(1), T0, 600, [(pk(3), 540)], p))
    assert s.burned == burned and s.get_balance(V[0]) == validator_credit
    assert s.get_balance(pk(3)) == 540 and s.check_supply()
    if validator_credit:
        assert s.get_history(V[0])[0].kind == FEE


def test_a_release_cannot_pay_more_than_the_bounty():
    with pytest.raises(LedgerError):
        compute_release(b"T" * 32, pk(1), T0, 600, [(pk(3), 601)], DEFAULT_PARAMS)


# --------------------------------------------------------------------------- storage policy (bad input)


def test_order_verdicts_say_why():
    s = state()
    o = order(1, 0, 100, 2)
    s.add_order(oid_of(o), o)
    for v in votes_for(V, o):
        s.add_vote(v)
    replay = order(1, 0, 100, 3)
    assert "already used" in s.order_verdict(oid_of(replay), replay).reason and s.is_refusal_final(replay)
    assert s.order_verdict(oid_of(o), o).reason == "duplicate"
    far = order(1, 1 + DEFAULT_PARAMS.ledger_seq_window, 1, 2)
    assert "too far ahead" in s.order_verdict(oid_of(far), far).reason
    over = order(1, 1, 901, 2)
    assert "insufficient balance" in s.order_verdict(oid_of(over), over).reason
    assert not s.is_refusal_final(over) and not s.is_refusal_final(far)  # credits may still come
    a, b, c = (order(1, 1, 10 + k, 2) for k in range(3))
    for x in (a, b):
        assert s.order_verdict(oid_of(x), x).ok
        s.add_order(oid_of(x), x)
    assert "two orders" in s.order_verdict(oid_of(c), c).reason
    for v in votes_for(V, c):                     # but a certified order is always stored
        s.add_vote(v)
    assert s.order_verdict(oid_of(c), c).ok


def test_vote_verdicts_and_validator_equivocation_evidence():
    s = state()
    a, b, c = order(1, 0, 10, 2), order(1, 0, 20, 2), order(1, 0, 30, 2)
    for o in (a, b, c):
        s.add_order(oid_of(o), o)
    va, vb, vc = (LedgerVote(V[0], T0, ((pk(1), 0, oid_of(o)),)) for o in (a, b, c))
    assert s.vote_verdict(va).ok
    s.add_vote(va)
    assert s.vote_verdict(va).reason == "duplicate votes" and s.is_refusal_final(va)
    assert s.vote_verdict(vb).ok                 # the second: kept as evidence
    s.add_vote(vb)
    assert s.get_evidence() == [(V[0], pk(1), 0, tuple(sorted([oid_of(a), oid_of(b)])))]
    assert "add nothing" in s.vote_verdict(vc).reason        # a third adds nothing
    unfunded = LedgerVote(V[1], T0, ((pk(9), 0, b"x" * 32),))      # an account with no credits here
    assert "add nothing" in s.vote_verdict(unfunded).reason
    ahead = LedgerVote(V[1], T0, ((pk(1), 1, b"x" * 32),))         # an order not here yet, next slot
    assert s.vote_verdict(ahead).ok


def _signed(body, n):
    return sign_message(body, key(n), NET)


NET = make_genesis("ledger", T0, [(v, 1) for v in V], [], [(pk(1), 1000)]).network_id


class _Ctx:
    def get_task(self, tid):
        return None

    def validator_weight(self, a):
        return VALIDATORS.get(a, 0)


@pytest.mark.parametrize("amount,reason", [(0, "amount must be 1.."), (MAX_AMOUNT + 1, "amount must be 1..")])
def test_amounts_out_of_range_are_rejected(amount, reason):
    raw = _signed(order(1, 0, amount, 2), 1).raw
    v, _ = check_message(raw, _Ctx(), NET, T0, DEFAULT_PARAMS)
    assert v.outcome is Outcome.REJECT and reason in v.reason


def test_a_negative_amount_does_not_decode_and_other_networks_do_not_verify():
    body = order(1, 0, 5, 2)
    bad = Transfer(**{**body.__dict__, "amount": -5})
    raw = pack([pack(bad.body_fields()), bytes(64)])
    v, _ = check_message(raw, _Ctx(), NET, T0, DEFAULT_PARAMS)
    assert v.outcome is Outcome.REJECT and "amount must be a non-negative integer" in v.reason
    other = sign_message(body, key(1), sha256(b"another network")).raw
    v, _ = check_message(other, _Ctx(), NET, T0, DEFAULT_PARAMS)
    assert v.outcome is Outcome.REJECT and v.reason == "bad signature"
    self_transfer = _signed(order(1, 0, 5, 1), 1).raw
    assert "oneself" in check_message(self_transfer, _Ctx(), NET, T0, DEFAULT_PARAMS)[0].reason


def test_ledger_votes_only_from_validators_and_sorted():
    o = order(1, 0, 5, 2)
    not_validator = _signed(LedgerVote(pk(7), T0, ((pk(1), 0, oid_of(o)),)), 7).raw
    v, _ = check_message(not_validator, _Ctx(), NET, T0, DEFAULT_PARAMS)
    assert v.outcome is Outcome.REJECT and "not a validator" in v.reason
    hi, lo = sorted([pk(1), pk(2)], reverse=True)
    unsorted = LedgerVote(V[0], T0, ((hi, 0, b"a" * 32), (lo, 0, b"b" * 32)))
    v, _ = check_message(sign_message(unsorted, key(1000), NET).raw, _Ctx(), NET, T0, DEFAULT_PARAMS)
    assert v.outcome is Outcome.REJECT and "sorted" in v.reason
    ok = LedgerVote(V[0], T0, ((pk(1), 0, oid_of(o)),))
    assert check_message(sign_message(ok, key(1000), NET).raw, _Ctx(), NET, T0, DEFAULT_PARAMS)[0].ok


# --------------------------------------------------------------------------- determinism


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_ledger(rnd):
    """Orders, votes, tasks and releases in a random order, incrementally, equal the
    from-scratch computation in canonical order: bit-identical balances and history."""
    tasks, orders, votes, releases = _random_history(rnd)
    ref = compute_ledger(GENESIS_BAL, VALIDATORS, DEFAULT_PARAMS, tasks=tasks, orders=orders, votes=votes,
                         releases=releases)
    inputs = [("t", t) for t in tasks] + [("o", o) for o in orders] + [("v", v) for v in votes] + \
             [("r", r) for r in releases]
    rnd.shuffle(inputs)
    s = LedgerState(GENESIS_BAL, VALIDATORS, DEFAULT_PARAMS)
    for kind, x in inputs:
        {"t": lambda x: s.add_task(*x), "o": lambda x: s.add_order(*x), "v": s.add_vote,
         "r": s.add_release}[kind](x)
        assert s.check_supply()
    assert s.snapshot() == ref.snapshot()


GENESIS_BAL = [(pk(a), 1000) for a in range(1, 6)]


def _random_history(rnd):
    """A plausible history: certified transfers and escrows as validators would sign them
    (built by driving a LedgerState), plus some pending orders and partial votes."""
    s = LedgerState(GENESIS_BAL, VALIDATORS, DEFAULT_PARAMS)
    tasks, orders, votes, releases = [], [], [], []
    for step in range(rnd.randint(5, 25)):
        a = rnd.randint(1, 5)
        seq = s.get_next_seq(pk(a))
        if rnd.random() < 0.3:
            tid = sha256(b"task" + bytes([step]))
            bounty = rnd.randint(0, 300)
            tasks.append((tid, pk(a), bounty))
            s.add_task(tid, pk(a), bounty)
            if bounty == 0:
                continue
            o = order(a, seq, bounty, tid, escrow=True, t=step)
        else:
            o = order(a, seq, rnd.randint(1, 400), rnd.choice([b for b in range(1, 7) if b != a]), t=step)
        orders.append((oid_of(o), o))
        s.add_order(oid_of(o), o)
        signers = [v for v in V if (o.sender, o.seq, oid_of(o)) in s.compute_votes(v)]
        signers = signers[:rnd.choice([2, 3, 4, 5])]
        for v in votes_for(signers, o):
            votes.append(v)
            s.add_vote(v)
    for tid, requester, bounty in tasks:
        if rnd.random() < 0.7:
            n = rnd.randint(0, 3)
            cut = sorted(rnd.randint(0, bounty) for _ in range(n))
            parts = [b - a for a, b in zip([0] + cut, cut + [bounty])][:n]
            rel = compute_release(tid, requester, T0, bounty, [(pk(10 + k), p) for k, p in enumerate(parts)],
                                  DEFAULT_PARAMS)
            releases.append(rel)
    return tasks, orders, votes, releases


# --------------------------------------------------------------------------- no double spending


class _Node:
    """A validator node in the simulation: a ledger view, the messages it holds, and the
    votes it signed (persisted before they leave, as the real node does)."""

    def __init__(self, validator: bytes, byzantine: bool = False):
        self.validator = validator
        self.byzantine = byzantine
        self.ledger = LedgerState(GENESIS_BAL, VALIDATORS, DEFAULT_PARAMS)
        self.held: dict[bytes, object] = {}      # message id -> Transfer | LedgerVote

    def receive(self, mid: bytes, body) -> None:
        if mid in self.held:
            return
        if isinstance(body, Transfer):
            if self.ledger.order_verdict(mid, body).ok:
                self.held[mid] = body
                self.ledger.add_order(mid, body)
        elif self.ledger.vote_verdict(body).ok:
            self.held[mid] = body
            self.ledger.add_vote(body)
        self.check()

    def vote(self) -> None:
        triples = self.ledger.compute_votes(self.validator)
        if self.byzantine:  # co-signs every order it holds, conflicting or unfunded
            triples = sorted({(o.sender, o.seq): (o.sender, o.seq, mid) for mid, o in self.held.items()
                              if isinstance(o, Transfer)}.values())
        if triples:
            v = LedgerVote(self.validator, T0, tuple(triples))
            self.receive(sha256(pack(v.body_fields())), v)

    def check(self) -> None:
        assert self.ledger.check_supply(), "supply invariant broken"
        assert all(b >= 0 for b in self.ledger.balance.values())


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False))
def test_no_double_spend_across_random_partitions(rnd):
    """Clients send debits that together overspend -- the same sequence number with two
    different orders, or consecutive ones -- to nodes on different sides of random
    partitions, while validators vote on what they see -- and, in half the runs, one of
    the five (less than 1/3 of the weight) co-signs everything it holds. On every node and
    at every step: no balance negative, supply conserved; at most one order per slot takes
    effect anywhere; after the heal every node holds the same ledger."""
    byzantine = rnd.random() < 0.5
    nodes = [_Node(v, byzantine=(byzantine and k == 0)) for k, v in enumerate(V)]
    sent: list[tuple[bytes, Transfer]] = []
    for _phase in range(rnd.randint(2, 5)):
        groups = _random_partition(rnd, len(nodes))
        for _step in range(rnd.randint(2, 6)):
            for _ in range(rnd.randint(1, 3)):
                a = rnd.randint(1, 5)
                seq = max(n.ledger.get_next_seq(pk(a)) for n in nodes) + rnd.choice([0, 0, 1])
                bal = 1000
                for k in range(2):             # two orders that together exceed the balance
                    o = order(a, seq + (k if rnd.random() < 0.4 else 0), rnd.randint(bal // 2 + 1, bal),
                              rnd.choice([b for b in range(1, 7) if b != a]), t=rnd.randint(0, 10**6))
                    sent.append((oid_of(o), o))
                    nodes[rnd.randrange(len(nodes))].receive(oid_of(o), o)
            _gossip_rounds(rnd, nodes, groups)
    whole = [list(range(len(nodes)))]
    for _ in range(4):
        _gossip_rounds(rnd, nodes, whole)
    snaps = {n.ledger.snapshot() for n in nodes}
    assert len(snaps) == 1, "nodes disagree after the heal"
    applied_slots: dict = {}
    for n in nodes:
        for oid in n.ledger.applied:
            o = n.ledger.orders[oid]
            assert applied_slots.setdefault(o.slot, oid) == oid, "two orders took effect for one slot"
    for a in range(1, 6):
        debits = sum(n.ledger.orders[oid].amount for oid in nodes[0].ledger.applied
                     if nodes[0].ledger.orders[oid].sender == pk(a))
        credits = sum(e.amount for e in nodes[0].ledger.get_history(pk(a)) if e.amount > 0)
        assert debits <= credits


def _random_partition(rnd, n: int) -> list[list[int]]:
    ids = list(range(n))
    rnd.shuffle(ids)
    cuts = sorted(rnd.sample(range(1, n), rnd.randint(0, 2)))
    return [ids[a:b] for a, b in zip([0] + cuts, cuts + [n])]


def _gossip_rounds(rnd, nodes, groups) -> None:
    for _ in range(3):
        for n in nodes:
            n.vote()
        for g in groups:
            for i in g:
                for mid, body in list(nodes[i].held.items()):
                    for j in g:
                        if j != i:
                            nodes[j].receive(mid, body)

"""The ledger: balances, escrowed bounties and transfers, without a global order.

How it works
------------
Credits exist from genesis (``Genesis.balances``); the supply never changes except
by the protocol fee when it is burned. An account spends by signing a **debit
order** (``Transfer``, PROTOCOL.md 5.7) with its own sequence number ``seq`` =
0, 1, 2, ...: to another account, or into the **escrow** of a task (its bounty).
As in FastPay, there is no consensus on a total order of transfers:

* a validator co-signs (``LedgerVote``) at most one order per slot
  ``(sender, seq)``, and only the sender's *next* slot, and only when the order is
  *funded* in its own view (the sender's balance covers the amount after every
  earlier debit of the sender has been applied there);
* an order is **certified** when validators holding more than 2/3 of the
  validator weight co-signed it (the same quorum test as finality);
* a node **applies** a certified order when it has applied the sender's previous
  debits and the sender's balance covers it *in the node's own view*; applying
  debits the sender and credits the recipient (or the task's escrow).

Safety (at most one order per slot takes effect; no balance is ever negative; the
supply is conserved) is argued in docs/ledger.md; in short: two quorums share
more than 1/3 of the weight, so with less than 1/3 faulty weight they share an
honest validator, who signed one order per slot; and an honest validator signed
only what was covered by credits that are themselves certified, so every node
eventually holds them too. Nodes apply only what they can cover themselves, so
a balance is never negative on any node, at any time.

Everything here is **monotone**: inputs only ever add (orders, votes, tasks,
releases) and applying an order only ever adds credits to others, so the state
after any set of inputs is the least fixpoint of "apply what is certified and
covered", the same whatever the order of arrival (``compute_ledger`` and the
incremental ``LedgerState`` agree; tests/test_ledger.py checks it on random
orders). A task's escrow is **released** when the task is certified
(``Release``: the rewards of its certified result, the fee and the refund), so
balances are a pure function of the set of messages, the genesis and the rules.

Invariant, checked by ``check_supply``:
    sum(balances) + sum(escrow) + burned == genesis supply
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from .errors import LabelmeshError
from .finality import is_quorum
from .messages import (
    DEST_ACCOUNT, DEST_ESCROW, MAX_AMOUNT, ACCEPT, LedgerVote, Transfer, Verdict, ignore,
)
from .params import Params

AccountKey = bytes
OrderId = bytes
TaskId = bytes
Slot = tuple[AccountKey, int]

FEE_BURN = 0
FEE_TO_VALIDATORS = 1
BPS = 10_000

# History entry kinds (what an account's ledger_history lists).
GENESIS = "genesis"
TRANSFER_OUT = "transfer_out"
TRANSFER_IN = "transfer_in"
ESCROW = "escrow"
REWARD = "reward"
REFUND = "refund"
FEE = "fee"


class LedgerError(LabelmeshError):
    """A ledger input breaks an invariant the caller must uphold (a bug, not bad input
    from the network: network input is filtered by validation and ``order_verdict``)."""


@dataclass(frozen=True)
class Release:
    """What a certified task pays out of its escrow: ``rewards`` (account, credits) in
    account order, all > 0, and the protocol ``fee``; the rest of the escrow is refunded
    to the requester. Computed by every node from the certified result
    (``compute_release``)."""

    task_id: TaskId
    requester: AccountKey
    time: int
    rewards: tuple[tuple[AccountKey, int], ...]
    fee: int


@dataclass(frozen=True)
class Entry:
    """One line of an account's history. ``amount`` is signed (+ credit, - debit);
    ``ref`` is the order id (transfers, escrow) or the task id (rewards, refunds, fees);
    ``counterparty`` the other account or the task (b"" for genesis)."""

    time: int
    kind: str
    amount: int
    ref: bytes
    counterparty: bytes


def compute_fee(bounty: int, params: Params) -> int:
    """The protocol fee taken from a task's bounty when its escrow is released."""
    return bounty * params.ledger_fee_bps // BPS


def compute_fee_shares(fee: int, validators: dict[AccountKey, int], params: Params
                       ) -> tuple[list[tuple[AccountKey, int]], int]:
    """(credits per validator in key order, burned) for a fee: all burned, or split by
    validator weight with the integer remainder burned."""
    if params.ledger_fee_to != FEE_TO_VALIDATORS or fee == 0:
        return [], fee
    total = sum(validators.values())
    shares = [(v, fee * w // total) for v, w in sorted(validators.items())]
    shares = [(v, c) for v, c in shares if c > 0]
    return shares, fee - sum(c for _, c in shares)


def compute_release(task_id: TaskId, requester: AccountKey, deadline: int, bounty: int,
                    rewards: Iterable[tuple[AccountKey, int]], params: Params) -> Release:
    """The release of a certified task from its result's per-annotator rewards (which
    sum to at most bounty - fee: protocol/tally.py splits the bounty net of the fee)."""
    paid = tuple(sorted((a, r) for a, r in rewards if r > 0))
    fee = compute_fee(bounty, params)
    if sum(r for _, r in paid) + fee > bounty:
        raise LedgerError("rewards and fee exceed the bounty")
    return Release(task_id=task_id, requester=requester, time=deadline, rewards=paid, fee=fee)


class LedgerState:
    """The ledger as one node sees it, updated incrementally (sans-IO, integers only).

    Feed it with ``add_task``, ``add_order``, ``add_vote`` and ``add_release`` in any
    order, any number of times (idempotent); read balances, escrow, sequence numbers,
    order status and history. A validator asks ``compute_votes`` what it may co-sign
    now. ``order_verdict`` / ``vote_verdict`` are the storage policy of a node."""

    def __init__(self, balances: Iterable[tuple[AccountKey, int]], validators: dict[AccountKey, int],
                 params: Params):
        self.params = params
        self.validators = dict(validators)
        self.total_weight = sum(self.validators.values())
        self.balance: dict[AccountKey, int] = {}
        self.history: dict[AccountKey, list[Entry]] = defaultdict(list)
        for a, c in balances:
            self.balance[a] = self.balance.get(a, 0) + c
            if c:
                self.history[a].append(Entry(0, GENESIS, c, b"", b""))
        self.supply = sum(self.balance.values())
        self.burned = 0
        self.escrow: dict[TaskId, int] = {}          # held now, per task
        self.escrowed: dict[TaskId, int] = {}        # ever escrowed (monotone; decides "funded")
        self.next_seq: dict[AccountKey, int] = {}
        self.orders: dict[OrderId, Transfer] = {}
        self.slots: dict[Slot, set[OrderId]] = {}
        self._by_time: dict[tuple[AccountKey, int], list[OrderId]] = {}   # (sender, created_at) -> ids
        self.vote_weight: dict[tuple[AccountKey, int, OrderId], int] = {}
        self._voters: dict[tuple[AccountKey, int, OrderId], set[AccountKey]] = {}
        self.signed: dict[tuple[AccountKey, AccountKey, int], set[OrderId]] = {}  # (validator, sender, seq)
        self.certified: dict[Slot, OrderId] = {}
        self.applied: dict[OrderId, int] = {}         # order id -> index in application order (local)
        self.tasks: dict[TaskId, tuple[AccountKey, int]] = {}   # task -> (requester, bounty)
        self.releases: dict[TaskId, Release] = {}
        self.released: set[TaskId] = set()
        self._work: set[AccountKey] = set()
        self._ready: set[AccountKey] = set()          # senders with a stored order at their next slot

    # ------------------------------------------------------------------ inputs

    def add_task(self, task_id: TaskId, requester: AccountKey, bounty: int) -> None:
        """A task announcement is known (its bounty decides when it is funded)."""
        if task_id in self.tasks:
            return
        self.tasks[task_id] = (requester, bounty)
        self._try_release(task_id)
        self._run()

    def add_order(self, order_id: OrderId, order: Transfer) -> None:
        """A stored debit order (valid: decoded, checked and signature verified)."""
        if order_id in self.orders:
            return
        self.orders[order_id] = order
        self.slots.setdefault(order.slot, set()).add(order_id)
        self._by_time.setdefault((order.sender, order.created_at), []).append(order_id)
        if order.seq == self.get_next_seq(order.sender):
            self._ready.add(order.sender)
        if self._has_quorum(order.sender, order.seq, order_id):
            self._certify(order.slot, order_id)
        self._run()

    def add_vote(self, vote: LedgerVote) -> list[OrderId]:
        """A stored ledger vote (valid: its signer is a validator). Returns the order ids
        this vote made certified here (known orders only)."""
        w = self.validators.get(vote.validator, 0)
        if w <= 0:
            return []
        newly = []
        for sender, seq, oid in vote.votes:
            signed = self.signed.setdefault((vote.validator, sender, seq), set())
            signed.add(oid)
            key = (sender, seq, oid)
            voters = self._voters.setdefault(key, set())
            if vote.validator in voters:
                continue
            voters.add(vote.validator)
            self.vote_weight[key] = self.vote_weight.get(key, 0) + w
            order = self.orders.get(oid)
            if order is not None and order.slot == (sender, seq) and self._has_quorum(sender, seq, oid) \
                    and self.certified.get((sender, seq)) != oid:
                if self._certify((sender, seq), oid):
                    newly.append(oid)
        self._run()
        return newly

    def add_release(self, release: Release) -> None:
        """A task was certified: pay its rewards, fee and refund once it is funded."""
        if release.task_id in self.releases:
            return
        self.releases[release.task_id] = release
        self._try_release(release.task_id)
        self._run()

    # ------------------------------------------------------------------ queries

    def get_balance(self, account: AccountKey) -> int:
        return self.balance.get(account, 0)

    def get_next_seq(self, account: AccountKey) -> int:
        return self.next_seq.get(account, 0)

    def get_escrow_of(self, account: AccountKey) -> int:
        """Credits ``account`` has in the escrow of its own unreleased tasks."""
        return sum(held for t, held in self.escrow.items() if held and self.tasks.get(t, (b"",))[0] == account)

    def is_funded(self, task_id: TaskId) -> bool:
        """Is the task's bounty held in escrow (or was it, if released)? A task with bounty
        0 needs no escrow. Unknown tasks are not funded."""
        t = self.tasks.get(task_id)
        if t is None:
            return False
        return t[1] == 0 or self.escrowed.get(task_id, 0) >= t[1]

    def get_order_status(self, order_id: OrderId) -> dict:
        """What became of an order here: ``applied``; ``certified`` (waiting for the
        sender's earlier debits or credits to reach this node); ``pending`` (votes so far);
        ``superseded`` (another order took its slot); ``unknown``."""
        order = self.orders.get(order_id)
        if order is None:
            return {"status": "unknown"}
        key = (order.sender, order.seq, order_id)
        out = {"status": "pending", "vote_weight": self.vote_weight.get(key, 0),
               "total_weight": self.total_weight, "seq": order.seq}
        if order_id in self.applied:
            out["status"] = "applied"
        elif self.certified.get(order.slot) == order_id:
            out["status"] = "certified"
        elif order.seq < self.get_next_seq(order.sender) or order.slot in self.certified:
            out["status"] = "superseded"
        return out

    def find_orders(self, sender: AccountKey, created_at: int) -> list[OrderId]:
        """Ids of the held orders of ``sender`` stamped ``created_at`` (lets a client's
        retry find the order it already signed: idempotent transfers)."""
        return list(self._by_time.get((sender, created_at), ()))

    def get_history(self, account: AccountKey) -> list[Entry]:
        """The account's entries in a canonical order: (time, kind, ref, amount)."""
        return sorted(self.history.get(account, ()), key=lambda e: (e.time, e.kind, e.ref, e.amount))

    def get_evidence(self) -> list[tuple[AccountKey, AccountKey, int, tuple[OrderId, ...]]]:
        """Validators that co-signed two orders for one slot: (validator, sender, seq, ids)."""
        return [(v, s, n, tuple(sorted(ids))) for (v, s, n), ids in sorted(self.signed.items()) if len(ids) > 1]

    def totals(self) -> dict:
        """Sums for the supply invariant (and status displays)."""
        return {"supply": self.supply, "balances": sum(self.balance.values()),
                "escrow": sum(self.escrow.values()), "burned": self.burned}

    def check_supply(self) -> bool:
        """The invariant: balances + escrow + burned == genesis supply, and nothing negative."""
        t = self.totals()
        return (t["balances"] + t["escrow"] + t["burned"] == t["supply"]
                and all(v >= 0 for v in self.balance.values()) and all(v >= 0 for v in self.escrow.values()))

    def snapshot(self) -> tuple:
        """Everything that must be identical on every node holding the same inputs."""
        return (tuple(sorted((a, b) for a, b in self.balance.items() if b)),
                tuple(sorted((t, e) for t, e in self.escrow.items() if e)),
                self.burned,
                tuple(sorted(self.next_seq.items())),
                tuple(sorted(self.applied)),
                tuple(sorted(self.released)),
                tuple(sorted((a, tuple(self.get_history(a))) for a in self.history if self.history[a])))

    # ------------------------------------------------------------------ validators

    def compute_votes(self, validator: AccountKey, limit: int | None = None) -> list[tuple[AccountKey, int, OrderId]]:
        """The (sender, seq, order id) triples ``validator`` may co-sign now, sorted: for
        each sender, its next slot, if ``validator`` signed nothing there yet and an order
        there is funded in this view (an escrow order also needs its task known, to be
        signed by the task's requester, for exactly the bounty, and the task not funded
        yet). The lowest such order id of the slot is chosen."""
        limit = self.params.max_votes_per_ledger_vote if limit is None else limit
        out = []
        for sender in self._ready:
            seq = self.get_next_seq(sender)
            if (validator, sender, seq) in self.signed:
                continue
            for oid in sorted(self.slots[(sender, seq)]):
                if self._is_votable(self.orders[oid]):
                    out.append((sender, seq, oid))
                    break
        out.sort()
        return out[:limit]

    def _is_votable(self, order: Transfer) -> bool:
        if self.get_balance(order.sender) < order.amount:
            return False
        if order.dest_type == DEST_ESCROW:
            t = self.tasks.get(order.dest)
            if t is None or t[0] != order.sender or t[1] != order.amount or self.is_funded(order.dest):
                return False
        return True

    # ------------------------------------------------------------------ storage policy

    def order_verdict(self, order_id: OrderId, order: Transfer) -> Verdict:
        """Should a node store this (valid) order? ACCEPT, or IGNORE with the reason (a
        storage bound, never validity: an order certified by a quorum is always
        stored). Overspends, used sequence numbers and orders far ahead are declined, so
        free keys cannot fill a node with orders they cannot pay for."""
        if order_id in self.orders:
            return ignore("duplicate")
        if self._has_quorum(order.sender, order.seq, order_id):
            return ACCEPT
        nxt = self.get_next_seq(order.sender)
        if order.seq < nxt:
            return ignore(f"sequence number {order.seq} of this account is already used (next is {nxt})")
        if order.seq >= nxt + self.params.ledger_seq_window:
            return ignore(f"sequence number {order.seq} is too far ahead (next is {nxt}, window "
                          f"{self.params.ledger_seq_window})")
        bal = self.get_balance(order.sender)
        if bal < order.amount:
            return ignore(f"insufficient balance: the account holds {bal} credits, the order debits {order.amount}")
        if len(self.slots.get(order.slot, ())) >= 2:
            return ignore(f"two orders for sequence number {order.seq} of this account are held already")
        return ACCEPT

    def is_refusal_final(self, order_or_vote) -> bool:
        """Whether a message that ``order_verdict`` / ``vote_verdict`` declined can never be
        stored here later (with less than 1/3 faulty weight): an order for a slot already
        applied, or a vote whose every signature is held. Other refusals (funds not here
        yet, too far ahead, two orders held) may change as the ledger grows."""
        if isinstance(order_or_vote, Transfer):
            return order_or_vote.seq < self.get_next_seq(order_or_vote.sender)
        return all(oid in self.signed.get((order_or_vote.validator, s, n), ())
                   for s, n, oid in order_or_vote.votes)

    def vote_verdict(self, vote: LedgerVote) -> Verdict:
        """Should a node store this (valid) ledger vote? It must add a signature this
        node can use: a triple it does not hold yet, at most two orders per (validator,
        slot) (the second is evidence of equivocation, a third adds nothing), and for an
        order this node does not hold (the votes may overtake it), a slot it could still
        apply: within the sender's sequence window, of an account that holds credits
        here. So a faulty validator cannot make a node store votes without bound, while
        votes and orders may arrive in any order (an order refused here for lack of
        funds is stored once its votes show a quorum)."""
        useful = False
        for sender, seq, oid in vote.votes:
            signed = self.signed.get((vote.validator, sender, seq), ())
            if oid in signed or len(signed) >= 2:
                continue
            if oid in self.orders or self._is_open_slot(sender, seq):
                useful = True
                break
        if not useful:
            return ignore("duplicate votes" if all(oid in self.signed.get((vote.validator, s, n), ())
                                                    for s, n, oid in vote.votes)
                          else "votes add nothing this node can use now (a third order for a slot "
                               "from one validator, or slots it cannot apply yet)")
        return ACCEPT

    def _is_open_slot(self, sender: AccountKey, seq: int) -> bool:
        nxt = self.get_next_seq(sender)
        return nxt <= seq < nxt + self.params.ledger_seq_window and self.get_balance(sender) > 0

    # ------------------------------------------------------------------ internals

    def _has_quorum(self, sender: AccountKey, seq: int, oid: OrderId) -> bool:
        return is_quorum(self.vote_weight.get((sender, seq, oid), 0), self.total_weight)

    def _certify(self, slot: Slot, oid: OrderId) -> bool:
        """Record a quorum for ``oid`` in ``slot``. With less than 1/3 faulty weight a
        slot gets one certified order; beyond that the lowest id wins unless another
        was applied already (docs/ledger.md)."""
        current = self.certified.get(slot)
        if current is not None and (current in self.applied or current < oid):
            return False
        self.certified[slot] = oid
        self._work.add(slot[0])
        return True

    def _credit(self, account: AccountKey, amount: int, entry: Entry) -> None:
        self.balance[account] = self.balance.get(account, 0) + amount
        self.history[account].append(entry)
        self._work.add(account)

    def _run(self) -> None:
        """Apply every certified order that is covered, until nothing changes."""
        while self._work:
            sender = self._work.pop()  # any order reaches the same fixpoint (module docstring)
            while True:
                seq = self.get_next_seq(sender)
                oid = self.certified.get((sender, seq))
                if oid is None:
                    break
                order = self.orders[oid]
                if self.get_balance(sender) < order.amount:
                    break
                self._apply(oid, order)

    def _apply(self, oid: OrderId, order: Transfer) -> None:
        self.balance[order.sender] -= order.amount
        self.next_seq[order.sender] = order.seq + 1
        if (order.sender, order.seq + 1) in self.slots:
            self._ready.add(order.sender)
        else:
            self._ready.discard(order.sender)
        self.applied[oid] = len(self.applied)
        if order.dest_type == DEST_ACCOUNT:
            self.history[order.sender].append(Entry(order.created_at, TRANSFER_OUT, -order.amount, oid, order.dest))
            self._credit(order.dest, order.amount, Entry(order.created_at, TRANSFER_IN, order.amount, oid,
                                                         order.sender))
            return
        task = order.dest
        self.history[order.sender].append(Entry(order.created_at, ESCROW, -order.amount, oid, task))
        self.escrowed[task] = self.escrowed.get(task, 0) + order.amount
        if task in self.released:
            # escrowed after the task was settled (a second escrow order): straight back
            self._credit(order.sender, order.amount, Entry(order.created_at, REFUND, order.amount, oid, task))
            return
        self.escrow[task] = self.escrow.get(task, 0) + order.amount
        self._try_release(task)

    def _try_release(self, task_id: TaskId) -> None:
        rel = self.releases.get(task_id)
        if rel is None or task_id in self.released or task_id not in self.tasks or not self.is_funded(task_id):
            return
        held = self.escrow.pop(task_id, 0)
        paid = sum(r for _, r in rel.rewards)
        if paid + rel.fee > held and self.tasks[task_id][1] > 0:
            raise LedgerError(f"release of task {task_id.hex()[:16]} pays {paid + rel.fee} from an escrow of {held}")
        if self.tasks[task_id][1] == 0 and (paid or rel.fee):
            raise LedgerError("a task with bounty 0 pays nothing")
        self.released.add(task_id)
        for account, credits in rel.rewards:
            self._credit(account, credits, Entry(rel.time, REWARD, credits, task_id, task_id))
        shares, burned = compute_fee_shares(rel.fee, self.validators, self.params)
        for v, credits in shares:
            self._credit(v, credits, Entry(rel.time, FEE, credits, task_id, task_id))
        self.burned += burned
        refund = held - paid - rel.fee
        if refund:
            self._credit(rel.requester, refund, Entry(rel.time, REFUND, refund, task_id, task_id))


def compute_ledger(balances, validators: dict[AccountKey, int], params: Params, *, tasks=(), orders=(),
                   votes=(), releases=()) -> LedgerState:
    """The ledger over a whole set of inputs, from scratch (the reference the
    incremental updates must equal): ``tasks`` (task id, requester, bounty),
    ``orders`` (order id, Transfer), ``votes`` (LedgerVote), ``releases`` (Release)."""
    st = LedgerState(balances, validators, params)
    for t in tasks:
        st.add_task(*t)
    for oid, o in orders:
        st.add_order(oid, o)
    for v in votes:
        st.add_vote(v)
    for r in releases:
        st.add_release(r)
    return st


def is_amount(value: object) -> bool:
    """An amount of credits: an integer 1..2^63-1 (booleans are not integers)."""
    return type(value) is int and 1 <= value <= MAX_AMOUNT

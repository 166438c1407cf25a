"""The node's view of the ledger (``protocol.ledger.LedgerState``): fed by every stored
transfer, ledger vote and task, and by the release of every certified task; read by the
RPC (balances, history), by the ledger service (what a validator co-signs) and by the
ingest pipeline (the ledger's storage policy, and "a task is open for labels only once its
bounty is escrowed"). A mixin of NodeCore (uses its store, genesis, params, keystore,
clock and ingest). docs/ledger.md has the rules and why they are safe.
"""
from __future__ import annotations

import logging

from protocol.ledger import LedgerState, compute_release
from protocol.messages import (
    DEST_ACCOUNT, DEST_ESCROW, KIND_LEDGER_VOTE, KIND_TASK, KIND_TRANSFER, MAX_AMOUNT, ignore,
    SignedMessage, Transfer, Verdict, decode_message, sign_message,
)

log = logging.getLogger("labelmesh.ledger")

#: Batches of a task whose bounty this node has not seen escrowed are IGNOREd with this
#: verdict and parked like orphans until the escrow arrives (then re-ingested).
TASK_NOT_FUNDED = ignore("task not funded yet: its bounty is not escrowed (a certified escrow order); "
                         "labels are accepted once it is")


class LedgerError(Exception):
    """A ledger request this node refuses (insufficient funds, unknown account); the
    message says what to do. The RPC layer maps it to an error code."""


class Ledger:
    """Balances, escrow and transfers as this node sees them."""

    def _init_ledger(self) -> None:
        g = self.genesis
        self.ledger = LedgerState(g.balances, dict(g.validators), self.params)
        self._funded_waiting: set[bytes] = set()  # tasks with parked batches waiting for their escrow

    def load_ledger(self) -> None:
        """Rebuild the ledger from the store at start: tasks, orders, votes. Releases come
        back as the finality service settles each certified task again (oldest first)."""
        for tid, t in self.tasks.items():
            self.ledger.add_task(tid, t.requester, t.bounty)
        for kind in (KIND_TRANSFER, KIND_LEDGER_VOTE):
            ids = self.store.kind_message_ids(kind)
            for mid, raw in zip(ids, self.store.get_many(ids)):
                self._feed_ledger(mid, decode_message(raw, self.params))

    # ------------------------------------------------------------------ ingest hooks

    def ledger_verdict(self, mid: bytes, msg: SignedMessage) -> Verdict | None:
        """The ledger's storage policy for a validated message, or None if it has none:
        orders and votes (``LedgerState.order_verdict`` / ``vote_verdict``), and batches
        of a task not funded yet."""
        if msg.kind == KIND_TRANSFER:
            return self.ledger.order_verdict(mid, msg.body)
        if msg.kind == KIND_LEDGER_VOTE:
            return self.ledger.vote_verdict(msg.body)
        return None

    def is_open_for_labels(self, task_id: bytes) -> bool:
        """A task takes labels once its bounty is escrowed (bounty 0: at once)."""
        return self.ledger.is_funded(task_id)

    def _feed_ledger(self, mid: bytes, msg: SignedMessage) -> None:
        """Tell the ledger about a stored message (tasks, orders, votes)."""
        if msg.kind == KIND_TASK:
            self.ledger.add_task(mid, msg.body.requester, msg.body.bounty)
        elif msg.kind == KIND_TRANSFER:
            self.ledger.add_order(mid, msg.body)
        elif msg.kind == KIND_LEDGER_VOTE:
            self.ledger.add_vote(msg.body)
        else:
            return
        if self.ledger_service is not None:
            self.ledger_service.wake()

    def wait_for_funding(self, task_id: bytes) -> None:
        """Remember that batches of ``task_id`` are parked until its escrow arrives."""
        self._funded_waiting.add(task_id)

    def take_newly_funded(self) -> list[bytes]:
        """Tasks with parked batches that are funded now (each returned once)."""
        done = sorted(t for t in self._funded_waiting if self.ledger.is_funded(t))
        self._funded_waiting.difference_update(done)
        return done

    def settle_task(self, task_id: bytes, result) -> None:
        """A task's certified result is known here: release its escrow (idempotent)."""
        if task_id in self.ledger.releases:
            return
        t = self.tasks[task_id]
        rel = compute_release(task_id, t.requester, t.deadline, t.bounty,
                              [(a.account, a.reward) for a in result.annotators], self.params)
        self.ledger.add_release(rel)
        log.info("task settled", extra={"task": task_id.hex()[:16], "rewards": sum(r for _, r in rel.rewards),
                                        "fee": rel.fee, "funded": self.ledger.is_funded(task_id)})

    # ------------------------------------------------------------------ accounts

    def account_view(self, account: bytes) -> dict:
        """What an account holds here: balance (spendable), escrowed (in its own open
        tasks), pending (debits it signed that are not applied yet), available, next seq."""
        st = self.ledger
        pending = self._pending_orders(account)
        held = sum(o.amount for _, o in pending)
        bal = st.get_balance(account)
        return {"account": account.hex(), "balance": bal, "escrowed": st.get_escrow_of(account),
                "pending_out": held, "available": max(0, bal - held), "next_seq": st.get_next_seq(account),
                "pending": [{"order_id": oid.hex(), "seq": o.seq, "amount": o.amount,
                             **st.get_order_status(oid)} for oid, o in pending]}

    def _pending_orders(self, account: bytes) -> list[tuple[bytes, Transfer]]:
        """Orders of ``account`` held here at or past its next slot (one per slot: the
        lowest id), in sequence order."""
        st = self.ledger
        out = []
        seq = st.get_next_seq(account)
        while (account, seq) in st.slots:
            oid = min(st.slots[(account, seq)])
            out.append((oid, st.orders[oid]))
            seq += 1
        return out

    def sign_debit(self, account_name: str, dest_type: int, dest: bytes, amount: int,
                   created_at: int | None = None) -> tuple[SignedMessage, bool]:
        """Sign a debit order of a local account for the next free slot, after checking
        that it is covered (balance minus what is pending). With ``created_at`` given, a
        retry of the same order (same destination, amount and created_at) returns the
        order already signed instead of a second one (idempotent). Returns (message,
        reused). Raises LedgerError with what the account holds."""
        key = self.keystore.signing_key(account_name)
        sender = bytes(key.verify_key)
        if not 1 <= amount <= MAX_AMOUNT:
            raise LedgerError(f"amount must be 1..{MAX_AMOUNT} credits, got {amount}")
        pending = self._pending_orders(sender)
        if created_at is not None:
            for oid in self.ledger.find_orders(sender, created_at):
                o = self.ledger.orders[oid]
                if (o.dest_type, o.dest, o.amount) == (dest_type, dest, amount) \
                        and self.ledger.get_order_status(oid)["status"] != "superseded":
                    return sign_message(o, key, self.network_id), True
        view = self.account_view(sender)
        if amount > view["available"]:
            raise LedgerError(
                f"insufficient balance: account {account_name!r} holds {view['balance']} credits "
                f"({view['pending_out']} of them in pending debits, {view['escrowed']} more escrowed in its open "
                f"tasks); {amount} are needed")
        seq = self.ledger.get_next_seq(sender) + len(pending)
        body = Transfer(sender=sender, seq=seq, created_at=self.clock() if created_at is None else created_at,
                        amount=amount, dest_type=dest_type, dest=dest)
        return sign_message(body, key, self.network_id), False

    @staticmethod
    def escrow_dest(task_id: bytes) -> tuple[int, bytes]:
        return DEST_ESCROW, task_id

    @staticmethod
    def account_dest(account: bytes) -> tuple[int, bytes]:
        return DEST_ACCOUNT, account

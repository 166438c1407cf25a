"""The ledger service: a validator node co-signs the debit orders it may sign.

How it works
------------
Every ``tick_s`` (and at once when the ingest pipeline stores a transfer), a validator
asks its ledger view which orders it may co-sign now (``LedgerState.compute_votes``:
each sender's next slot, funded here, nothing signed for that slot before) and signs ONE
``LedgerVote`` for all of them. Like an attestation, the vote is ingested -- durably
stored -- before it is gossiped, so a validator that crashes and restarts remembers every
slot it signed and can never sign a second order for one (docs/ledger.md, Claim 1).
Observers (no validator key) run nothing here.
"""
from __future__ import annotations

import logging

import trio

from protocol.messages import LedgerVote, sign_message

from ..core.verdicts import DUPLICATE

log = logging.getLogger("labelmesh.ledger")


class LedgerService:
    def __init__(self, node, signing_key=None, tick_s: float = 0.02):
        self.node = node
        self.key = signing_key
        self.me = bytes(signing_key.verify_key) if signing_key is not None else None
        if self.me is not None and node.genesis.validator_weight(self.me) <= 0:
            self.me, self.key = None, None
        self.tick_s = tick_s
        self.votes_signed = 0   # orders co-signed by this node (counted per order)
        self._wake = trio.Event()

    def wake(self) -> None:
        """Something arrived that may be votable (a transfer, a credit): look now."""
        self._wake.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.me is None:
            return
        while True:
            await self.vote_once()
            with trio.move_on_after(self.tick_s * 25):
                await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(self.tick_s)  # gather what arrives meanwhile into the same vote

    async def vote_once(self) -> int:
        """Sign one vote for every order this validator may co-sign now; the number signed."""
        triples = self.node.ledger.compute_votes(self.me)
        if not triples:
            return 0
        vote = LedgerVote(validator=self.me, created_at=self.node.clock(), votes=tuple(triples))
        msg = sign_message(vote, self.key, self.node.network_id)
        v, _ = await self.node.ingest(msg.raw, "local", publish=True)
        if not v.ok and v != DUPLICATE:
            log.error("own ledger vote refused: %s", v.reason)
            return 0
        self.votes_signed += len(triples)
        return len(triples)

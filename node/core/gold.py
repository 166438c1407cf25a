"""Hidden gold answers, commit-reveal: the requester's node keeps the secret (salt and
answers) of each task it posted with gold until the deadline, then signs and ingests the
GoldReveal. A mixin of NodeCore (uses its store, writer, keystore, tasks and ingest)."""
from __future__ import annotations

import logging

import msgpack

from protocol.messages import KIND_GOLD, GoldReveal, Verdict, reject, sign_message

from .verdicts import DUPLICATE

log = logging.getLogger("labelmesh.node")


class GoldSecrets:
    """The gold secrets of the tasks this node posted (local bookkeeping in the store's meta)."""

    GOLD_META = "gold_secrets"

    def gold_secrets(self) -> dict:
        """Local bookkeeping: task id -> [requester account name, salt, answers] of tasks
        this node posted with hidden gold, until their reveal is stored (then the reveal
        holds them; reveal_due_gold forgets the secret, so the blob it reads every tick
        holds open tasks only)."""
        raw = self.store.get_meta(self.GOLD_META)
        return msgpack.unpackb(raw, strict_map_key=False) if raw else {}

    async def remember_gold(self, task_id: bytes, account: str, salt: bytes, answers) -> None:
        async with self._gold_lock:  # read-modify-write of one blob: one writer at a time
            secrets_ = self.gold_secrets()
            secrets_[task_id] = [account, salt, [list(a) for a in answers]]
            await self.writer.write(self.store.put_meta, self.GOLD_META, msgpack.packb(secrets_, use_bin_type=True))

    async def reveal_gold(self, task_id: bytes) -> tuple[Verdict, bytes | None]:
        """Sign and ingest the GoldReveal of a task this node committed for."""
        sec = self.gold_secrets().get(task_id)
        if sec is None:
            stored = self.store.task_message_ids(task_id, KIND_GOLD)
            if stored:  # revealed already (and the secret forgotten)
                return DUPLICATE, stored[0]
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
        async with self._gold_lock:
            secrets_ = self.gold_secrets()
            for task_id in task_ids:
                secrets_.pop(task_id, None)
            await self.writer.write(self.store.put_meta, self.GOLD_META, msgpack.packb(secrets_, use_bin_type=True))

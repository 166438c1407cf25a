"""Accounts, the genesis, real signed messages and the label workload of a simulation.

Every message in a simulation is a real labelmesh message: built from the protocol's
dataclasses, signed with ed25519 keys derived from the seed, encoded canonically, and run
once through the protocol's whole validation pipeline (``protocol.messages.check_message``:
decode, validate_basic, signature, in-context checks). A message is validated and its
signature verified **once per distinct message**, not once per node: its bytes are the
same everywhere, and the in-context verdict of an honest message depends only on its task
(which the simulation checks per node: a node that does not hold the task yet cannot
store the message) and the genesis. Nodes share the decoded object.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import nacl.signing

from protocol.codec import sha256
from protocol.genesis import make_genesis
from protocol.messages import (
    KIND_ATTESTATION, KIND_BATCH, KIND_GOLD, KIND_TASK, AnnotationBatch, GoldReveal, Item, LabelSchema,
    Outcome, SignedMessage, TaskAnnouncement, check_message, compute_gold_commitment, sign_message,
)

from .config import SimConfig

GENESIS_MS = 1_790_000_000_000     # simulated time 0, in protocol milliseconds


def _key(seed: int, role: str, i: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(f"labelmesh-sim/{seed}/{role}/{i}".encode()).digest())


@dataclass
class Msg:
    """One signed message, shared by every node that holds it."""

    m: int                  # index (Holdings)
    mid: bytes              # protocol message id
    signed: SignedMessage
    kind: int
    task: int               # index of its task
    origin: int             # node it was submitted to
    t_submit: float         # simulated time of submission

    @property
    def raw(self) -> bytes:
        return self.signed.raw


@dataclass
class Task:
    k: int
    tid: bytes
    ann: TaskAnnouncement
    m: int                          # the announcement's message index
    origin: int                     # node that posted it (holds the gold secret)
    requester_index: int
    created_s: float
    deadline_s: float               # simulated time of the deadline (origin's clock)
    truth: list[int]
    gold: tuple[bytes, tuple] | None = None    # (salt, answers) until revealed
    msgs: list[int] = field(default_factory=list)      # every message of the task, the announcement first
    pinnable: list[int] = field(default_factory=list)  # batches and gold reveals
    atts: list[int] = field(default_factory=list)
    batches_by_annotator: dict[int, int] = field(default_factory=dict)
    perm: list[int] = field(default_factory=list)     # item order annotators walk (disjoint batches)

    @property
    def deadline_ms(self) -> int:
        return self.ann.deadline

    @property
    def created_ms(self) -> int:
        return self.ann.created_at


class World:
    """Keys, genesis, the message table and the validation context."""

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.validator_keys = [_key(cfg.seed, "validator", i) for i in range(cfg.validators)]
        self.validator_pk = [bytes(k.verify_key) for k in self.validator_keys]
        self.requester_keys = [_key(cfg.seed, "requester", i) for i in range(cfg.requesters)]
        self.annotator_keys = [_key(cfg.seed, "annotator", i) for i in range(cfg.annotators)]
        self.annotator_pk = [bytes(k.verify_key) for k in self.annotator_keys]
        self.genesis = make_genesis("sim", GENESIS_MS, [(pk, 1) for pk in self.validator_pk], [],
                                    [(bytes(k.verify_key), 10**12) for k in self.requester_keys],
                                    {"grace_period_ms": cfg.grace_period_ms,
                                     "round_timeout_ms": cfg.round_timeout_ms,
                                     "reputation_lag_ms": cfg.reputation_lag_ms})
        self.params = self.genesis.params
        self.network_id = self.genesis.network_id
        self.validators = dict(self.genesis.validators)
        self.msgs: list[Msg] = []
        self.tasks: list[Task] = []
        self.task_of_tid: dict[bytes, int] = {}
        self.by_mid: dict[bytes, int] = {}
        self.rejected: list[str] = []
        rng = random.Random(cfg.seed * 7919 + 1)
        # annotator quality: 20% experts, 70% average, 10% spammers (None = random labels)
        self.accuracy = [0.92 if r < 0.2 else (None if r > 0.9 else 0.6 + 0.25 * rng.random())
                         for r in (rng.random() for _ in range(cfg.annotators))]

    # ------------------------------------------------------------------ validation context

    def get_task(self, task_id: bytes) -> TaskAnnouncement | None:
        k = self.task_of_tid.get(task_id)
        return None if k is None else self.tasks[k].ann

    def validator_weight(self, account: bytes) -> int:
        return self.validators.get(account, 0)

    def check(self, signed: SignedMessage, now_ms: int) -> bool:
        """The protocol's full pipeline, once per distinct message; False (and noted) if
        not ACCEPT — an honest simulation never produces one, so a REJECT is a bug."""
        v, _ = check_message(signed.raw, self, self.network_id, now_ms, self.params)
        if v.outcome is not Outcome.ACCEPT:
            self.rejected.append(f"{v.outcome.value}: {v.reason}")
            return False
        return True

    # ------------------------------------------------------------------ building messages

    def make_task(self, k: int, requester: int, created_ms: int, rng: random.Random) -> tuple[SignedMessage, list, tuple | None]:
        cfg = self.cfg
        n = cfg.items_per_task
        truth = [rng.randrange(cfg.classes) for _ in range(n)]
        gold = None
        commitment = None
        if rng.random() < cfg.gold_share:
            items = sorted(rng.sample(range(n), max(1, n // 20)))
            answers = tuple((i, truth[i]) for i in items)
            salt = sha256(f"salt/{cfg.seed}/{k}".encode())
            gold = (salt, answers)
            commitment = compute_gold_commitment(salt, answers)
        pad = max(0, cfg.item_bytes - 8)
        items = tuple(Item(0, text=f"{k}:{i}:".ljust(pad + 8, "x")[:max(cfg.item_bytes, 1)]) for i in range(n))
        ann = TaskAnnouncement(
            requester=bytes(self.requester_keys[requester].verify_key), nonce=k, created_at=created_ms,
            deadline=created_ms + int(cfg.task_duration_s * 1000), title=f"sim task {k}",
            schema=LabelSchema(0, f"domain-{k % 10}", tuple(f"c{c}" for c in range(cfg.classes))),
            items=items, redundancy=5, bounty=1_000_000, gold_commitment=commitment, reward_rule=0)
        return sign_message(ann, self.requester_keys[requester], self.network_id), truth, gold

    def make_batch(self, task: Task, annotator: int, created_ms: int, rng: random.Random) -> SignedMessage | None:
        """The next batch of ``annotator`` on ``task`` (items it has not labelled), or None."""
        cfg = self.cfg
        n, per = cfg.items_per_task, cfg.labels_per_batch
        j = task.batches_by_annotator.get(annotator, 0)
        if (j + 1) * per > n:
            return None
        task.batches_by_annotator[annotator] = j + 1
        # a per-task permutation of the items, walked from a per-annotator offset: disjoint batches
        start = (annotator * 7919 + j * per) % n
        perm = task.perm
        items = sorted(perm[(start + x) % n] for x in range(per))
        acc = self.accuracy[annotator]
        labels = []
        for i in items:
            if acc is None:
                labels.append((i, rng.randrange(cfg.classes)))
            elif rng.random() < acc:
                labels.append((i, task.truth[i]))
            else:
                labels.append((i, (task.truth[i] + 1 + rng.randrange(cfg.classes - 1)) % cfg.classes))
        b = AnnotationBatch(annotator=self.annotator_pk[annotator], task_id=task.tid, created_at=created_ms,
                            labels=tuple(labels))
        return sign_message(b, self.annotator_keys[annotator], self.network_id)

    def make_gold(self, task: Task, requester: int, created_ms: int) -> SignedMessage:
        salt, answers = task.gold
        g = GoldReveal(requester=task.ann.requester, task_id=task.tid, created_at=created_ms, salt=salt,
                       answers=answers)
        return sign_message(g, self.requester_keys[requester], self.network_id)

    def register(self, signed: SignedMessage, task: int, origin: int, t: float, m: int) -> Msg:
        mid = signed.compute_id(self.network_id)
        msg = Msg(m=m, mid=mid, signed=signed, kind=signed.kind, task=task, origin=origin, t_submit=t)
        assert m == len(self.msgs)
        self.msgs.append(msg)
        self.by_mid[mid] = m
        if task >= 0:
            tk = self.tasks[task]
            tk.msgs.append(m)
            if msg.kind in (KIND_BATCH, KIND_GOLD):
                tk.pinnable.append(m)
            elif msg.kind == KIND_ATTESTATION:
                tk.atts.append(m)
        return msg


KIND_TOPIC = {KIND_TASK: 0, KIND_BATCH: 1, KIND_GOLD: 2, KIND_ATTESTATION: 3}
TOPIC_NAMES = ["task", "batch", "gold", "attestation"]

"""labelmesh message types, their canonical encoding, signing and validation.

How it works
------------
Every message travels as ``envelope = msgpack [body: bin, signature: bin(64)]``.
``body`` is itself canonical msgpack: ``[kind, version, signer, ...fields]``.

    signed_bytes = DOMAIN_TAG[kind] || network_id (32 bytes) || body
    signature    = ed25519_sign(signer, signed_bytes)
    message id   = sha256(signed_bytes)

So nothing signed for one network or one message kind is valid for another, and
the id does not depend on the signature bytes. The pipeline is split as in
CometBFT: ``decode_message`` (structure and types, canonical form) ->
``validate_basic`` (sizes and ranges, no state) -> ``verify_signature`` (costly) ->
``validate_in_context`` (needs the task, the genesis and the clock). Each check
returns a ``Verdict``: ACCEPT, REJECT (invalid forever: penalise whoever sent it)
or IGNORE (duplicate, too early, unknown task yet: drop without penalty).

Field layouts (all integers are msgpack ints; times are ms since the epoch):

TaskAnnouncement  [1, 1, requester, nonce, created_at, deadline, title, schema,
                   items, redundancy, bounty, gold_commitment|nil, reward_rule]
    schema  = [schema_type (0 = single choice), domain: str, [label: str, ...]]
    item    = [0, text: str]                           inline text
            | [1, payload: bin, media_type: str]       inline bytes
            | [2, sha256: bin32, size: int, media_type: str]   blob by hash
AnnotationBatch   [2, 1, annotator, task_id, created_at, [item, label, item, label, ...]]
                   items strictly increasing (one label per item per batch)
GoldReveal        [3, 1, requester, task_id, created_at, salt: bin32, [item, label, ...]]
Attestation       [4, 1, validator, task_id, created_at, round, phase,
                   set_root, result_root, [batch_id, ...] (sorted, prevote only)]
Transfer          [5, 1, sender, seq, created_at, amount, dest_type, dest]
                   a debit order: dest_type 0 = to an account, 1 = escrow of a task
LedgerVote        [6, 1, validator, created_at, [sender, seq, order_id, ...]]
                   a validator's co-signature of debit orders, (sender, seq) strictly increasing
(protocol/ledger.py: what transfers and votes do to balances; docs/ledger.md: why.)
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, Union

import nacl.bindings
import nacl.exceptions
import nacl.signing

from .codec import pack, sha256, unpack
from .errors import DecodeError
from .params import Params

# Typed aliases (32-byte values).
AccountKey = bytes
TaskId = bytes
MessageId = bytes

KIND_TASK = 1
KIND_BATCH = 2
KIND_GOLD = 3
KIND_ATTESTATION = 4
KIND_TRANSFER = 5
KIND_LEDGER_VOTE = 6
KIND_NAMES = {KIND_TASK: "task", KIND_BATCH: "batch", KIND_GOLD: "gold", KIND_ATTESTATION: "attestation",
              KIND_TRANSFER: "transfer", KIND_LEDGER_VOTE: "ledger_vote"}
#: Kinds that belong to the ledger rather than to one task (store and sync keep them in
#: the ledger bucket, ``LEDGER_BUCKET``).
LEDGER_KINDS = frozenset({KIND_TRANSFER, KIND_LEDGER_VOTE})
#: The pseudo task id under which ledger messages are stored and synced. A real task id
#: is a SHA-256 digest, never 32 zero bytes.
LEDGER_BUCKET = bytes(32)

VERSION = 1
DOMAIN_TAGS = {
    KIND_TASK: b"labelmesh/task/v1\x00",
    KIND_BATCH: b"labelmesh/batch/v1\x00",
    KIND_GOLD: b"labelmesh/gold/v1\x00",
    KIND_ATTESTATION: b"labelmesh/attestation/v1\x00",
    KIND_TRANSFER: b"labelmesh/transfer/v1\x00",
    KIND_LEDGER_VOTE: b"labelmesh/ledger-vote/v1\x00",
}
GOLD_COMMIT_TAG = b"labelmesh/gold-commitment/v1\x00"

SCHEMA_SINGLE_CHOICE = 0
ITEM_TEXT = 0
ITEM_BYTES = 1
ITEM_BLOB = 2
REWARD_RULE_ACCURACY = 0
PHASE_PREVOTE = 0
PHASE_PRECOMMIT = 1
DEST_ACCOUNT = 0
DEST_ESCROW = 1
MAX_AMOUNT = (1 << 63) - 1   # credits; an amount or balance never exceeds a signed 64-bit integer


class Outcome(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    IGNORE = "ignore"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.ACCEPT


ACCEPT = Verdict(Outcome.ACCEPT)


def reject(reason: str) -> Verdict:
    return Verdict(Outcome.REJECT, reason)


def ignore(reason: str) -> Verdict:
    return Verdict(Outcome.IGNORE, reason)


#: IGNORE: the message names a task this node has not received yet (it may arrive later);
#: callers compare verdicts with this name, not with its reason text.
UNKNOWN_TASK = ignore("unknown task (not received yet)")


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class LabelSchema:
    schema_type: int
    domain: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Item:
    item_type: int
    text: str = ""
    payload: bytes = b""
    digest: bytes = b""
    size: int = 0
    media_type: str = ""

    def to_wire(self) -> list:
        if self.item_type == ITEM_TEXT:
            return [ITEM_TEXT, self.text]
        if self.item_type == ITEM_BYTES:
            return [ITEM_BYTES, self.payload, self.media_type]
        return [ITEM_BLOB, self.digest, self.size, self.media_type]


@dataclass(frozen=True)
class TaskAnnouncement:
    requester: AccountKey
    nonce: int
    created_at: int
    deadline: int
    title: str
    schema: LabelSchema
    items: tuple[Item, ...]
    redundancy: int
    bounty: int
    gold_commitment: bytes | None
    reward_rule: int

    kind = KIND_TASK

    @property
    def signer(self) -> AccountKey:
        return self.requester

    def body_fields(self) -> list:
        s = self.schema
        return [KIND_TASK, VERSION, self.requester, self.nonce, self.created_at, self.deadline,
                self.title, [s.schema_type, s.domain, list(s.labels)],
                [it.to_wire() for it in self.items], self.redundancy, self.bounty,
                self.gold_commitment, self.reward_rule]


@dataclass(frozen=True)
class AnnotationBatch:
    annotator: AccountKey
    task_id: TaskId
    created_at: int
    labels: tuple[tuple[int, int], ...]  # (item index, label index), items strictly increasing

    kind = KIND_BATCH

    @property
    def signer(self) -> AccountKey:
        return self.annotator

    def body_fields(self) -> list:
        flat: list[int] = []
        for i, l in self.labels:
            flat.append(i)
            flat.append(l)
        return [KIND_BATCH, VERSION, self.annotator, self.task_id, self.created_at, flat]


@dataclass(frozen=True)
class GoldReveal:
    requester: AccountKey
    task_id: TaskId
    created_at: int
    salt: bytes
    answers: tuple[tuple[int, int], ...]

    kind = KIND_GOLD

    @property
    def signer(self) -> AccountKey:
        return self.requester

    def body_fields(self) -> list:
        return [KIND_GOLD, VERSION, self.requester, self.task_id, self.created_at, self.salt,
                _flatten(self.answers)]


@dataclass(frozen=True)
class Attestation:
    validator: AccountKey
    task_id: TaskId
    created_at: int
    round: int
    phase: int
    set_root: bytes
    result_root: bytes
    batch_ids: tuple[bytes, ...]

    kind = KIND_ATTESTATION

    @property
    def signer(self) -> AccountKey:
        return self.validator

    def body_fields(self) -> list:
        return [KIND_ATTESTATION, VERSION, self.validator, self.task_id, self.created_at, self.round,
                self.phase, self.set_root, self.result_root, list(self.batch_ids)]


@dataclass(frozen=True)
class Transfer:
    """A debit order: ``sender`` moves ``amount`` credits to an account (``dest_type``
    DEST_ACCOUNT, ``dest`` = the recipient's key) or into the escrow of a task
    (DEST_ESCROW, ``dest`` = the task id). ``seq`` is the sender's debit sequence
    number (0, 1, 2, ...): validators co-sign at most one order per (sender, seq), and
    only the next one of the sender, only when it is funded (protocol/ledger.py)."""

    sender: AccountKey
    seq: int
    created_at: int
    amount: int
    dest_type: int
    dest: bytes

    kind = KIND_TRANSFER
    task_id = LEDGER_BUCKET  # the bucket it is stored and synced in

    @property
    def signer(self) -> AccountKey:
        return self.sender

    @property
    def slot(self) -> tuple[bytes, int]:
        return (self.sender, self.seq)

    def body_fields(self) -> list:
        return [KIND_TRANSFER, VERSION, self.sender, self.seq, self.created_at, self.amount,
                self.dest_type, self.dest]


@dataclass(frozen=True)
class LedgerVote:
    """A validator's signature on debit orders: ``votes`` holds (sender, seq, order id)
    triples, (sender, seq) strictly increasing. One message co-signs many orders, so
    a validator's cost per transfer is a fraction of a signature."""

    validator: AccountKey
    created_at: int
    votes: tuple[tuple[bytes, int, bytes], ...]

    kind = KIND_LEDGER_VOTE
    task_id = LEDGER_BUCKET

    @property
    def signer(self) -> AccountKey:
        return self.validator

    def body_fields(self) -> list:
        flat: list = []
        for sender, seq, oid in self.votes:
            flat += [sender, seq, oid]
        return [KIND_LEDGER_VOTE, VERSION, self.validator, self.created_at, flat]


Body = Union[TaskAnnouncement, AnnotationBatch, GoldReveal, Attestation, Transfer, LedgerVote]


@dataclass(frozen=True)
class SignedMessage:
    """A decoded message: its body, signature, and the exact bytes it came from."""

    body: Body
    body_bytes: bytes
    signature: bytes
    raw: bytes  # the whole envelope

    @property
    def kind(self) -> int:
        return self.body.kind

    def signed_bytes(self, network_id: bytes) -> bytes:
        return DOMAIN_TAGS[self.body.kind] + network_id + self.body_bytes

    def compute_id(self, network_id: bytes) -> MessageId:
        return sha256(self.signed_bytes(network_id))


def _flatten(pairs) -> list[int]:
    out: list[int] = []
    for a, b in pairs:
        out.append(a)
        out.append(b)
    return out


# --------------------------------------------------------------------------- signing


def sign_message(body: Body, signing_key: nacl.signing.SigningKey, network_id: bytes) -> SignedMessage:
    """Encode ``body`` canonically and sign it for ``network_id``. The key must be the body's signer."""
    if bytes(signing_key.verify_key) != body.signer:
        raise ValueError("signing key does not match the message's signer field")
    body_bytes = pack(body.body_fields())
    sig = signing_key.sign(DOMAIN_TAGS[body.kind] + network_id + body_bytes).signature
    raw = pack([body_bytes, sig])
    return SignedMessage(body=body, body_bytes=body_bytes, signature=sig, raw=raw)


@lru_cache(maxsize=65536)
def _is_valid_point(pk: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(pk)
        return True
    except Exception:
        return False


def signature_check_input(msg: SignedMessage, network_id: bytes) -> tuple[bytes, bytes] | None:
    """What ``verify_signature`` checks: (public key, signature || domain-separated signed
    bytes) for ``nacl.bindings.crypto_sign_open``, or None if the signer field is not a
    usable public key (then the signature is never valid). Lets a caller run the very
    same check elsewhere (node/core/verifier.py: in a helper process)."""
    pk = msg.body.signer
    if not _is_valid_point(pk):
        return None
    return pk, msg.signature + msg.signed_bytes(network_id)


def verify_signature(msg: SignedMessage, network_id: bytes) -> bool:
    """True iff the signature is a valid ed25519 signature by the body's signer over
    the domain-separated signed bytes. libsodium rejects non-canonical signatures."""
    check = signature_check_input(msg, network_id)
    if check is None:
        return False
    try:
        nacl.bindings.crypto_sign_open(check[1], check[0])
        return True
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False


def compute_gold_commitment(salt: bytes, answers) -> bytes:
    """sha256(tag || salt || canonical msgpack of the flat [item, label, ...] answer list)."""
    return sha256(GOLD_COMMIT_TAG + salt + pack(_flatten(sorted(answers))))


# --------------------------------------------------------------------------- decode


def _limits(params: Params) -> dict:
    biggest_array = max(params.max_items_per_task, 2 * params.max_labels_per_batch,
                        params.max_batch_ids_per_attestation, 3 * params.max_votes_per_ledger_vote,
                        params.max_classes, 16)
    return dict(max_bytes=params.max_message_bytes, max_array=biggest_array,
                max_bin=max(params.max_inline_item_bytes, 64), max_str=max(params.max_string_bytes, params.max_inline_item_bytes))


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise DecodeError(what)


def _int(v: Any, name: str) -> int:
    _need(type(v) is int, f"{name} must be an integer")
    return v


def _uint(v: Any, name: str) -> int:
    _need(type(v) is int and v >= 0, f"{name} must be a non-negative integer")
    return v


def _bin(v: Any, name: str, length: int | None = None) -> bytes:
    _need(type(v) is bytes, f"{name} must be bytes")
    if length is not None:
        _need(len(v) == length, f"{name} must be {length} bytes, got {len(v)}")
    return v


def _str(v: Any, name: str) -> str:
    _need(type(v) is str, f"{name} must be a string")
    return v


def _list(v: Any, name: str) -> list:
    _need(type(v) is list, f"{name} must be an array")
    return v


def _pairs(flat: Any, name: str) -> tuple[tuple[int, int], ...]:
    flat = _list(flat, name)
    _need(len(flat) % 2 == 0, f"{name} must hold (item, label) pairs: even length")
    for v in flat:
        _need(type(v) is int and v >= 0, f"{name} entries must be non-negative integers")
    return tuple(zip(flat[0::2], flat[1::2]))


def decode_message(raw: bytes, params: Params) -> SignedMessage:
    """Decode an envelope and its body into a SignedMessage.

    Checks structure and types only (plus canonical form); raises DecodeError with
    the first problem found. Sizes and ranges are ``validate_basic``'s job.
    """
    lim = _limits(params)
    env = unpack(raw, max_bytes=lim["max_bytes"], max_array=2, max_bin=lim["max_bytes"], max_str=0)
    _need(type(env) is list and len(env) == 2, "envelope must be [body, signature]")
    body_bytes = _bin(env[0], "body")
    sig = _bin(env[1], "signature", 64)
    f = unpack(body_bytes, **lim)
    _need(type(f) is list and len(f) >= 3, "body must be an array [kind, version, signer, ...]")
    kind = _int(f[0], "kind")
    version = _int(f[1], "version")
    _need(kind in KIND_NAMES, f"unknown message kind {kind}")
    _need(version == VERSION, f"unsupported {KIND_NAMES[kind]} version {version}; this node speaks version {VERSION}")
    signer = _bin(f[2], "signer", 32)
    if kind == KIND_TASK:
        _need(len(f) == 13, "task announcement must have 13 fields")
        sch = _list(f[7], "schema")
        _need(len(sch) == 3, "schema must be [type, domain, labels]")
        labels = tuple(_str(x, "label name") for x in _list(sch[2], "schema labels"))
        schema = LabelSchema(_uint(sch[0], "schema type"), _str(sch[1], "schema domain"), labels)
        items = tuple(_decode_item(x) for x in _list(f[8], "items"))
        gc = f[11]
        if gc is not None:
            gc = _bin(gc, "gold_commitment", 32)
        body: Body = TaskAnnouncement(
            requester=signer, nonce=_uint(f[3], "nonce"), created_at=_uint(f[4], "created_at"),
            deadline=_uint(f[5], "deadline"), title=_str(f[6], "title"), schema=schema, items=items,
            redundancy=_uint(f[9], "redundancy"), bounty=_uint(f[10], "bounty"), gold_commitment=gc,
            reward_rule=_uint(f[12], "reward_rule"))
    elif kind == KIND_BATCH:
        _need(len(f) == 6, "annotation batch must have 6 fields")
        body = AnnotationBatch(annotator=signer, task_id=_bin(f[3], "task_id", 32),
                               created_at=_uint(f[4], "created_at"), labels=_pairs(f[5], "labels"))
    elif kind == KIND_GOLD:
        _need(len(f) == 7, "gold reveal must have 7 fields")
        body = GoldReveal(requester=signer, task_id=_bin(f[3], "task_id", 32), created_at=_uint(f[4], "created_at"),
                          salt=_bin(f[5], "salt", 32), answers=_pairs(f[6], "answers"))
    elif kind == KIND_TRANSFER:
        _need(len(f) == 8, "transfer must have 8 fields")
        body = Transfer(sender=signer, seq=_uint(f[3], "seq"), created_at=_uint(f[4], "created_at"),
                        amount=_uint(f[5], "amount"), dest_type=_uint(f[6], "dest_type"),
                        dest=_bin(f[7], "dest", 32))
    elif kind == KIND_LEDGER_VOTE:
        _need(len(f) == 5, "ledger vote must have 5 fields")
        flat = _list(f[4], "votes")
        _need(len(flat) % 3 == 0, "votes must hold (sender, seq, order id) triples: length a multiple of 3")
        votes = tuple((_bin(flat[k], "vote sender", 32), _uint(flat[k + 1], "vote seq"),
                       _bin(flat[k + 2], "vote order id", 32)) for k in range(0, len(flat), 3))
        body = LedgerVote(validator=signer, created_at=_uint(f[3], "created_at"), votes=votes)
    else:
        _need(len(f) == 10, "attestation must have 10 fields")
        ids = tuple(_bin(x, "batch id", 32) for x in _list(f[9], "batch_ids"))
        body = Attestation(validator=signer, task_id=_bin(f[3], "task_id", 32), created_at=_uint(f[4], "created_at"),
                           round=_uint(f[5], "round"), phase=_uint(f[6], "phase"),
                           set_root=_bin(f[7], "set_root", 32), result_root=_bin(f[8], "result_root", 32),
                           batch_ids=ids)
    return SignedMessage(body=body, body_bytes=body_bytes, signature=sig, raw=bytes(raw))


def _decode_item(x: Any) -> Item:
    x = _list(x, "item")
    _need(len(x) >= 2, "item must be [type, ...]")
    t = _uint(x[0], "item type")
    if t == ITEM_TEXT:
        _need(len(x) == 2, "text item must be [0, text]")
        return Item(ITEM_TEXT, text=_str(x[1], "item text"))
    if t == ITEM_BYTES:
        _need(len(x) == 3, "bytes item must be [1, payload, media_type]")
        return Item(ITEM_BYTES, payload=_bin(x[1], "item payload"), media_type=_str(x[2], "media type"))
    if t == ITEM_BLOB:
        _need(len(x) == 4, "blob item must be [2, sha256, size, media_type]")
        return Item(ITEM_BLOB, digest=_bin(x[1], "blob digest", 32), size=_uint(x[2], "blob size"),
                    media_type=_str(x[3], "media type"))
    raise DecodeError(f"unknown item type {t}")


# --------------------------------------------------------------------------- validate_basic

U64 = (1 << 64) - 1


def _utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


def validate_basic(msg: SignedMessage, params: Params) -> Verdict:
    """Stateless checks of sizes and ranges. REJECT with a reason, or ACCEPT."""
    b = msg.body
    if len(msg.raw) > params.max_message_bytes:
        return reject(f"message is {len(msg.raw)} bytes; limit {params.max_message_bytes}")
    for name in ("created_at", "nonce", "deadline", "round", "seq", "amount"):
        if getattr(b, name, 0) > U64:
            return reject(f"{name} does not fit in 64 bits")
    if isinstance(b, TaskAnnouncement):
        s = b.schema
        if s.schema_type != SCHEMA_SINGLE_CHOICE:
            return reject(f"unsupported schema type {s.schema_type}; version 1 knows 0 (single choice)")
        if not 2 <= len(s.labels) <= params.max_classes:
            return reject(f"schema must have 2..{params.max_classes} labels, has {len(s.labels)}")
        if len(set(s.labels)) != len(s.labels):
            return reject("label names must be distinct")
        for txt, what in [(b.title, "title"), (s.domain, "domain"), *[(l, "label name") for l in s.labels]]:
            if _utf8_len(txt) > params.max_string_bytes:
                return reject(f"{what} longer than {params.max_string_bytes} bytes")
        if any(l == "" for l in s.labels):
            return reject("label names must not be empty")
        if not 1 <= len(b.items) <= params.max_items_per_task:
            return reject(f"task must have 1..{params.max_items_per_task} items, has {len(b.items)}")
        for it in b.items:
            if it.item_type == ITEM_TEXT and _utf8_len(it.text) > params.max_inline_item_bytes:
                return reject(f"inline item longer than {params.max_inline_item_bytes} bytes")
            if it.item_type == ITEM_BYTES and len(it.payload) > params.max_inline_item_bytes:
                return reject(f"inline item longer than {params.max_inline_item_bytes} bytes")
            if it.item_type == ITEM_BLOB and it.size > params.max_blob_bytes:
                return reject(f"blob of {it.size} bytes exceeds {params.max_blob_bytes}")
            if _utf8_len(it.media_type) > params.max_string_bytes:
                return reject("media type too long")
        d = b.deadline - b.created_at
        if d < params.min_task_duration_ms or d > params.max_task_duration_ms:
            return reject(f"deadline must be {params.min_task_duration_ms}..{params.max_task_duration_ms} ms after created_at")
        if not 1 <= b.redundancy <= params.max_redundancy:
            return reject(f"redundancy must be 1..{params.max_redundancy}")
        if b.bounty > params.max_bounty:
            return reject(f"bounty exceeds {params.max_bounty}")
        if b.reward_rule != REWARD_RULE_ACCURACY:
            return reject(f"unknown reward rule {b.reward_rule}")
    elif isinstance(b, AnnotationBatch):
        if not 1 <= len(b.labels) <= params.max_labels_per_batch:
            return reject(f"batch must hold 1..{params.max_labels_per_batch} labels, holds {len(b.labels)}")
        if not _strictly_increasing(b.labels):
            return reject("batch items must be strictly increasing (one label per item)")
    elif isinstance(b, GoldReveal):
        if len(b.answers) > params.max_items_per_task:
            return reject("more gold answers than items allowed in a task")
        if not _strictly_increasing(b.answers):
            return reject("gold items must be strictly increasing")
    elif isinstance(b, Attestation):
        if b.phase not in (PHASE_PREVOTE, PHASE_PRECOMMIT):
            return reject(f"unknown attestation phase {b.phase}")
        if len(b.batch_ids) > params.max_batch_ids_per_attestation:
            return reject("too many batch ids in attestation")
        if any(b.batch_ids[i] >= b.batch_ids[i + 1] for i in range(len(b.batch_ids) - 1)):
            return reject("attestation batch ids must be sorted and distinct")
        if b.phase == PHASE_PREVOTE and compute_set_root(b.task_id, b.batch_ids) != b.set_root:
            return reject("set_root does not match the listed batch ids")
        if b.phase == PHASE_PRECOMMIT and b.batch_ids:
            return reject("a precommit lists no batch ids")
    elif isinstance(b, Transfer):
        if not 1 <= b.amount <= MAX_AMOUNT:
            return reject(f"amount must be 1..{MAX_AMOUNT} credits, got {b.amount}")
        if b.seq > MAX_AMOUNT:
            return reject(f"seq must be at most {MAX_AMOUNT}")
        if b.dest_type not in (DEST_ACCOUNT, DEST_ESCROW):
            return reject(f"unknown transfer destination type {b.dest_type}; 0 = account, 1 = task escrow")
        if b.dest_type == DEST_ACCOUNT and b.dest == b.sender:
            return reject("a transfer to oneself moves nothing")
        if b.dest == LEDGER_BUCKET:
            return reject("destination must not be 32 zero bytes")
    elif isinstance(b, LedgerVote):
        if not 1 <= len(b.votes) <= params.max_votes_per_ledger_vote:
            return reject(f"ledger vote must hold 1..{params.max_votes_per_ledger_vote} votes, holds {len(b.votes)}")
        for k in range(len(b.votes) - 1):
            if b.votes[k][:2] >= b.votes[k + 1][:2]:
                return reject("ledger votes must be sorted by (sender, seq), one per slot")
        if any(seq > MAX_AMOUNT for _, seq, _ in b.votes):
            return reject(f"vote seq must be at most {MAX_AMOUNT}")
    return ACCEPT


def _strictly_increasing(pairs) -> bool:
    prev = -1
    for i, _ in pairs:
        if i <= prev:
            return False
        prev = i
    return True


SET_ROOT_TAG = b"labelmesh/set-root/v1\x00"


def compute_set_root(task_id: bytes, batch_ids) -> bytes:
    """Digest of the exact annotation set of a task: sha256(tag || task_id || sorted ids)."""
    return sha256(SET_ROOT_TAG + task_id + b"".join(sorted(batch_ids)))


# --------------------------------------------------------------------------- validate_in_context


class Context(Protocol):
    """What validation needs to know about local state (supplied by the node)."""

    def get_task(self, task_id: bytes) -> TaskAnnouncement | None: ...

    def validator_weight(self, account: bytes) -> int: ...


def compute_round_start(deadline: int, round_: int, params: Params) -> int:
    """Time (ms) at which finality round ``round_`` of a task with this deadline starts:
    deadline + grace + round * round_timeout (rounds are clocked; PROTOCOL.md 11)."""
    return deadline + params.grace_period_ms + round_ * params.round_timeout_ms


def validate_in_context(msg: SignedMessage, ctx: Context, now_ms: int, params: Params) -> Verdict:
    """Checks that need the referenced task, the validator set and the clock.

    IGNORE when the message may become valid later (unknown task yet, from the
    future) or is harmless; REJECT when it can never be valid.
    """
    b = msg.body
    if b.created_at > now_ms + params.clock_skew_ms:
        return ignore("created_at is in the future beyond the clock-skew tolerance")
    if isinstance(b, (TaskAnnouncement, Transfer)):
        # A transfer's funding and sequence are not validity: they decide whether
        # validators co-sign it (protocol/ledger.py), and an unfunded order is harmless.
        return ACCEPT
    if isinstance(b, LedgerVote):
        if ctx.validator_weight(b.validator) <= 0:
            return reject("ledger vote signer is not a validator of this network")
        return ACCEPT
    task = ctx.get_task(b.task_id)
    if task is None:
        return UNKNOWN_TASK
    if isinstance(b, AnnotationBatch):
        n_items, n_classes = len(task.items), len(task.schema.labels)
        for i, l in b.labels:
            if i >= n_items:
                return reject(f"item {i} out of range: task has {n_items} items")
            if l >= n_classes:
                return reject(f"label {l} out of range: schema has {n_classes} labels")
        if b.created_at > task.deadline:
            return ignore("signed after the task deadline")
        return ACCEPT
    if isinstance(b, GoldReveal):
        if b.requester != task.requester:
            return reject("gold reveal not signed by the task's requester")
        if task.gold_commitment is None:
            return reject("task has no gold commitment")
        if b.created_at < task.deadline:
            return reject("gold revealed before the deadline")
        for i, l in b.answers:
            if i >= len(task.items) or l >= len(task.schema.labels):
                return reject("gold answer out of range")
        if compute_gold_commitment(b.salt, b.answers) != task.gold_commitment:
            return reject("gold reveal does not match the task's commitment")
        return ACCEPT
    if isinstance(b, Attestation):
        if ctx.validator_weight(b.validator) <= 0:
            return reject("attestation signer is not a validator of this network")
        # Rounds are clocked (round r starts at deadline + grace + r * round_timeout) and a
        # validator stamps created_at with its own clock, so an honest attestation is never
        # signed before its round starts.  Together with the created_at skew check above
        # this bounds how far ahead of the clock a stored attestation can be: without it a
        # faulty validator could fill every node's store with far-future rounds.
        start = compute_round_start(task.deadline, b.round, params)
        if b.created_at < start:
            return reject(f"attestation for round {b.round} signed at {b.created_at}, before the round "
                          f"starts at {start}")
        return ACCEPT
    return reject("unknown message type")


def check_message(raw: bytes, ctx: Context, network_id: bytes, now_ms: int, params: Params
                  ) -> tuple[Verdict, SignedMessage | None]:
    """The whole pipeline: decode -> validate_basic -> verify -> validate_in_context.

    Never raises on hostile input: a DecodeError becomes a REJECT verdict.
    """
    try:
        msg = decode_message(raw, params)
    except DecodeError as e:
        return reject(f"decode: {e}"), None
    v = validate_basic(msg, params)
    if not v.ok:
        return v, msg
    if not verify_signature(msg, network_id):
        return reject("bad signature"), msg
    return validate_in_context(msg, ctx, now_ms, params), msg

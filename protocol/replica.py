"""Partial replication and pruning: the domain gossip topics, the certified result's
canonical bytes, and what a node keeps of a task it settles from its certified result alone.

How it works (PROTOCOL.md 7.2, 8.4, 17; docs/scaling.md "Partial replication and pruning")
-----------------------------------------------------------------------------------------
* **Domain topics.** Annotation batches, gold reveals and attestations of a task travel
  on the topic of the task's label-schema domain, ``domain_topic(network_id, domain)``;
  tasks, transfers and ledger votes stay on the global topics. A node that follows some
  domains joins only their topics.
* **Certified result bytes.** ``result_root = sha256(RESULT_ROOT_TAG || R)`` where
  ``R = pack(result.canonical())`` (protocol/tally.py). A node that does not hold a
  task's batches can still learn its result: it gets the certificate and R from a peer
  (sync CERTIFIED), checks the certificate (``verify_certificate``: > 2/3 of the
  validator weight precommitted) and ``sha256(RESULT_ROOT_TAG || R) == result_root``,
  and decodes R (``decode_result``). It has then verified the very result every full node
  computes, without recomputing it.
* **Settlement.** What reputation and the ledger need of a certified task: per annotator
  (account, labels, equivocations, accuracy, score, reward, trust), the refund and the
  fee, and the roots. A node keeps it for every task it settles without the batches: the
  tasks of domains it does not follow (it does not serve their results), and its pruned
  tasks (for which it also keeps the certificate and R, and serves them).

Pure: no I/O, no clock.
"""
from __future__ import annotations

from dataclasses import dataclass

from .codec import pack, sha256, unpack
from .errors import DecodeError
from .finality import Certificate, decode_certificate, encode_certificate, verify_certificate
from .messages import LabelSchema, TaskAnnouncement

RESULT_ROOT_TAG = b"labelmesh/result-root/v1\x00"  # = protocol.tally.RESULT_ROOT_TAG (tally loads numpy)
DOMAIN_TOPIC_TAG = b"labelmesh/domain-topic/v1\x00"
SETTLEMENT_VERSION = 1
#: Bounds of a certified result's bytes: 100,000 items (params.max_items_per_task's top)
#: x 4 per-item integers of at most 9 bytes, plus annotators.
MAX_RESULT_BYTES = 8 << 20
MAX_RESULT_ARRAY = 1 << 20
ID_LEN = 32


def domain_tag(domain: str) -> str:
    """16 hex digits naming a label-schema domain in a topic: any UTF-8 domain string
    maps to a short, topic-safe name."""
    return sha256(DOMAIN_TOPIC_TAG + domain.encode("utf-8"))[:8].hex()


def domain_topic(network_id: bytes, domain: str) -> str:
    """The gossip topic of a domain's batches, gold reveals and attestations."""
    return f"/labelmesh/{network_id.hex()[:16]}/domain/{domain_tag(domain)}/1"


def compute_result_root(result_bytes: bytes) -> bytes:
    return sha256(RESULT_ROOT_TAG + result_bytes)


def encode_result(result) -> bytes:
    """R, the canonical bytes of a computed result (a protocol.tally.TaskResult)."""
    return pack(result.canonical())


@dataclass(frozen=True)
class SettledAnnotator:
    """An annotator's line of a certified result (the fields of tally.AnnotatorResult)."""
    account: bytes
    labels: int
    equivocations: int
    accuracy: int
    score: int
    reward: int
    trust: int


@dataclass(frozen=True)
class ResultView:
    """A certified result decoded from R: the same fields as tally.TaskResult, without
    the batch ids (they are not part of R; the certificate's set_root commits to them)."""
    task_id: bytes
    set_root: bytes
    label: tuple[int, ...]
    confidence: tuple[int, ...]
    agreement: tuple[int, ...]
    votes: tuple[int, ...]
    annotators: tuple[SettledAnnotator, ...]
    equivocations: tuple[tuple[bytes, int], ...]
    alpha: int
    refund: int
    gold_items: int
    fee: int
    result_root: bytes
    batch_ids: tuple = ()


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise DecodeError(what)


def _uints(v, name: str, lo: int = 0) -> tuple[int, ...]:
    _need(type(v) is list and all(type(x) is int and x >= lo for x in v), f"result {name} must be a list of integers >= {lo}")
    return tuple(v)


def decode_result(data: bytes) -> ResultView:
    """Decode R (canonical msgpack, bounded); raise DecodeError if malformed. The caller
    checks it against a certificate (``check_certified``)."""
    f = unpack(data, max_bytes=MAX_RESULT_BYTES, max_array=MAX_RESULT_ARRAY, max_bin=ID_LEN, max_str=0)
    _need(type(f) is list and len(f) == 12, "result must be a list of 12 fields")
    task_id, set_root, label, conf, agree, votes, anns, equiv, alpha, refund, gold_items, fee = f
    _need(type(task_id) is bytes and len(task_id) == ID_LEN and type(set_root) is bytes and len(set_root) == ID_LEN,
          "result task_id and set_root must be 32 bytes")
    label, conf, agree, votes = _uints(label, "label", -1), _uints(conf, "confidence"), _uints(agree, "agreement"), \
        _uints(votes, "votes")
    _need(len(label) == len(conf) == len(agree) == len(votes), "result per-item lists differ in length")
    _need(type(anns) is list, "result annotators must be a list")
    annotators = []
    for a in anns:
        _need(type(a) is list and len(a) == 7 and type(a[0]) is bytes and len(a[0]) == ID_LEN
              and all(type(x) is int and x >= 0 for x in a[1:]), "result annotator must be [account, 6 integers >= 0]")
        annotators.append(SettledAnnotator(*a))
    _need(all(annotators[k].account < annotators[k + 1].account for k in range(len(annotators) - 1)),
          "result annotators must be sorted by account, one each")
    _need(type(equiv) is list and all(type(e) is list and len(e) == 2 and type(e[0]) is bytes and len(e[0]) == ID_LEN
                                      and type(e[1]) is int and e[1] >= 0 for e in equiv),
          "result equivocations must be [[account, item], ...]")
    _need(all(type(x) is int and x >= 0 for x in (alpha, refund, gold_items, fee)),
          "result alpha, refund, gold_items and fee must be integers >= 0")
    return ResultView(task_id, set_root, label, conf, agree, votes, tuple(annotators),
                      tuple((e[0], e[1]) for e in equiv), alpha, refund, gold_items, fee, compute_result_root(data))


def check_certified(task_id: bytes, cert_bytes: bytes, result_bytes: bytes, validators: dict, network_id: bytes,
                    params) -> tuple[Certificate, ResultView]:
    """Verify a peer's (certificate, R) for ``task_id``: a valid certificate of that task
    (signatures, > 2/3 of ``validators``' weight) whose result_root is the hash of R, and
    R decodes to a result of that task over the certified set. Raises DecodeError."""
    cert = decode_certificate(cert_bytes, params)
    _need(cert.task_id == task_id, "certificate is for another task")
    _need(verify_certificate(cert, validators, network_id), "certificate does not verify (signatures or quorum)")
    _need(compute_result_root(result_bytes) == cert.result_root, "result bytes do not hash to the certified result_root")
    res = decode_result(result_bytes)
    _need(res.task_id == task_id and res.set_root == cert.set_root, "result is not over the certified set")
    return cert, res


# --------------------------------------------------------------------------- task stubs

STUB_VERSION = 1


def encode_task_stub(task: TaskAnnouncement) -> bytes:
    """What a node keeps of a (verified) task announcement of a domain it does not
    follow: every field but the items (their number is kept). The ledger needs the
    requester and the bounty, reputation the deadline, the domain and the classes."""
    s = task.schema
    return pack([STUB_VERSION, task.requester, task.nonce, task.created_at, task.deadline, task.title,
                 [s.schema_type, s.domain, list(s.labels)], len(task.items), task.redundancy, task.bounty,
                 task.gold_commitment, task.reward_rule])


def decode_task_stub(data: bytes) -> tuple[TaskAnnouncement, int]:
    """(the task without its items, its number of items), from ``encode_task_stub``."""
    f = unpack(data, max_bytes=1 << 20, max_array=1 << 16, max_bin=ID_LEN, max_str=1 << 16)
    _need(type(f) is list and len(f) == 12 and f[0] == STUB_VERSION and type(f[6]) is list and len(f[6]) == 3,
          "task stub must be [1, ...11 fields]")
    _, requester, nonce, created_at, deadline, title, schema, n_items, redundancy, bounty, commitment, rule = f
    task = TaskAnnouncement(requester, nonce, created_at, deadline, title,
                            LabelSchema(schema[0], schema[1], tuple(schema[2])), (), redundancy, bounty, commitment,
                            rule)
    return task, n_items


# --------------------------------------------------------------------------- settlements


@dataclass(frozen=True)
class Settlement:
    """What a node keeps of a certified task it does not hold the batches of: enough for
    the ledger's release and for reputation, and, for a pruned task, the proof it serves
    (``cert_bytes``, ``result_bytes``; empty for a task of a domain it does not follow)."""
    task_id: bytes
    round: int
    set_root: bytes
    result_root: bytes
    refund: int
    fee: int
    gold_items: int
    annotators: tuple[SettledAnnotator, ...]
    cert_bytes: bytes = b""
    result_bytes: bytes = b""

    @property
    def servable(self) -> bool:
        return bool(self.cert_bytes and self.result_bytes)


def make_settlement(cert: Certificate, res, *, keep_proof: bytes | None = None) -> Settlement:
    """The settlement of a certified task from its certificate and (verified) result;
    ``keep_proof``: R, to keep the certificate and R with it (a pruned task)."""
    anns = tuple(SettledAnnotator(a.account, a.labels, a.equivocations, a.accuracy, a.score, a.reward, a.trust)
                 for a in res.annotators)
    return Settlement(cert.task_id, cert.round, cert.set_root, cert.result_root, res.refund, res.fee, res.gold_items,
                      anns, encode_certificate(cert) if keep_proof else b"", keep_proof or b"")


def encode_settlement(s: Settlement) -> bytes:
    return pack([SETTLEMENT_VERSION, s.task_id, s.round, s.set_root, s.result_root, s.refund, s.fee, s.gold_items,
                 [[a.account, a.labels, a.equivocations, a.accuracy, a.score, a.reward, a.trust] for a in s.annotators],
                 s.cert_bytes, s.result_bytes])


def decode_settlement(data: bytes) -> Settlement:
    """Inverse of ``encode_settlement`` (a node's own store: structure checked, bounded)."""
    f = unpack(data, max_bytes=2 * MAX_RESULT_BYTES, max_array=MAX_RESULT_ARRAY, max_bin=MAX_RESULT_BYTES, max_str=0)
    _need(type(f) is list and len(f) == 11 and f[0] == SETTLEMENT_VERSION, "settlement must be [1, ...10 fields]")
    _, task_id, round_, set_root, result_root, refund, fee, gold_items, anns, cert_bytes, result_bytes = f
    _need(type(anns) is list and all(type(a) is list and len(a) == 7 for a in anns), "settlement annotators malformed")
    return Settlement(task_id, round_, set_root, result_root, refund, fee, gold_items,
                      tuple(SettledAnnotator(*a) for a in anns), cert_bytes, result_bytes)


def settlement_result(s: Settlement) -> ResultView:
    """A ResultView of a settlement (annotators, refund, fee, roots; no per-item lists
    unless the settlement keeps R, which is then decoded)."""
    if s.result_bytes:
        return decode_result(s.result_bytes)
    return ResultView(s.task_id, s.set_root, (), (), (), (), s.annotators, (), 0, s.refund, s.gold_items, s.fee,
                      s.result_root)

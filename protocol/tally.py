"""The tally: from a task's set of signed messages to its result, rewards and roots.

A pure function of (task, annotation batches, gold reveal, prior weights, params).
It does not care in which order messages arrived: batches are keyed by id and
every list is put in a canonical order before any arithmetic, and the arithmetic
is integer-only (see ``protocol/aggregate.py``), so every node computes the same
bytes and the same ``result_root``.

Rules fixed here (specified in PROTOCOL.md section 10):

* **Votes.** The vote of annotator A on item i is the set of distinct labels A
  gave i across all of A's batches for the task. One label: a vote. The same
  label repeated: still one vote. Two or more different labels: A *equivocated*
  on i; A's votes on i weigh nothing and (A, i) is reported as evidence.
* **Weights.** Each annotator's prior weight comes from the reputation snapshot
  the caller supplies (fixed point, ONE = 65536); unknown accounts get
  ``params.fresh_weight``. Weights are capped at ONE and then scaled so that the
  highest-weighted annotator of the task has exactly ONE
  (``compute_relative_weights``): what counts is weight *relative to the best
  known annotator present*. A task answered only by fresh accounts is therefore
  aggregated as plain Dawid–Skene, while 100 fresh keys next to 3 reputable
  experts carry ~1/1000 of an expert's say each.
* **Rewards** (integer credits). Each annotator's score is the sum, over the
  items they voted on (not equivocated), of: on a gold item, ONE if the label
  equals the gold answer else 0; elsewhere the item's confidence if the label
  equals the consensus label, else 0. Only skill above chance is paid:
  pay_A = max(0, score_A - labels_A * ONE // k - EQUIVOCATION_PENALTY * ONE * e_A)
  for k classes and e_A equivocated items (a random annotator matches 1/k of the
  labels for free; an equivocation costs ten labels' worth), and
  reward_A = floor(net * pay_A / sum of pay) with net = bounty - fee (the
  protocol fee of protocol/ledger.py); the remainder (and all of net when nobody
  is above chance) is refunded to the requester, so
  rewards + refund + fee == bounty exactly.
* **Trust** (what reputation may learn from this task, protocol/reputation.py):
  per annotator, the mean prior weight (capped at ONE) of the *other witnesses*
  of the task: the annotators with a counted vote and, when gold is revealed,
  the requester whose gold it is. Trust flows from reputable accounts and is
  shared, never multiplied: a crowd of fresh keys vouching for each other is
  worth one fresh key.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import aggregate
from .codec import pack, sha256
from .ledger import compute_fee
from .messages import AnnotationBatch, GoldReveal, TaskAnnouncement, compute_set_root
from .params import Params
from .reputation import EQUIVOCATION_PENALTY

RESULT_ROOT_TAG = b"labelmesh/result-root/v1\x00"
ONE = aggregate.ONE  # the fixed-point one of every share (defined in protocol/aggregate.py)


@dataclass(frozen=True)
class AnnotatorResult:
    account: bytes
    labels: int          # votes counted (equivocated items excluded)
    equivocations: int   # items this annotator gave two different labels (evidence)
    accuracy: int        # fixed point, ONE = 65536
    score: int           # reward score (fixed point sum)
    reward: int          # credits
    trust: int           # fixed point: mean capped weight of the task's other witnesses


@dataclass(frozen=True)
class TaskResult:
    task_id: bytes
    set_root: bytes
    batch_ids: tuple[bytes, ...]
    label: tuple[int, ...]         # per item, -1 if no votes
    confidence: tuple[int, ...]    # per item, fixed point
    agreement: tuple[int, ...]     # per item, fixed point
    votes: tuple[int, ...]         # per item, number of counted votes
    annotators: tuple[AnnotatorResult, ...]  # sorted by account
    equivocations: tuple[tuple[bytes, int], ...]  # (account, item), sorted
    alpha: int
    refund: int
    gold_items: int
    fee: int                       # protocol fee taken from the bounty (protocol/ledger.py)
    result_root: bytes

    def canonical(self) -> list:
        return [self.task_id, self.set_root, list(self.label), list(self.confidence),
                list(self.agreement), list(self.votes),
                [[a.account, a.labels, a.equivocations, a.accuracy, a.score, a.reward, a.trust]
                 for a in self.annotators],
                [list(e) for e in self.equivocations], self.alpha, self.refund, self.gold_items, self.fee]


def compute_relative_weights(weights: list[int], params: Params) -> np.ndarray:
    """min(w, ONE) scaled so the largest becomes ONE (integer floor division; all-zero stays zero)."""
    capped = [min(max(w, 0), ONE) for w in weights]
    top = max(capped, default=0)
    if top == 0:
        return np.zeros(len(weights), dtype=np.int64)
    return np.array([c * ONE // top for c in capped], dtype=np.int64)


def compute_trust(accounts: list[bytes], weights: list[int], nlabels: list[int], requester: bytes,
                  requester_weight: int | None) -> list[int]:
    """Per annotator (same order as ``accounts``): the mean of min(weight, ONE) over the
    task's other witnesses -- the annotators with at least one counted vote and, if
    ``requester_weight`` is given (gold was revealed), the requester -- floor division;
    0 when there is no other witness. An account is one witness even when it is both."""
    witness: dict[bytes, int] = {a: min(max(w, 0), ONE) for a, w, n in zip(accounts, weights, nlabels) if n > 0}
    if requester_weight is not None:
        witness.setdefault(requester, min(max(requester_weight, 0), ONE))
    total, count = sum(witness.values()), len(witness)
    out = []
    for a in accounts:
        own = witness.get(a)
        others = count - (own is not None)
        out.append((total - (own or 0)) // others if others else 0)
    return out


def compute_task_result(task_id: bytes, task: TaskAnnouncement,
                        batches: dict[bytes, AnnotationBatch] | list[tuple[bytes, AnnotationBatch]],
                        gold: GoldReveal | None, weight_of, params: Params,
                        method: str = "consensus", gold_id: bytes | None = None) -> TaskResult:
    """Compute the deterministic result of ``task`` over exactly ``batches`` (and ``gold``).

    ``batches`` maps batch id -> AnnotationBatch (all for this task, already valid).
    ``gold`` is the task's revealed gold (or None) and ``gold_id`` its message id:
    the revealed gold is part of the pinned set, so ``batch_ids``/``set_root``
    cover the sorted ids of the batches *and* of the gold reveal.
    ``weight_of(account) -> int`` gives the fixed-point prior weight snapshot.
    ``method`` is "consensus" (Dawid–Skene-class) or "plurality".
    """
    items_of = dict(batches)
    pinned = list(items_of)
    if gold is not None and gold_id is not None:
        pinned.append(gold_id)
    batch_ids = tuple(sorted(pinned))
    set_root = compute_set_root(task_id, batch_ids)
    n_items, n_classes = len(task.items), len(task.schema.labels)

    # Canonical vote table, vectorised with aggregate's own key rule (a big task has
    # 10^5-10^6 labels and a node aggregates it in a worker thread, node/core/node.py
    # prepare_result: numpy keeps the GIL free for the event loop far more than a dict of
    # sets and list.sort would).  A pair (annotator, item) with two or more different
    # labels is an equivocation; its votes count for nothing.
    nonempty = [items_of[bid] for bid in sorted(items_of) if items_of[bid].labels]
    accounts = sorted({b.annotator for b in nonempty})
    index = {a: k for k, a in enumerate(accounts)}
    n_acc = len(accounts)
    if nonempty:
        pairs = np.concatenate([np.asarray(b.labels, dtype=np.int64).reshape(-1, 2) for b in nonempty])
        who = np.repeat(np.array([index[b.annotator] for b in nonempty], dtype=np.int64),
                        [len(b.labels) for b in nonempty])
        key, bad = aggregate.sorted_vote_keys(pairs[:, 0], who, pairs[:, 1], n_acc, n_classes)
    else:
        key, bad = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    pair = key // n_classes  # item * n_acc + annotator index, ascending
    bad_pair = pair[bad]
    bad_pair = bad_pair[np.r_[True, bad_pair[1:] != bad_pair[:-1]]] if bad_pair.size else bad_pair
    equivocations = tuple(sorted((accounts[p % n_acc], p // n_acc) for p in bad_pair.tolist()))
    key, pair = key[~bad], pair[~bad]  # one vote per (item, annotator)
    itm = (pair // max(n_acc, 1)).astype(np.int32)
    ann = (pair % max(n_acc, 1)).astype(np.int32)
    lab = (key % n_classes).astype(np.int32)
    n_rows = key.size
    absolute = [int(weight_of(a)) for a in accounts]
    prior = compute_relative_weights(absolute, params)
    gold_map = dict(gold.answers) if gold is not None else None
    inp = aggregate.AggregateInput(n_items=n_items, n_classes=n_classes, n_annotators=len(accounts),
                                   item=itm, annotator=ann, label=lab, prior_weight=prior, gold=gold_map)
    if method == "plurality" or n_rows == 0:
        res = aggregate.compute_weighted_plurality(inp)
    else:
        res = aggregate.compute_consensus(inp)

    label = [int(x) for x in res.label]
    conf = [int(x) for x in res.confidence]
    counts = np.bincount(itm, minlength=n_items) if n_rows else np.zeros(n_items, dtype=np.int64)

    # Reward scores: integer fixed point, exact (float64 sums of integers <= ONE over at
    # most 2**24 votes stay below 2**53).
    nlabels = np.bincount(ann, minlength=n_acc).astype(np.int64).tolist()
    res_label = np.asarray(res.label, dtype=np.int64)
    res_conf = np.asarray(res.confidence, dtype=np.int64)
    point = np.where(lab == res_label[itm], res_conf[itm], 0)  # agreement with the consensus
    if gold_map is not None:
        g_label = np.full(n_items, -1, dtype=np.int64)
        g_label[np.fromiter(gold_map, dtype=np.int64, count=len(gold_map))] = list(gold_map.values())
        on_gold = g_label[itm] >= 0
        point = np.where(on_gold, np.where(lab == g_label[itm], ONE, 0), point)
    scores = np.bincount(ann, weights=point.astype(np.float64), minlength=n_acc).astype(np.int64).tolist()
    eq_count = {}
    for a, _ in equivocations:
        eq_count[a] = eq_count.get(a, 0) + 1
    # Pay skill above chance: a random annotator matches 1/k of the labels for free; an
    # equivocated item costs EQUIVOCATION_PENALTY labels' worth.
    pay = [max(0, scores[k] - nlabels[k] * ONE // n_classes - EQUIVOCATION_PENALTY * ONE * eq_count.get(a, 0))
           for k, a in enumerate(accounts)]
    total = sum(pay)
    fee = compute_fee(task.bounty, params)
    net = task.bounty - fee
    rewards = [(net * p) // total if total else 0 for p in pay]
    refund = net - sum(rewards)
    trust = compute_trust(accounts, absolute, nlabels, task.requester,
                          int(weight_of(task.requester)) if gold_map is not None else None)
    annotators = tuple(
        AnnotatorResult(account=a, labels=nlabels[k], equivocations=eq_count.get(a, 0),
                        accuracy=int(res.annotator_accuracy[k]),
                        score=scores[k], reward=rewards[k], trust=trust[k])
        for k, a in enumerate(accounts))
    result = TaskResult(
        task_id=task_id, set_root=set_root, batch_ids=batch_ids, label=tuple(label),
        confidence=tuple(conf), agreement=tuple(int(x) for x in res.agreement),
        votes=tuple(int(x) for x in counts), annotators=annotators, equivocations=equivocations,
        alpha=int(res.alpha), refund=refund, gold_items=len(gold_map or {}), fee=fee, result_root=b"")
    root = sha256(RESULT_ROOT_TAG + pack(result.canonical()))
    return TaskResult(**{**result.__dict__, "result_root": root})

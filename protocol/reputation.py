"""Reputation: per (account, domain), derived only from certified tasks, with a lag.

How it works
------------
Every certified task contributes, for each of its annotators, the numbers the
certified result already holds: labels counted, the reward score (fixed point:
ONE per gold answer matched, the item's confidence per agreement with a
non-gold certified label), the number of equivocated items, and the **trust**
the task can confer on that annotator (protocol/tally.py ``compute_trust``: the
mean weight, capped at ONE, of the task's other witnesses -- its other
annotators and, when gold is revealed, the requester). Reputation measures skill
*above chance*, *as corroborated by reputable accounts*:

    gain(a, t)    = (score(a, t) - labels(a, t) * ONE // k_t) * trust(a, t) // ONE   (k_t = classes of t)
    earned(a, d)  = max(0, sum_t gain(a, t) - EQUIVOCATION_PENALTY * ONE * sum_t equivocations(a, t))
                    // (sum_t labels(a, t) + PRIOR_LABELS)
    weight(a, d)  = min(max_weight, max(fresh_weight, earned(a, d) + genesis(a, d) + genesis(a, "")))
                    (genesis(a, "") counted once: for d == "" the two terms are one entry)

summed over the certified tasks t of domain d in the window (``//`` is floor
division, toward minus infinity for a negative gain). The +PRIOR_LABELS
pseudo-labels make a handful of lucky answers worth little: reputation is
earned by volume of correct work. A random spammer's excess is ~0, and each
equivocation costs EQUIVOCATION_PENALTY labels' worth of excess.

Why trust (docs/ledger.md, "Reputation that cannot be farmed"): without it, 100
fresh keys labelling their own task with their own gold agree perfectly and
would each earn as much as an expert. With it, their trust is the mean weight of
fresh keys (fresh_weight), so each earns ~fresh_weight/ONE of an expert's gain,
less than the fresh weight it already has: the farm stays at fresh weight. An
honest newcomer next to reputable annotators has trust near ONE and earns as
before. Averages, not sums: trust is shared among those it vouches for, as
EigenTrust normalises a peer's outgoing trust, so it cannot be multiplied by
adding keys. Weights never fall below fresh_weight, so a fresh key
(whitewashing) is never better than a penalised one.

The **lag**: the snapshot used for a task T contains exactly the certified tasks
whose deadline is at most ``T.created_at - params.reputation_lag_ms``. Every
node that holds the same certificates computes the same snapshot, and the lag
is long against certification time so honest nodes do hold them; a node that
does not yet hold one computes another value, cannot vouch for the certified
one, and fetches the certificate through sync (finality guarantees agreement).
Domains keep an oncologist's reputation from vouching for sentiment labels.
All arithmetic is on Python integers.
"""
from __future__ import annotations

from dataclasses import dataclass

from .params import Params

ONE = 1 << 16
PRIOR_LABELS = 20
EQUIVOCATION_PENALTY = 10


@dataclass(frozen=True)
class AnnotatorOutcome:
    account: bytes
    labels: int
    score: int
    equivocations: int
    trust: int = 0       # fixed point, from the certified result (protocol/tally.py compute_trust)


@dataclass(frozen=True)
class TaskOutcome:
    """What one certified task tells about its annotators."""

    task_id: bytes
    deadline: int
    domain: str
    n_classes: int
    annotators: tuple[AnnotatorOutcome, ...]


def is_in_window(outcome: TaskOutcome, created_at: int, params: Params) -> bool:
    """Does a certified task count for the snapshot of a task created at ``created_at``?"""
    return outcome.deadline <= created_at - params.reputation_lag_ms


def compute_earned(outcomes: list[TaskOutcome]) -> dict[tuple[bytes, str], int]:
    """Earned fixed-point reputation per (account, domain) from certified outcomes
    (order-independent: the sums are over a set)."""
    excess: dict[tuple[bytes, str], int] = {}
    labels: dict[tuple[bytes, str], int] = {}
    equiv: dict[tuple[bytes, str], int] = {}
    seen: set[bytes] = set()
    for t in sorted(outcomes, key=lambda o: o.task_id):
        if t.task_id in seen:
            continue
        seen.add(t.task_id)
        for a in t.annotators:
            key = (a.account, t.domain)
            gain = (a.score - a.labels * ONE // max(t.n_classes, 1)) * a.trust // ONE
            excess[key] = excess.get(key, 0) + gain
            labels[key] = labels.get(key, 0) + a.labels
            equiv[key] = equiv.get(key, 0) + a.equivocations
    out = {}
    for key in sorted(excess):
        value = excess[key] - EQUIVOCATION_PENALTY * ONE * equiv[key]
        out[key] = max(0, value) // (labels[key] + PRIOR_LABELS)
    return out


def compute_weight(account: bytes, domain: str, earned: dict[tuple[bytes, str], int],
                   genesis_reputation, params: Params) -> int:
    """Prior weight of ``account`` for a task of ``domain`` (fixed point)."""
    w = earned.get((account, domain), 0)
    for a, d, g in genesis_reputation:
        if a == account and d in ("", domain):  # an entry for "" counts once, also when domain == ""
            w += g
    return min(params.max_weight, max(params.fresh_weight, w))


def compute_snapshot(outcomes: list[TaskOutcome], created_at: int, params: Params) -> dict[tuple[bytes, str], int]:
    """Earned reputation as seen by a task created at ``created_at`` (the lagged window)."""
    return compute_earned([o for o in outcomes if is_in_window(o, created_at, params)])

"""Label aggregation: reputation-weighted consensus labels, bit-identical everywhere.

How it works
------------
Input is a bag of votes ``(item, annotator, label)`` in any order, a fixed-point prior
weight per annotator (reputation; ``WEIGHT_ONE`` = one full vote, 0 = no weight at all)
and optionally revealed gold answers.  Two estimators are offered:

* :func:`compute_weighted_plurality` -- per item, the label with the largest sum of prior
  weights (ties: lowest class index).  Cheap; used as a first pass and as the EM start.
* :func:`compute_consensus` -- a Dawid-Skene estimator (per-annotator confusion matrix with
  Dirichlet priors, variational-Bayes EM), initialised from the weighted plurality, with
  reputation as a competence prior and as a cap on each annotator's say, gold clamped
  (and, with gold, the model variant chosen by the gold's held-out likelihood);
  iterated until an integer convergence test passes (at most CONSENSUS_ITERATIONS
  updates), entirely in integer fixed-point arithmetic (log2, exp2 and
  digamma are integer algorithms: ``_fixed_log2``, ``_fixed_exp2_neg``,
  ``_fixed_digamma2``).

Everything that decides a label is integer arithmetic: numpy int64, plus a few sums of
integers done by float64 ``np.bincount`` where every term and partial sum is an integer
below 2**53 (so each addition is exact).  Exact addition is associative, so the result
does not depend on the order of the input rows, on the CPU or on the numpy build.
``PROTOCOL-APPENDIX-consensus.md`` specifies the algorithm (normatively) in enough detail
to re-implement it; ``docs/consensus.md`` explains and measures it.

Rule for repeated (worker, item) rows (order-independent by construction): identical
repeats count once; an annotator who gave two *different* labels to the same item is an
equivocator on that item and none of its votes on that item count.

This module imports the standard library, numpy, and msgpack (for ``encode_result``).
"""

from __future__ import annotations

import dataclasses
import math

import msgpack
import numpy as np

from .errors import LabelmeshError

# --------------------------------------------------------------------------- constants

#: Fixed-point one for every reported share/probability (confidence, agreement,
#: annotator accuracy, alpha): a value v means v / ONE.
ONE_SHIFT = 16
ONE = 1 << ONE_SHIFT
#: Fixed-point one for prior weights: WEIGHT_ONE is the weight of one fully trusted vote.
WEIGHT_SHIFT = 16
WEIGHT_ONE = 1 << WEIGHT_SHIFT
#: Largest accepted prior weight (inclusive).  Keeps every weighted sum far below 2**63.
MAX_PRIOR_WEIGHT = 1 << 32

#: Hard size limits (inclusive).  The network's protocol params may be tighter; these are
#: the limits under which this module guarantees no int64 overflow and bounded memory.
MAX_CLASSES = 256
MAX_ITEMS = 1 << 24
MAX_ANNOTATORS = 1 << 20
MAX_VOTES = 1 << 24
#: Largest number of cells of any dense work array: votes * classes, items * classes and
#: annotators * classes * classes must each stay at or below this.
MAX_CELLS = 1 << 26

#: Version tag of :func:`encode_result`'s byte layout.
RESULT_ENCODING_VERSION = 1


class AggregateError(LabelmeshError, ValueError):
    """Input to the aggregation functions is malformed or out of range (a ValueError too,
    for callers that predate the common root)."""


# --------------------------------------------------------------------------- data types


@dataclasses.dataclass(frozen=True)
class AggregateInput:
    """Votes to aggregate.

    ``item``, ``annotator`` and ``label`` are parallel integer arrays, one row per vote, in
    any order.  ``prior_weight[a]`` is annotator ``a``'s prior weight in units of
    ``1/WEIGHT_ONE`` (0 = the annotator's votes do not influence any label).  ``gold`` maps
    an item index to its revealed true label.
    """

    n_items: int
    n_classes: int
    n_annotators: int
    item: np.ndarray
    annotator: np.ndarray
    label: np.ndarray
    prior_weight: np.ndarray
    gold: dict[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class AggregateResult:
    """Per-item consensus and per-annotator estimates (all fixed point, see ``ONE``).

    - ``label``: int32 per item, -1 when no vote with positive weight (and no gold).
    - ``confidence``: int64 per item in [0, ONE], the (posterior) probability of ``label``.
    - ``agreement``: int64 per item in [0, ONE], share of the item's counted votes of
      positive-weight annotators that equal ``label`` (each annotator counts once).
    - ``annotator_accuracy``: int64 per annotator in [0, ONE], estimated share of its
      counted votes that are correct (0 for an annotator with no counted vote).
    - ``alpha``: Krippendorff's alpha (nominal) over the counted votes of positive-weight
      annotators, as a signed fixed-point integer (ONE = perfect agreement).
    """

    label: np.ndarray
    confidence: np.ndarray
    agreement: np.ndarray
    annotator_accuracy: np.ndarray
    alpha: int


# --------------------------------------------------------------------------- validation


def _as_int_array(name: str, value: object, length: int | None = None) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise AggregateError(f"{name} must be a numpy integer array, got {type(value).__name__}")
    if value.ndim != 1:
        raise AggregateError(f"{name} must be one-dimensional, got shape {value.shape}")
    if value.dtype.kind not in "iu":
        raise AggregateError(f"{name} must have an integer dtype, got {value.dtype}")
    if length is not None and value.shape[0] != length:
        raise AggregateError(f"{name} has length {value.shape[0]}, expected {length}")
    if value.dtype.kind == "u" and value.dtype.itemsize >= 8 and value.size and value.max() > np.iinfo(np.int64).max:
        raise AggregateError(f"{name} has values too large for int64")
    return value.astype(np.int64, copy=False)


def _check_count(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise AggregateError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if not low <= value <= high:
        raise AggregateError(f"{name} = {value} is outside [{low}, {high}]")
    return value


def _check_range(name: str, values: np.ndarray, high_exclusive: int, what: str) -> None:
    if values.size == 0:
        return
    lo = int(values.min())
    hi = int(values.max())
    if lo < 0 or hi >= high_exclusive:
        bad = lo if lo < 0 else hi
        raise AggregateError(f"{name} contains {bad}, outside [0, {high_exclusive - 1}] ({what})")


@dataclasses.dataclass(frozen=True)
class _Votes:
    """Validated, canonical votes: sorted by (item, annotator), one per pair."""

    n_items: int
    n_classes: int
    n_annotators: int
    item: np.ndarray  # int64, sorted ascending (ties by annotator ascending)
    annotator: np.ndarray  # int64
    label: np.ndarray  # int64
    prior_weight: np.ndarray  # int64 per annotator
    gold_item: np.ndarray  # int64, ascending
    gold_label: np.ndarray  # int64


def sorted_vote_keys(
    item: np.ndarray, annotator: np.ndarray, label: np.ndarray, n_annotators: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct vote keys (item, annotator, label) ascending, and which are equivocations.

    key = (item * n_annotators + annotator) * n_classes + label < 2**24 * 2**20 * 2**8.
    Identical repeats collapse to one key; a (item, annotator) pair present with two or
    more different labels is flagged on all of its keys.
    """
    # kind='stable' (timsort) is adaptive: vote tables usually arrive as sorted runs (per
    # item or per annotator batch).  Sorting integers gives the same array either way.
    key = np.sort((item * n_annotators + annotator) * n_classes + label, kind="stable")
    if key.size > 1:
        key = key[np.r_[True, key[1:] != key[:-1]]]
    bad = np.zeros(key.size, dtype=bool)
    if key.size > 1:
        pair = key // n_classes
        dup = pair[1:] == pair[:-1]
        bad[1:] |= dup
        bad[:-1] |= dup
    return key, bad


def compute_equivocations(inp: AggregateInput) -> tuple[np.ndarray, np.ndarray]:
    """(items, annotators) of every pair whose votes name two or more different labels.

    Sorted by (item, annotator); these votes count for nothing in both estimators.
    Raises AggregateError on malformed input.
    """
    _canonical_votes(inp)  # validation
    n_annotators, n_classes = int(inp.n_annotators), int(inp.n_classes)
    key, bad = sorted_vote_keys(
        inp.item.astype(np.int64), inp.annotator.astype(np.int64), inp.label.astype(np.int64),
        n_annotators, n_classes,
    )
    pair = np.unique(key[bad] // n_classes)
    item = pair // n_annotators if n_annotators else pair
    return item, pair - item * n_annotators


def validate_aggregate_input(inp: AggregateInput) -> None:
    """Raise :class:`AggregateError` if ``inp`` is malformed; return None otherwise."""
    _canonical_votes(inp)


def _canonical_votes(inp: AggregateInput) -> _Votes:
    if not isinstance(inp, AggregateInput):
        raise AggregateError(f"expected an AggregateInput, got {type(inp).__name__}")
    n_items = _check_count("n_items", inp.n_items, 0, MAX_ITEMS)
    n_classes = _check_count("n_classes", inp.n_classes, 1, MAX_CLASSES)
    n_annotators = _check_count("n_annotators", inp.n_annotators, 0, MAX_ANNOTATORS)
    item = _as_int_array("item", inp.item)
    n_votes = item.shape[0]
    if n_votes > MAX_VOTES:
        raise AggregateError(f"{n_votes} votes exceed the limit of {MAX_VOTES}")
    annotator = _as_int_array("annotator", inp.annotator, n_votes)
    label = _as_int_array("label", inp.label, n_votes)
    prior_weight = _as_int_array("prior_weight", inp.prior_weight, n_annotators)
    for name, cells in (
        ("votes x classes", n_votes * n_classes),
        ("items x classes", n_items * n_classes),
        ("annotators x classes x classes", n_annotators * n_classes * n_classes),
    ):
        if cells > MAX_CELLS:
            raise AggregateError(f"{name} = {cells} exceeds the limit of {MAX_CELLS} cells")
    _check_range("item", item, n_items, "item index must be below n_items")
    _check_range("annotator", annotator, n_annotators, "annotator index must be below n_annotators")
    _check_range("label", label, n_classes, "label must be below n_classes")
    if prior_weight.size and (int(prior_weight.min()) < 0 or int(prior_weight.max()) > MAX_PRIOR_WEIGHT):
        raise AggregateError(f"prior_weight values must lie in [0, {MAX_PRIOR_WEIGHT}]")

    gold = inp.gold or {}
    if not isinstance(gold, dict):
        raise AggregateError(f"gold must be a dict item -> label or None, got {type(gold).__name__}")
    gold_pairs = []
    for key, value in gold.items():
        g_item = _check_count("gold item", key, 0, n_items - 1) if n_items else None
        if g_item is None:
            raise AggregateError("gold given for a task with no items")
        g_label = _check_count(f"gold label of item {g_item}", value, 0, n_classes - 1)
        gold_pairs.append((g_item, g_label))
    gold_pairs.sort()
    gold_item = np.array([p[0] for p in gold_pairs], dtype=np.int64)
    gold_label = np.array([p[1] for p in gold_pairs], dtype=np.int64)

    key, bad = sorted_vote_keys(item, annotator, label, n_annotators, n_classes)
    key = key[~bad]
    pair = key // n_classes
    label = key - pair * n_classes
    item = pair // n_annotators if n_annotators else pair
    annotator = pair - item * n_annotators
    return _Votes(
        n_items=n_items,
        n_classes=n_classes,
        n_annotators=n_annotators,
        item=item,
        annotator=annotator,
        label=label,
        prior_weight=prior_weight,
        gold_item=gold_item,
        gold_label=gold_label,
    )


# --------------------------------------------------------------------------- shared pieces


def _vote_counts(votes: _Votes, mask: np.ndarray) -> np.ndarray:
    """Per (item, class) number of counted votes selected by ``mask`` (int64, flat)."""
    k = votes.n_classes
    return np.bincount(
        votes.item[mask] * k + votes.label[mask], minlength=votes.n_items * k
    ).astype(np.int64)


def _share(numer: np.ndarray, denom: np.ndarray) -> np.ndarray:
    """floor(numer * ONE / denom), 0 where denom == 0 (numer <= denom, both < 2**46)."""
    out = np.zeros(numer.shape, dtype=np.int64)
    pos = denom > 0
    out[pos] = (numer[pos] * ONE) // denom[pos]
    return out


def _compute_alpha_from_counts(counts: np.ndarray) -> int:
    """Krippendorff's alpha (nominal) as fixed point, from per (item, class) counts.

    alpha = 1 - (n - 1) * sum_u [(m_u^2 - sum_c n_uc^2) / (m_u - 1)] / (n^2 - sum_c n_c^2)
    over units u with m_u >= 2 values (n = pairable values, n_c = pairable values of c).
    The per-unit quotient is rounded down to 1/2**32 (fixed, order-free); the rest is exact
    Python-integer arithmetic with a floor at the end.  Returns ONE when the pairable values
    show no variation at all, 0 when there are fewer than two pairable values.
    """
    m = counts.sum(axis=1)
    pairable = m >= 2
    c = counts[pairable]
    m = m[pairable]
    n = int(m.sum())
    if n < 2:
        return 0
    n_c = c.sum(axis=0)
    d_e = n * n - int((n_c * n_c).sum())
    if d_e == 0:
        return ONE
    numer = m * m - (c * c).sum(axis=1)  # <= m^2 <= 2**40
    den = m - 1
    q = numer // den
    r = numer - q * den  # < den <= 2**20
    scale = 1 << 32
    d_o_scaled = int(q.sum()) * scale + int(((r * scale) // den).sum())
    # alpha * ONE = ONE - (n - 1) * d_o * ONE / d_e, floored
    return ONE - (-((-(n - 1) * d_o_scaled * ONE) // (scale * d_e)))


def _finish(
    votes: _Votes,
    label: np.ndarray,
    confidence: np.ndarray,
    accuracy: np.ndarray,
) -> AggregateResult:
    """Agreement, alpha and final dtypes shared by both estimators."""
    weighted = votes.prior_weight[votes.annotator] > 0
    counts = _vote_counts(votes, weighted).reshape(votes.n_items, votes.n_classes)
    total = counts.sum(axis=1)
    idx = np.arange(votes.n_items)
    agree = np.where(label >= 0, counts[idx, np.maximum(label, 0)], 0)
    return AggregateResult(
        label=label.astype(np.int32),
        confidence=confidence.astype(np.int64),
        agreement=_share(agree, total),
        annotator_accuracy=accuracy.astype(np.int64),
        alpha=_compute_alpha_from_counts(counts),
    )


# --------------------------------------------------------------------------- plurality


def compute_weighted_plurality(inp: AggregateInput) -> AggregateResult:
    """Reputation-weighted plurality vote.

    Per item the score of a class is the sum of the prior weights of the annotators who
    voted for it (after the repeated-row rule).  The label is the class with the highest
    score; ties go to the lowest class index.  An item whose votes all have weight 0 (or
    that has no votes) gets label -1 and confidence 0.  Confidence is the winning score's
    share of the item's total weight, floored to 1/ONE.  Revealed gold items get their gold
    label with confidence ONE.  Annotator accuracy is the share of the annotator's counted
    votes that equal the resulting label (over items with a label).

    Raises AggregateError on malformed input.
    """
    votes = _canonical_votes(inp)
    k = votes.n_classes
    w = votes.prior_weight[votes.annotator]
    score = np.zeros(votes.n_items * k, dtype=np.int64)
    np.add.at(score, votes.item * k + votes.label, w)  # <= 2**20 * 2**32 per cell
    score = score.reshape(votes.n_items, k)
    total = score.sum(axis=1)
    label = np.argmax(score, axis=1).astype(np.int64)  # first maximum = lowest index
    best = score[np.arange(votes.n_items), label]
    label[total == 0] = -1
    # totals reach 2**52; drop low bits so that best * ONE stays below 2**63
    shift = np.maximum(_bit_length(total) - 46, 0)
    confidence = _share(best >> shift, total >> shift)
    if votes.gold_item.size:
        label[votes.gold_item] = votes.gold_label
        confidence[votes.gold_item] = ONE
    accuracy = _compute_accuracy_vs_labels(votes, label)
    return _finish(votes, label, confidence, accuracy)


def _compute_accuracy_vs_labels(votes: _Votes, label: np.ndarray) -> np.ndarray:
    """Per annotator share (fixed point) of its votes equal to ``label`` (labelled items)."""
    vote_label = label[votes.item]
    has = vote_label >= 0
    n = np.bincount(votes.annotator[has], minlength=votes.n_annotators).astype(np.int64)
    right = np.bincount(
        votes.annotator[has & (vote_label == votes.label)], minlength=votes.n_annotators
    ).astype(np.int64)
    return _share(right, n)


# --------------------------------------------------------------------------- fixed point

#: Posterior probabilities and pseudo-counts are integers in units of 1/PROB_ONE.
PROB_SHIFT = 30
PROB_ONE = 1 << PROB_SHIFT
#: Logarithms (always base 2) are integers in units of 1/LOG_ONE bit.
LOG_SHIFT = 20
LOG_ONE = 1 << LOG_SHIFT
#: round(log2(e) * 2**32): converts nats to bits.  tests/test_aggregate.py re-derives it.
LOG2E_Q32 = 6196328019
#: Below this argument (in units of PROB_ONE) digamma is shifted up by its recurrence.
_DIGAMMA_SHIFT_TO = 4

#: Dawid-Skene prior, in units of PROB_ONE pseudo-votes.  Every cell of every annotator's
#: confusion matrix gets CONFUSION_PRIOR; the diagonal gets in addition
#: prior_weight / WEIGHT_ONE pseudo-votes (a reputable annotator is presumed competent, a
#: fresh one is not).  Class proportions get CLASS_PRIOR per class.
CONFUSION_PRIOR = PROB_ONE // 10
CLASS_PRIOR = PROB_ONE
#: Largest number of EM updates of compute_consensus (each = M step + E step); it stops
#: earlier once the posteriors have converged (CONVERGENCE_SHIFT).
CONSENSUS_ITERATIONS = 20
MAX_CONSENSUS_ITERATIONS = 1000
#: Early exit: EM stops after an update that moves the posteriors by at most
#: 2**-CONVERGENCE_SHIFT per item with evidence on average (sum over items and classes of
#: |q_new - q_old| <= n_evidence * PROB_ONE >> CONVERGENCE_SHIFT).  Integer state only, so
#: every node stops at the same step.
CONVERGENCE_SHIFT = 14
#: float64 sums of integer shares (<= PROB_ONE) are exact for up to 2**23 terms.
_FLOAT_EXACT_VOTES = 1 << (53 - PROB_SHIFT)


def _isqrt_chain(bits: int, count: int) -> list[int]:
    """[floor(2**bits * 2**(-2**-b)) for b = 1..count], by integer square roots only."""
    value = math.isqrt(1 << (2 * bits - 1))  # 2**bits * sqrt(1/2)
    out = [value]
    for _ in range(count - 1):
        value = math.isqrt(value << bits)  # 2**bits * sqrt(value / 2**bits)
        out.append(value)
    return out


def _exp2_neg_table(first_bit: int, n_bits: int) -> np.ndarray:
    """Table T[a] = round(PROB_ONE * 2**(-a / 2**(first_bit + n_bits))) for a < 2**n_bits.

    Built from the square-root chain 2**(-2**-b) with exact integer arithmetic (Python
    ints, 62 fractional bits), so it is the same on every machine.
    """
    work = 62
    chain = _isqrt_chain(work, first_bit + n_bits)  # chain[b-1] = 2**(-2**-b)
    out = np.empty(1 << n_bits, dtype=np.int64)
    for a in range(1 << n_bits):
        value = 1 << work
        for bit in range(n_bits):  # bit 0 of a is worth 2**-(first_bit + n_bits)
            if a >> bit & 1:
                value = (value * chain[first_bit + n_bits - bit - 1]) >> work
        out[a] = (value + (1 << (work - PROB_SHIFT - 1))) >> (work - PROB_SHIFT)
    return out


# 2**-f for the fraction f = hi/2**10 + lo/2**20 of a bit, f in units of 1/LOG_ONE.
_EXP2_HI = _exp2_neg_table(0, LOG_SHIFT // 2)
_EXP2_LO = _exp2_neg_table(LOG_SHIFT // 2, LOG_SHIFT - LOG_SHIFT // 2)


_POWERS_OF_TWO = np.array([1 << i for i in range(63)], dtype=np.int64)


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Vectorised int.bit_length for 0 <= x < 2**63 (int64): a search among powers of 2."""
    return np.searchsorted(_POWERS_OF_TWO, x, side="right").astype(np.int64)


def _log2_mantissa_table(index_bits: int, frac_bits: int) -> np.ndarray:
    """T[i] = round(log2(1 + i / 2**index_bits) * 2**frac_bits), i = 0 .. 2**index_bits.

    Exact integer algorithm (Python ints): the mantissa is squared with 64 fractional
    bits and each squaring yields one bit of the logarithm; two guard bits are rounded.
    """
    work = 64
    one = 1 << work
    out = np.empty((1 << index_bits) + 1, dtype=np.int64)
    for i in range((1 << index_bits) + 1):
        m = one + (i << (work - index_bits))  # in [1, 2] with `work` fractional bits
        if m == 2 * one:
            out[i] = 1 << frac_bits
            continue
        bits = 0
        for _ in range(frac_bits + 2):
            m = (m * m) >> work
            bits <<= 1
            if m >= 2 * one:
                m >>= 1
                bits |= 1
        out[i] = (bits + 2) >> 2
    return out


_LOG2_INDEX_BITS = 12
_LOG2_TABLE_EXTRA = 8  # table precision beyond LOG_SHIFT, dropped after interpolation
_LOG2_TABLE = _log2_mantissa_table(_LOG2_INDEX_BITS, LOG_SHIFT + _LOG2_TABLE_EXTRA)


def _fixed_log2(x: np.ndarray) -> np.ndarray:
    """log2(x) * LOG_ONE, floored, for integers 1 <= x < 2**62 (int64 in, int64 out).

    Integer part from the bit length; the 30-bit mantissa's logarithm by linear
    interpolation in _LOG2_TABLE (4097 entries; interpolation error < 2**-26).
    """
    x = np.asarray(x, dtype=np.int64)
    e = _bit_length(x) - 1
    m = np.where(e <= 30, x << np.maximum(30 - e, 0), x >> np.maximum(e - 30, 0)) - (1 << 30)
    low_bits = 30 - _LOG2_INDEX_BITS
    idx = m >> low_bits
    rem = m & ((1 << low_bits) - 1)
    base = _LOG2_TABLE[idx]
    step = _LOG2_TABLE[idx + 1] - base  # < 2**18
    frac = (base + ((step * rem) >> low_bits)) >> _LOG2_TABLE_EXTRA
    return (e << LOG_SHIFT) + frac


def _fixed_exp2_neg(d: np.ndarray) -> np.ndarray:
    """round(PROB_ONE * 2**(-d / LOG_ONE)) (approximately) for integers d >= 0."""
    d = np.asarray(d, dtype=np.int64)
    whole = d >> LOG_SHIFT
    np.minimum(whole, 62, out=whole)
    frac = d & (LOG_ONE - 1)
    out = np.take(_EXP2_HI, frac >> (LOG_SHIFT - LOG_SHIFT // 2))  # np.take: faster than [...]
    frac &= (1 << (LOG_SHIFT - LOG_SHIFT // 2)) - 1
    out *= np.take(_EXP2_LO, frac)
    out >>= PROB_SHIFT
    out >>= whole
    return out


def _fixed_digamma2(x: np.ndarray) -> np.ndarray:
    """digamma(x / PROB_ONE) / ln 2 in units of 1/LOG_ONE, for 2**26 <= x < 2**61 (int64).

    digamma(x) = digamma(x + n) - sum_{i<n} 1/(x + i) brings the argument y to >= 4, where
    digamma(y) = ln y - 1/(2y) - 1/(12y^2) + 1/(120y^4) - 1/(252y^6) (error < 1e-7).
    All terms are integer quotients; the correction terms are summed in nats (units
    1/LOG_ONE) and converted to bits with LOG2E_Q32.
    """
    shape = np.shape(x)
    x = np.array(x, dtype=np.int64, order="C").reshape(-1)  # a flat copy, shifted below
    corr = np.zeros(x.shape, dtype=np.int64)  # nats * LOG_ONE, subtracted at the end
    num = PROB_ONE << LOG_SHIFT  # 1.0 in units of 1/(PROB_ONE * LOG_ONE)
    limit = _DIGAMMA_SHIFT_TO * PROB_ONE
    for _ in range(_DIGAMMA_SHIFT_TO):
        low = x < limit
        if not low.any():
            break
        corr += np.where(low, num // x, 0)
        x += np.where(low, PROB_ONE, 0)
    r = num // x  # 1/y in units of 1/LOG_ONE; y >= 4, so r <= 2**18
    r2 = (r * r) >> LOG_SHIFT
    r4 = (r2 * r2) >> LOG_SHIFT
    r6 = (r4 * r2) >> LOG_SHIFT
    corr += (r >> 1) + r2 // 12 - r4 // 120 + r6 // 252
    log2_y = _fixed_log2(x) - (PROB_SHIFT << LOG_SHIFT)
    return (log2_y - ((corr * LOG2E_Q32) >> 32)).reshape(shape)


# --------------------------------------------------------------------------- consensus


def _argmax_classes(score: np.ndarray) -> np.ndarray:
    """Per column of a class-major (classes, items) array, the row index of the maximum;
    ties go to the lowest class index."""
    best = score[0].copy()
    arg = np.zeros(score.shape[1], dtype=np.int64)
    for c in range(1, score.shape[0]):
        better = score[c] > best
        arg[better] = c
        np.maximum(best, score[c], out=best)
    return arg


def _supported_argmax(votes: _Votes, plan: _Plan, log_score: np.ndarray) -> np.ndarray:
    """The support rule: per item, the class with the highest log-score among the classes
    that at least one effective vote (an annotator of positive weight) names on that item;
    ties go to the lowest class index. An item's label never contradicts every vote it has:
    with one vote of a fresh account, the class prior alone cannot turn "dog" into "cat".
    Items without an effective vote keep the plain argmax (they get -1, or their gold label)."""
    n_items, k = votes.n_items, votes.n_classes
    label = _argmax_classes(log_score)
    eff = plan.temper[votes.annotator] > 0
    support = np.zeros(k * n_items, dtype=bool)
    support[votes.label[eff] * n_items + votes.item[eff]] = True
    support = support.reshape(k, n_items)
    cut = plan.voted & ~support[label, np.arange(n_items)]
    if cut.any():
        floor = np.iinfo(np.int64).min
        label[cut] = _argmax_classes(np.where(support[:, cut], log_score[:, cut], floor))
    return label


def _normalise(log_score: np.ndarray) -> np.ndarray:
    """Posterior shares (units 1/PROB_ONE) of class-major integer log-scores:
    floor((exp2neg(max - S) << PROB_SHIFT) / sum over classes)."""
    u = _fixed_exp2_neg(log_score.max(axis=0) - log_score)  # the top class gets PROB_ONE
    return (u << PROB_SHIFT) // u.sum(axis=0)


@dataclasses.dataclass(frozen=True)
class _Model:
    """One Dawid-Skene variant (see GOLD_MODELS): ``use_map`` scores log-parameters by
    log of the counts instead of digamma; ``pooled_votes`` adds that many pseudo-votes of
    the population confusion matrix to every annotator's rows."""

    use_map: bool
    pooled_votes: int


#: The models a task with gold chooses from (compute_consensus); the first is the default
#: and the only one used without gold: variational Bayes (digamma).  The second is MAP
#: (log) with one pooled pseudo-vote, the third VB with one pooled pseudo-vote.
GOLD_MODELS = (_Model(False, 0), _Model(True, 1), _Model(False, 1))
#: Gold items are split into GOLD_FOLDS folds (by rank in item order, rank mod GOLD_FOLDS)
#: for the held-out likelihood that chooses the model.
GOLD_FOLDS = 3
#: A model replaces the default only if its calibrated held-out log2-likelihood of the
#: gold labels is more than this many bits (units 1/LOG_ONE) above the default's.
GOLD_SELECT_MARGIN = 5 * LOG_ONE
#: Calibration temperatures t / 16 tried per model (t = 1 .. 32, i.e. 1/16 .. 2).
_TEMPERATURE_STEPS = 32


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What EM needs from the votes alone, whatever the gold and the model: computed once
    per compute_consensus and shared by every fit (the gold's model choice makes ~11)."""

    temper: np.ndarray  # per annotator: min(weight, WEIGHT_ONE)
    voted: np.ndarray  # per item: has a vote of positive weight
    plurality: np.ndarray  # class-major weighted plurality shares (units 1/PROB_ONE), unclamped
    group: np.ndarray  # per vote: its (annotator, label) cell, < 2**28
    per_item: np.ndarray  # votes per item (votes are sorted by item)
    split_q: bool  # some cell has more than _FLOAT_EXACT_VOTES votes: sum q in two halves
    e_starts: np.ndarray  # first vote of each voted item
    e_keys: np.ndarray  # the voted items
    diag_prior: np.ndarray  # per annotator: weight / WEIGHT_ONE pseudo-votes (units 1/PROB_ONE)


def _plan(votes: _Votes) -> _Plan:
    n_items, k = votes.n_items, votes.n_classes
    item, ann, lab = votes.item, votes.annotator, votes.label  # sorted by (item, annotator)
    weight = votes.prior_weight
    temper = np.minimum(weight, WEIGHT_ONE)
    voted = np.zeros(n_items, dtype=bool)
    voted[item[temper[ann] > 0]] = True
    # Scores reach 2**52, so each item's scores are first shifted right until they fit in
    # 33 bits.  (float64 sums are exact here: at most 2**20 weights <= 2**32 per cell, < 2**53)
    score = np.bincount(lab * n_items + item, weights=weight[ann].astype(np.float64), minlength=k * n_items)
    score = score.astype(np.int64).reshape(k, n_items)
    score >>= np.maximum(_bit_length(score.sum(axis=0)) - 33, 0)
    group = ann * k + lab
    # M step sums in float64 are exact while every partial sum is an integer <= 2**53:
    # q <= 2**30, so cells of at most 2**23 votes can be summed directly; otherwise q is
    # summed in two 15-bit halves (each partial sum <= 2**24 * 2**15).
    split_q = item.size > 0 and int(np.bincount(group).max()) > _FLOAT_EXACT_VOTES
    e_starts = np.flatnonzero(np.r_[True, item[1:] != item[:-1]]) if item.size else item
    return _Plan(temper=temper, voted=voted, plurality=(score << PROB_SHIFT) // np.maximum(score.sum(axis=0), 1),
                 group=group, per_item=np.bincount(item, minlength=n_items), split_q=split_q, e_starts=e_starts,
                 e_keys=item[e_starts], diag_prior=weight << (PROB_SHIFT - WEIGHT_SHIFT))


def _fit(votes: _Votes, plan: _Plan, gold_item: np.ndarray, gold_label: np.ndarray, iterations: int,
         model: _Model, *, both_starts: bool) -> tuple[np.ndarray, np.ndarray]:
    """EM for one model with the given gold clamped.  Returns the class-major log-scores
    and the per-item evidence mask (a vote of positive weight, or gold).  With
    ``both_starts`` and gold, EM also runs from the gold-taught matrices and the McNemar
    rule picks one run."""
    n_items, k, n_ann = votes.n_items, votes.n_classes, votes.n_annotators
    n_votes = votes.item.size
    group, per_item, e_starts, e_keys = plan.group, plan.per_item, plan.e_starts, plan.e_keys
    temper = plan.temper

    evidence = plan.voted.copy()
    evidence[gold_item] = True
    no_evidence = np.flatnonzero(~evidence)
    # convergence threshold on sum |q_new - q_old| (see CONVERGENCE_SHIFT); <= 2**40
    tolerance = (int(n_items - no_evidence.size) * PROB_ONE) >> CONVERGENCE_SHIFT

    def clamp(q: np.ndarray) -> np.ndarray:
        return _clamp(q, no_evidence, gold_item, gold_label)

    # Work arrays are class-major: q[c, i], log_score[c, i], table[c, a*k + l].
    # start: weighted plurality shares, gold clamped
    q_start = clamp(plan.plurality.copy())
    n_cells = n_ann * k
    every_item_voted = e_keys.size == n_items
    diag = np.arange(k)
    log_of = _fixed_log2 if model.use_map else _fixed_digamma2

    def cell_sums(values: np.ndarray) -> np.ndarray:
        """sum of values[item] over the votes of each (annotator, label) cell (exact)."""
        return np.bincount(group, weights=np.repeat(values.astype(np.float64), per_item),
                           minlength=n_cells).astype(np.int64)

    def run_em(q: np.ndarray) -> np.ndarray:
        """M+E steps from the shares ``q`` until convergence or ``iterations`` updates;
        returns the last log-scores (class-major)."""
        for step in range(iterations + 1):
            # ---- M step: expected confusion counts and class counts (exact integer sums)
            cells = np.zeros((k, n_cells), dtype=np.int64)  # [true c, a*k + l]
            if n_votes:
                for c in range(k):
                    if plan.split_q:
                        cells[c] = (cell_sums(q[c] >> 15) << 15) + cell_sums(q[c] & 0x7FFF)
                    else:
                        cells[c] = cell_sums(q[c])
            counts = cells.reshape(k, n_ann, k)  # [true, a, l]
            conf = counts.transpose(1, 0, 2) + CONFUSION_PRIOR  # [a, true, l]
            conf[:, diag, diag] += plan.diag_prior[:, None]
            if model.pooled_votes:
                conf += _pooled_prior(counts, model.pooled_votes)[None, :, :]
            elog = log_of(conf) - log_of(conf.sum(axis=2, keepdims=True))
            class_count = q.sum(axis=1) + CLASS_PRIOR  # q is 0 on items without evidence
            elog_prior = _fixed_digamma2(class_count) - _fixed_digamma2(class_count.sum(keepdims=True))
            # tempered table [true c, a*k + l]
            table = ((elog * temper[:, None, None]) >> WEIGHT_SHIFT).transpose(1, 0, 2).reshape(k, n_cells)
            # ---- E step: integer log-scores
            log_score = np.empty((k, n_items), dtype=np.int64)
            log_score[:] = elog_prior[:, None]
            if n_votes:
                for c in range(k):
                    sums = np.add.reduceat(np.take(table[c], group), e_starts)
                    if every_item_voted:
                        log_score[c] += sums
                    else:
                        log_score[c, e_keys] += sums
            if step == iterations:
                break
            q_new = clamp(_normalise(log_score))
            # ---- early exit: the posteriors moved by less than the tolerance
            change = q_new - q
            np.abs(change, out=change)
            if int(change.sum()) <= tolerance:
                break
            q = q_new
        return log_score

    log_score = run_em(q_start)
    if both_starts and gold_item.size:
        # Also run EM from the matrices the gold items alone teach (shares 0 except on
        # gold), and keep that run only if its unclamped labels match the gold
        # significantly more often (McNemar: b right only in the gold-taught run, c right
        # only in the plurality run; switch if b > c and (b - c)^2 > 4 (b + c)).  A
        # consistent herd that is wrong on gold seeds the plurality start with its own
        # labels; the gold start reads it as systematically confused.
        alt = run_em(clamp(np.zeros_like(q_start)))
        base_ok = _argmax_classes(log_score[:, gold_item]) == gold_label
        alt_ok = _argmax_classes(alt[:, gold_item]) == gold_label
        b = int(np.count_nonzero(alt_ok & ~base_ok))
        c = int(np.count_nonzero(base_ok & ~alt_ok))
        if b > c and (b - c) ** 2 > 4 * (b + c):
            log_score = alt
    return log_score, evidence


def _clamp(q: np.ndarray, no_evidence: np.ndarray, gold_item: np.ndarray, gold_label: np.ndarray) -> np.ndarray:
    """Shares of items without evidence are 0, gold items are one-hot (in place)."""
    q[:, no_evidence] = 0
    if gold_item.size:
        q[:, gold_item] = 0
        q[gold_label, gold_item] = PROB_ONE
    return q


def _pooled_prior(counts: np.ndarray, votes: int) -> np.ndarray:
    """``votes`` pseudo-votes (units 1/PROB_ONE) of the population confusion matrix:
    row c of the expected counts summed over annotators, as shares in units of 1/1024
    (floored), times ``votes``.  ``counts`` is [true, annotator, label]."""
    pop = counts.sum(axis=1)  # [true, label], <= 2**24 votes * 2**30
    total = pop.sum(axis=1, keepdims=True)
    shift = np.maximum(_bit_length(total) - 52, 0)  # keeps (pop << 10) below 2**63
    share = ((pop >> shift) << 10) // np.maximum(total >> shift, 1)  # <= 1024
    return (share * votes) << (PROB_SHIFT - 10)


def _calibrated_log2_likelihood(q: np.ndarray, label: np.ndarray) -> int:
    """Held-out fit of posteriors ``q`` (class-major, units 1/PROB_ONE) to ``label``:
    the best over temperatures t/16 (t = 1 .. _TEMPERATURE_STEPS) of
    sum_i log2 softmax_2(t/16 * log2 max(q_i, 2**-30))[label_i], in units of 1/LOG_ONE.
    The temperature takes out each model's over- or under-confidence, so models are
    compared on how well they rank the gold labels, not on how sure they sound."""
    if not label.size:
        return 0
    log_q = _fixed_log2(np.maximum(q, 1)) - (PROB_SHIFT << LOG_SHIFT)  # in [-30, 0] bits
    cols = np.arange(label.size)
    best = None
    for t in range(1, _TEMPERATURE_STEPS + 1):
        z = (log_q * t) >> 4
        top = z.max(axis=0)
        total = _fixed_exp2_neg(top - z).sum(axis=0)  # units 1/PROB_ONE, >= PROB_ONE
        ll = int((z[label, cols] - top).sum()) - int((_fixed_log2(total) - (PROB_SHIFT << LOG_SHIFT)).sum())
        best = ll if best is None else max(best, ll)
    return best


def _select_model(votes: _Votes, plan: _Plan, iterations: int) -> int:
    """Index into GOLD_MODELS of the model the gold chooses (see GOLD_SELECT_MARGIN)."""
    gold_item, gold_label = votes.gold_item, votes.gold_label
    fold = np.arange(gold_item.size) % GOLD_FOLDS
    scores = []
    for model in GOLD_MODELS:
        held_q, held_label = [], []
        for f in range(GOLD_FOLDS):
            test = fold == f
            if not test.any():
                continue
            log_score, evidence = _fit(votes, plan, gold_item[~test], gold_label[~test], iterations, model,
                                       both_starts=False)
            q = _normalise(log_score[:, gold_item[test]])
            q[:, ~evidence[gold_item[test]]] = 0
            held_q.append(q)
            held_label.append(gold_label[test])
        scores.append(_calibrated_log2_likelihood(np.concatenate(held_q, axis=1), np.concatenate(held_label)))
    best = max(range(len(scores)), key=lambda m: (scores[m], -m))  # ties: the earlier model
    return best if scores[best] - scores[0] > GOLD_SELECT_MARGIN else 0


def compute_consensus(inp: AggregateInput, *, iterations: int = CONSENSUS_ITERATIONS) -> AggregateResult:
    """Reputation-weighted Dawid-Skene consensus, integer fixed point, bit-identical.

    Model: each item has a true class; annotator ``a`` reports class ``l`` for true class
    ``k`` with probability theta[a, k, l] (a full confusion matrix).  Priors:
    theta[a, k, :] ~ Dirichlet(CONFUSION_PRIOR + diag * prior_weight[a] / WEIGHT_ONE) and
    class proportions ~ Dirichlet(CLASS_PRIOR).  Estimation is variational Bayes EM
    (expected log-parameters via digamma), started from the weighted plurality shares, with
    at most ``iterations`` updates (``iterations + 1`` M+E steps): it stops as soon as an
    update would move the posteriors by at most 2**-CONVERGENCE_SHIFT per item on average
    (an integer test, so every node stops at the same step).  In the E step annotator ``a``'s log-likelihood is multiplied
    by min(prior_weight[a], WEIGHT_ONE) / WEIGHT_ONE, so an annotator with tiny prior weight
    has a tiny say, and weight 0 none.  Revealed gold items are clamped to their gold label
    in every step (and so teach the annotators' matrices); when there is gold, EM also runs
    from the matrices learnt on the gold items alone, and that run is kept only if it
    explains the gold significantly better (a McNemar test on the gold items).

    With gold, the gold also chooses the model among GOLD_MODELS: each is fitted GOLD_FOLDS
    times with one fold of the gold hidden, scored by the calibrated log2-likelihood of
    the hidden gold labels, and a model other than the default is used only if it scores
    more than GOLD_SELECT_MARGIN above it.

    Label: the class with the highest integer log-score (ties: lowest class index); -1 for
    an item with no vote of positive weight and no gold.  Confidence: its posterior
    probability.  See PROTOCOL-APPENDIX-consensus.md for the exact arithmetic.

    Raises AggregateError on malformed input or an iteration count outside
    [0, MAX_CONSENSUS_ITERATIONS].
    """
    votes = _canonical_votes(inp)
    iterations = _check_count("iterations", iterations, 0, MAX_CONSENSUS_ITERATIONS)
    n_items = votes.n_items
    item, ann, lab = votes.item, votes.annotator, votes.label
    gold_item, gold_label = votes.gold_item, votes.gold_label
    plan = _plan(votes)
    model = GOLD_MODELS[_select_model(votes, plan, iterations) if gold_item.size else 0]
    log_score, evidence = _fit(votes, plan, gold_item, gold_label, iterations, model, both_starts=True)
    no_evidence = np.flatnonzero(~evidence)

    label = _supported_argmax(votes, plan, log_score)
    q = _clamp(_normalise(log_score), no_evidence, gold_item, gold_label)
    label[gold_item] = gold_label
    label[no_evidence] = -1
    confidence = np.where(label >= 0, q[np.maximum(label, 0), np.arange(n_items)], 0) >> (PROB_SHIFT - ONE_SHIFT)

    # expected share of each annotator's votes (on items with evidence) that are correct
    on_ann, on_cell = ann, lab * n_items + item
    if no_evidence.size:
        on = evidence[item]
        on_ann, on_cell = ann[on], on_cell[on]
    right = np.bincount(on_ann, weights=(np.take(q, on_cell) >> (PROB_SHIFT - ONE_SHIFT)).astype(np.float64),
                        minlength=votes.n_annotators).astype(np.int64)  # sums <= 2**24 * 2**16: exact
    n_counted = np.bincount(on_ann, minlength=votes.n_annotators).astype(np.int64)
    accuracy = np.where(n_counted > 0, right // np.maximum(n_counted, 1), 0)
    return _finish(votes, label, confidence, accuracy)


# --------------------------------------------------------------------------- encoding


def encode_result(res: AggregateResult) -> bytes:
    """The aggregate encoding of an estimator's output (PROTOCOL-APPENDIX-consensus.md A.8).

    A msgpack array ``[version, ONE, labels, confidences, agreements, accuracies, alpha]``
    where every list holds plain integers (msgpack's smallest integer encodings, so one
    result has exactly one encoding).  A fingerprint for the test vectors and tests: it is
    not the task result of ``protocol.tally`` and is never hashed into a root.
    """
    return msgpack.packb(
        [
            RESULT_ENCODING_VERSION,
            ONE,
            np.asarray(res.label, dtype=np.int64).tolist(),
            np.asarray(res.confidence, dtype=np.int64).tolist(),
            np.asarray(res.agreement, dtype=np.int64).tolist(),
            np.asarray(res.annotator_accuracy, dtype=np.int64).tolist(),
            int(res.alpha),
        ],
        use_bin_type=True,
    )


def decode_result(data: bytes) -> AggregateResult:
    """Inverse of :func:`encode_result`.  Raises AggregateError on malformed bytes."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise AggregateError(f"result bytes are not valid msgpack: {exc}") from None
    if (
        not isinstance(obj, list)
        or len(obj) != 7
        or obj[0] != RESULT_ENCODING_VERSION
        or obj[1] != ONE
        or not all(isinstance(x, list) for x in obj[2:6])
        or not isinstance(obj[6], int)
    ):
        raise AggregateError("result bytes do not hold a version-1 aggregate result")
    if not (len(obj[2]) == len(obj[3]) == len(obj[4])):
        raise AggregateError("result bytes have per-item lists of different lengths")
    try:
        return AggregateResult(
            label=np.array(obj[2], dtype=np.int32),
            confidence=np.array(obj[3], dtype=np.int64),
            agreement=np.array(obj[4], dtype=np.int64),
            annotator_accuracy=np.array(obj[5], dtype=np.int64),
            alpha=obj[6],
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise AggregateError(f"result bytes hold a non-integer value: {exc}") from None

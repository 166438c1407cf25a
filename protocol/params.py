"""Network-wide protocol parameters.

Every tunable that decides validity, labels, rewards or reputation lives here, is
part of the genesis (so every node of a network uses the same values) and is
checked by ``Params.validate()``. Units are in the field comments. Times are
integer milliseconds since the Unix epoch; durations are integer milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .errors import ParamsError


@dataclass(frozen=True)
class Params:
    # ---- sizes (decoders enforce these before allocating) ----
    max_message_bytes: int = 960 << 10      # bytes; whole encoded message. Range 1 KiB..960 KiB (gossip caps at 1 MiB incl. framing)
    max_items_per_task: int = 10_000        # items in one TaskAnnouncement. Range 1..100_000
    max_classes: int = 64                   # labels in a single-choice schema. Range 2..1024
    max_labels_per_batch: int = 10_000      # (item, label) pairs in one AnnotationBatch. Range 1..100_000
    max_string_bytes: int = 256             # UTF-8 bytes of any short string (title, label name, media type)
    max_inline_item_bytes: int = 4096       # bytes of one inline item payload
    max_blob_bytes: int = 64 << 20          # declared size of a blob item, bytes
    max_batch_ids_per_attestation: int = 20_000  # batch ids listed in one prevote attestation
    max_bounty: int = 10**15                # credits; integer upper bound of a task bounty
    max_redundancy: int = 1_000             # wanted annotations per item

    # ---- time ----
    clock_skew_ms: int = 30_000             # ms; messages stamped further in the future are IGNOREd (retried later)
    min_task_duration_ms: int = 1_000       # ms; deadline - created_at must be at least this
    max_task_duration_ms: int = 90 * 86_400_000  # ms; at most 90 days
    grace_period_ms: int = 5_000            # ms after the deadline before validators attest
    round_timeout_ms: int = 5_000           # ms per finality round before moving to the next

    # ---- consensus / reputation (fixed point: ONE = 1 << 16) ----
    fresh_weight: int = 64                  # fixed-point prior weight of an account with no reputation (~0.001)
    reputation_lag_ms: int = 600_000        # ms; a task's reputation snapshot holds the certified tasks whose
                                            # deadline is at least this long before the task's created_at
    max_weight: int = 1 << 20               # fixed-point cap of any account's weight (16.0)

    # ---- ledger (protocol/ledger.py, docs/ledger.md) ----
    max_votes_per_ledger_vote: int = 4_096  # (sender, seq, order id) votes one LedgerVote may carry. Range 1..10_000
    ledger_seq_window: int = 256            # a node stores an account's debit orders up to this many sequence
                                            # numbers past its next unapplied one (a storage bound). Range 1..65_536
    ledger_fee_bps: int = 0                 # protocol fee on a released task escrow, in 1/10,000 of the bounty.
                                            # Range 0..10_000 (0 = no fee)
    ledger_fee_to: int = 0                  # where the fee goes: 0 = burned, 1 = to the validators by weight
                                            # (the integer remainder is burned)

    def validate(self) -> "Params":
        """Raise ParamsError naming the first field out of range; return self."""
        checks = {
            "max_message_bytes": (1024, 960 << 10),
            "max_items_per_task": (1, 100_000),
            "max_classes": (2, 1024),
            "max_labels_per_batch": (1, 100_000),
            "max_string_bytes": (8, 4096),
            "max_inline_item_bytes": (0, 1 << 20),
            "max_blob_bytes": (0, 1 << 32),
            "max_batch_ids_per_attestation": (1, 30_000),
            "max_bounty": (0, 2**62),
            "max_redundancy": (1, 100_000),
            "clock_skew_ms": (0, 3_600_000),
            "min_task_duration_ms": (0, 86_400_000),
            "max_task_duration_ms": (1, 3650 * 86_400_000),
            "grace_period_ms": (0, 86_400_000),
            "round_timeout_ms": (100, 3_600_000),
            "fresh_weight": (0, 1 << 16),
            "reputation_lag_ms": (0, 365 * 86_400_000),
            "max_weight": (1, 1 << 30),
            "max_votes_per_ledger_vote": (1, 10_000),
            "ledger_seq_window": (1, 65_536),
            "ledger_fee_bps": (0, 10_000),
            "ledger_fee_to": (0, 1),
        }
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ParamsError(f"param {f.name} must be an integer, got {v!r}")
            lo, hi = checks[f.name]
            if not lo <= v <= hi:
                raise ParamsError(f"param {f.name}={v} is out of range [{lo}, {hi}]")
        if self.min_task_duration_ms > self.max_task_duration_ms:
            raise ParamsError("min_task_duration_ms must not exceed max_task_duration_ms")
        return self

    def with_overrides(self, overrides: dict[str, int]) -> "Params":
        """Return a copy with the named fields replaced; unknown names raise ParamsError."""
        known = {f.name for f in fields(self)}
        for k in overrides:
            if k not in known:
                raise ParamsError(f"unknown param {k!r}; known: {', '.join(sorted(known))}")
        return replace(self, **overrides).validate()


DEFAULT_PARAMS = Params().validate()

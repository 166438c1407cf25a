"""The one peer-penalty policy of a node: penalty points per peer, optionally decaying
with a half-life, and a ban of ``ban_s`` seconds once they reach ``limit``.

Every protocol that judges peers applies it to its own per-peer record (anything with
``penalty``, ``stamp`` and ``banned_until`` attributes, e.g. ``PenaltyRecord``):

* gossip (node/net/host.py): 1 point per REJECTed message, half-life
  ``invalid_message_half_life_s``, limit ``offender_reject_threshold`` (3), ban
  ``offender_ban_s`` (600 s): the peer is disconnected and refused;
* sync (node/services/sync.py): points per malformed response or invalid message, no
  decay, limit 10, ban 300 s: the peer is disconnected and skipped;
* blob transfer (node/services/blobs.py): 1 point per lie, no decay, limit 3, ban 300 s:
  the peer is not asked.

Points are kept when a peer is banned (what a status shows), so a peer that misbehaves
again after its ban is banned again sooner. Pure: time is an argument (seconds).
"""
from __future__ import annotations

from dataclasses import dataclass

#: Slack when a decayed count is compared with the limit: N penalties a few seconds
#: apart decay to slightly under N.
DECAY_TOLERANCE = 0.05


@dataclass
class PenaltyRecord:
    penalty: float = 0        # points (decayed to ``stamp`` when the policy has a half-life)
    stamp: float = 0.0        # time of the last penalty
    banned_until: float = 0.0


@dataclass(frozen=True)
class PenaltyPolicy:
    limit: float                      # points at which a peer is banned, > 0
    ban_s: float                      # how long a ban lasts, seconds, > 0
    half_life_s: float | None = None  # points halve every this many seconds (None: they never decay)

    def points(self, rec, now: float) -> float:
        """The record's points at ``now``."""
        if self.half_life_s is None or not rec.penalty:
            return rec.penalty
        return rec.penalty * 0.5 ** (max(0.0, now - rec.stamp) / self.half_life_s)

    def penalise(self, rec, points: float, now: float) -> bool:
        """Add ``points``; True if that bans the peer now (it reached ``limit`` and was not
        banned already)."""
        rec.penalty = self.points(rec, now) + points
        rec.stamp = now
        tolerance = DECAY_TOLERANCE if self.half_life_s is not None else 0.0
        if self.is_banned(rec, now) or rec.penalty < self.limit - tolerance:
            return False
        rec.banned_until = now + self.ban_s
        return True

    def is_banned(self, rec, now: float) -> bool:
        return rec.banned_until > now

    def ban_remaining(self, rec, now: float) -> float:
        """Seconds left of the record's ban (0 if none)."""
        return max(0.0, rec.banned_until - now)

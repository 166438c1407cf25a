"""The token bucket: ``rate`` tokens per second refill a bucket of ``burst`` tokens.

One implementation for every limit of a node: gossip rate limits per peer, origin and
account (``KeyedBuckets``, node/policy/ratelimit.py) and the pacing of our own
publishes (node/net/host.py). Pure: time is an argument (seconds of any monotonic
clock: the node passes ``trio.current_time()``).
"""
from __future__ import annotations

import collections
from collections.abc import Hashable


class TokenBucket:
    """A bucket that starts full. ``take`` may leave a debt: more than the burst is taken
    from a full bucket, and the debt refills first."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float | None = None):
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now  # time of the last refill; None: not used yet (refilled on first use)

    def refill(self, now: float) -> float:
        """Add the tokens earned since the last refill (up to ``burst``); return the tokens held."""
        if self.stamp is None:
            self.stamp = now
        elif now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def take(self, now: float, n: int = 1) -> bool:
        """Take ``n`` tokens if the bucket holds at least ``min(n, burst)``; False (nothing
        taken) otherwise."""
        if self.refill(now) >= min(n, self.burst):
            self.tokens -= n
            return True
        return False

    def seconds_until(self, now: float, n: float = 1.0) -> float:
        """Seconds until the bucket holds ``n`` tokens (0 if it does now)."""
        return max(0.0, (n - self.refill(now)) / self.rate)


class KeyedBuckets:
    """One TokenBucket per key (a peer, an account), the ``max_tracked`` most recently
    used kept (an evicted bucket comes back full, which only ever favours its key)."""

    def __init__(self, rate: float, burst: float, max_tracked: int):
        self.rate = rate
        self.burst = burst
        self.max_tracked = max_tracked
        self._buckets: collections.OrderedDict[Hashable, TokenBucket] = collections.OrderedDict()

    def get(self, key: Hashable, now: float) -> TokenBucket:
        """The key's bucket, refilled to ``now`` (a new one starts full)."""
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.max_tracked:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            b.refill(now)
        return b

    def has(self, key: Hashable, now: float) -> bool:
        """Whether the key's bucket holds a whole token (takes nothing)."""
        return self.get(key, now).tokens >= 1.0

    def take(self, key: Hashable, now: float, n: int = 1) -> bool:
        """TokenBucket.take on the key's bucket."""
        return self.get(key, now).take(now, n)

    def tokens(self, key: Hashable, now: float) -> float:
        return self.get(key, now).tokens

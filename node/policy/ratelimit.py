"""Rate limits in front of gossip: token buckets per forwarding peer, per origin
peer and per signing account, and the abuse rule that turns a flood into a ban.

How it works
------------
``Node.gossip_validate`` asks this module before doing any costly work:

Limits count *envelopes* (signed messages) where they bound work, and pubsub
*messages* where they detect abuse: a gossip message carries one envelope or a
bundle of up to 256 (protocol/bundle.py).

1. **Per forwarder** (``peer_*``), before decoding: every envelope a peer hands
   us takes a token from that peer's bucket, relayed or its own. Empty bucket ->
   IGNORE (don't forward, no penalty). This bounds the CPU one connection can
   make us spend on decoding and verifying.
2. **Per origin, messages** (``origin_message_*``), before decoding: each pubsub
   message takes a token from the bucket of the peer that published it (the
   libp2p ``from`` field, which py-libp2p's strict signing authenticates),
   however many relayers it came through. Empty -> IGNORE, and the abuse rule
   below. An honest node stays far below it: it publishes at most
   ``P2PConfig.publish_rate_per_s`` messages (10/s, burst 2) and bundles the rest,
   and the default here is 50/s with a burst of 500.
3. **Per origin, envelopes** (``origin_*``), after decoding and de-duplication:
   each *new* envelope takes a token from its origin's bucket. Empty -> IGNORE
   only: a busy honest node may well originate more than 300 envelopes/s in
   bundles; what gossip does not carry, sync fetches, paced by the receiver.
4. **Per account** (``account_*``): a message is only let through while its
   signer's bucket has a token, and takes one only once its signature verified
   and it was stored or parked (so forgeries cannot drain an honest account's
   bucket). Empty -> IGNORE. This bounds what one key can make the network
   carry; Sybil keys are bounded by (1) and (3) per peer, and each key per task by
   the keep rule (node/core/keep.py: two batches per item at most are stored).

**Abuse -> REJECT.** A message over the origin *message* limit (2) whose
forwarder *is* its origin -- the peer is flooding us with its own messages at a
pace no honest publisher reaches -- adds 1 to that peer's decayed abuse count
(half-life ``abuse_half_life_s``). Once the count reaches ``abuse_threshold``,
each such message is REJECTed instead of IGNOREd, and the p2p adapter's offender policy
disconnects and bans the peer after ``offender_reject_threshold`` REJECTs (with
the defaults: the 3rd). Relayers are never penalised for what they relay: an
honest relayer of someone else's flood only ever gets IGNOREs. Envelope limits
never lead to a ban (a bundle flood at an honest message pace is paced, not
banned). With an unknown origin (the in-memory test network) only the forwarder
and account rules apply.

Messages over a limit are not lost for good: IGNORE keeps them out of the
py-libp2p seen-cache, and anti-entropy sync (pull-based, paced by us) fetches
any valid message later. Limits are local policy (they never change which
messages are *valid*), so nodes may differ in them without disagreeing.

Defaults are chosen so that no honest node is ever penalised; a peer that floods
*valid* messages at up to the origin message rate is therefore not banned but paced (and
py-libp2p validates one peer's messages one at a time, so a single connection
delivers only ~100-200 messages/s to a node anyway). Operators who expect less
traffic tighten the limits with ``LABELMESH_GOSSIP_LIMITS`` (see
``RateLimitConfig.from_env``); tests/test_attack_devnet.py does, and its flooding
peer is banned by every node.

Pure: time is an argument (seconds, any monotonic clock); the node passes
``trio.current_time()``. State is bounded: at most ``max_tracked`` buckets per
kind, least recently used evicted (an evicted bucket comes back full, which
only ever favours the peer).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, fields

from ..errors import ConfigError
from .tokens import KeyedBuckets

ENV_LIMITS = "LABELMESH_GOSSIP_LIMITS"


@dataclass(frozen=True)
class RateLimitConfig:
    """Gossip rate limits of one node (local policy; rates in messages per second)."""

    peer_rate_per_s: float = 1000.0      # messages/s one forwarding peer may hand us (all kinds, relayed or own), > 0
    peer_burst: float = 4000.0           # bucket size of the above, >= 1
    origin_rate_per_s: float = 300.0     # new envelopes/s originated by one peer, via any relayer, > 0
    origin_burst: float = 2000.0         # bucket size of the above, >= 1
    origin_message_rate_per_s: float = 50.0  # pubsub messages/s published by one peer (5x the reference pace of 10/s), > 0
    origin_message_burst: float = 500.0  # bucket size of the above, >= 1
    account_rate_per_s: float = 100.0    # new messages/s signed by one account that we store or park, > 0
    account_burst: float = 1000.0        # bucket size of the above, >= 1
    abuse_threshold: float = 100.0       # decayed over-limit count of a self-originating peer before REJECT, >= 1
    abuse_half_life_s: float = 60.0      # half-life of that count, seconds, > 0
    max_tracked: int = 100_000           # buckets remembered per kind (LRU), >= 16

    @classmethod
    def from_env(cls, env) -> "RateLimitConfig":
        """Defaults overridden by ``LABELMESH_GOSSIP_LIMITS="origin_rate_per_s=50,origin_burst=500"``
        (comma-separated field=number pairs). Raises ConfigError naming the bad pair."""
        text = env.get(ENV_LIMITS, "").strip()
        if not text:
            return cls()
        from ..config import number_pairs
        kinds = {f.name: int if f.name == "max_tracked" else float for f in fields(cls)}
        values = number_pairs(ENV_LIMITS, text, kinds, ConfigError)
        return cls(**values).validate()

    def validate(self) -> "RateLimitConfig":
        """Raise ConfigError naming the first field out of range; return self."""
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                raise ConfigError(f"rate limit {f.name} must be a number, got {v!r}")
        for name in ("peer_rate_per_s", "origin_rate_per_s", "origin_message_rate_per_s", "account_rate_per_s",
                     "abuse_half_life_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"rate limit {name} must be > 0")
        for name in ("peer_burst", "origin_burst", "origin_message_burst", "account_burst", "abuse_threshold"):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"rate limit {name} must be >= 1")
        if self.max_tracked < 16:
            raise ConfigError("rate limit max_tracked must be >= 16")
        return self


IGNORE = "ignore"
REJECT = "reject"


class GossipRateLimiter:
    """The three bucket kinds plus the abuse counter. Methods return None (go on),
    ``IGNORE`` or ``REJECT``; see the module docstring."""

    def __init__(self, config: RateLimitConfig | None = None):
        self.config = cfg = (config or RateLimitConfig()).validate()
        self.peers = KeyedBuckets(cfg.peer_rate_per_s, cfg.peer_burst, cfg.max_tracked)
        self.origins = KeyedBuckets(cfg.origin_rate_per_s, cfg.origin_burst, cfg.max_tracked)
        self.origin_messages = KeyedBuckets(cfg.origin_message_rate_per_s, cfg.origin_message_burst, cfg.max_tracked)
        self.accounts = KeyedBuckets(cfg.account_rate_per_s, cfg.account_burst, cfg.max_tracked)
        self._abuse: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self.stats: collections.Counter[str] = collections.Counter()

    def on_message(self, forwarder: str, origin: str | None, now: float, n: int = 1) -> str | None:
        """Before decoding a pubsub message of ``n`` envelopes: the forwarder's envelope
        bucket (over: IGNORE), then the origin's message bucket (over: IGNORE, or toward
        REJECT when the forwarder is the origin — see the abuse rule)."""
        if not self.peers.take(forwarder, now, n):
            self.stats["over_peer_limit"] += 1
            return IGNORE
        if origin is None or self.origin_messages.take(origin, now):
            return None
        self.stats["over_origin_message_limit"] += 1
        return self._over_limit(forwarder, origin, now)

    def on_new_message(self, forwarder: str, origin: str | None, now: float, n: int = 1) -> str | None:
        """After de-duplication (``n`` envelopes we do not hold yet): the origin's envelope bucket."""
        if origin is None or self.origins.take(origin, now, n):
            return None
        self.stats["over_origin_limit"] += 1
        return IGNORE

    def account_allows(self, account: bytes, now: float) -> bool:
        """Whether ``account`` may have one more message verified now (takes nothing)."""
        if self.accounts.has(account, now):
            return True
        self.stats["over_account_limit"] += 1
        return False

    def on_account_used(self, account: bytes, now: float) -> None:
        """A message signed by ``account`` verified and was kept: take its token."""
        self.accounts.take(account, now)

    def abuse(self, peer: str, now: float) -> float:
        """The peer's current decayed abuse count."""
        v = self._abuse.get(peer)
        if v is None:
            return 0.0
        count, stamp = v
        return count * 0.5 ** (max(0.0, now - stamp) / self.config.abuse_half_life_s)

    def _over_limit(self, forwarder: str, origin: str | None, now: float) -> str:
        if origin is None or origin != forwarder:
            return IGNORE  # relaying someone else's flood is not abuse
        count = self.abuse(forwarder, now) + 1.0
        self._abuse[forwarder] = (count, now)
        self._abuse.move_to_end(forwarder)
        if len(self._abuse) > self.config.max_tracked:
            self._abuse.popitem(last=False)
        if count >= self.config.abuse_threshold:
            self.stats["abuse_rejects"] += 1
            return REJECT
        return IGNORE

"""Configuration of the p2p adapter: :class:`P2PConfig` (every tunable, with its unit and
range, checked by ``validate``), the gossip validation outcomes, the offered GossipSub
versions and the libp2p limits the configuration must respect."""
from __future__ import annotations

import dataclasses
import enum
import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import multiaddr
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import (
    PROTOCOL_ID as GOSSIPSUB_V10,
    PROTOCOL_ID_V11 as GOSSIPSUB_V11,
    PROTOCOL_ID_V12 as GOSSIPSUB_V12,
)

from .errors import P2PConfigError, P2PError

PINNED_LIBP2P_VERSION = "0.8.1"

# Offered GossipSub protocol versions, best first. v1.3+ (extensions, py-only
# v1.4/v2.0 features) is deliberately not offered; js-libp2p and go-libp2p
# speak 1.2/1.1.
GOSSIPSUB_PROTOCOLS: tuple[str, ...] = (GOSSIPSUB_V12, GOSSIPSUB_V11, GOSSIPSUB_V10)

# py-libp2p's per-peer outbound RPC queue size (pubsub/rpc_queue.py
# OutBoundQueueSize); read from the live queue when possible.
PEER_QUEUE_SIZE = 32
# Slots of that queue we keep free for control messages (GRAFT/PRUNE/IHAVE).
PEER_QUEUE_HEADROOM = 4
# Largest inbound pubsub RPC py-libp2p accepts (pubsub/rpc_queue.py DefaultMaxMessageSize).
MAX_RPC_BYTES = 1024 * 1024
# Room left in an RPC for the signed envelope, key, signature, topic and framing.
RPC_OVERHEAD_BYTES = 64 * 1024


class GossipOutcome(enum.Enum):
    """Result of validating one gossip message (go-libp2p-pubsub semantics)."""

    ACCEPT = "accept"  # deliver and forward
    REJECT = "reject"  # invalid: drop, don't forward, penalise the forwarder
    IGNORE = "ignore"  # not useful now (duplicate, too early/late, unknown ref): drop, no penalty


@dataclass(frozen=True)
class P2PConfig:
    """Everything the p2p layer needs. Times in seconds, sizes in bytes.

    Checked by :meth:`validate` (called by :class:`P2PNode`).
    """

    # Identity: 32-byte ed25519 seed of the node key (PeerId). Same seed, same peer id. Secret: not in repr.
    seed: bytes = field(repr=False)
    # Multiaddrs to listen on, "/ip4/<ip>/tcp/<port>" (port 0 = ephemeral; listen_addrs() reports the real one).
    listen: Sequence[str]
    # Full multiaddrs "/ip4/<ip>/tcp/<port>/p2p/<peer id>" dialed at start and redialed when the link drops.
    bootstrap: Sequence[str] = ()
    # Addresses to advertise instead of the listen addresses (e.g. a public IP); no /p2p part. Empty = listen.
    announce: Sequence[str] = ()

    # --- GossipSub mesh (go-libp2p names in brackets) ---
    gossip_degree: int = 6  # [D] target mesh peers per topic, >= 1
    gossip_degree_low: int = 4  # [D_low] graft when the mesh is smaller, 1..D
    gossip_degree_high: int = 12  # [D_high] prune when the mesh is larger, >= D
    heartbeat_interval_s: float = 1.0  # mesh maintenance / gossip / score decay period, 0.05..60
    gossip_window: int = 3  # heartbeats of message ids advertised in IHAVE, 1..history
    gossip_history: int = 5  # heartbeats of full messages kept for IWANT, >= window
    fanout_ttl_s: int = 60  # forget fanout peers of a topic we publish to but don't join, >= 1
    prune_backoff_s: int = 60  # peers we PRUNE (or that PRUNE us) may not re-GRAFT for this long, >= 1
    seen_ttl_s: int = 120  # remember seen message ids (and rejected ids) this long, >= 1
    max_message_bytes: int = 512 * 1024  # largest gossip payload we publish, 1 .. 1 MiB - 64 KiB

    # --- our publishing (py-libp2p never blocks a publish; its per-peer queues hold 32 RPCs) ---
    # 10/s: under load the daemon bundles what waits (protocol/bundle.py), so a slow bucket
    # means bigger messages, not fewer labels; the rate is what 10 py-libp2p nodes on 2 cores
    # carry with p99 < 300 ms (BENCHMARKS.md, propagation).
    publish_rate_per_s: float = 10.0  # token-bucket refill rate for publish() (pubsub messages/s), > 0
    publish_burst: int = 2  # token-bucket size (publishes allowed back to back), 1..28
    publish_queue_wait_s: float = 1.0  # max wait for room in a peer's outbound queue, then mark it congested, >= 0

    # --- delivery and validation ---
    delivery_queue_size: int = 1024  # accepted messages buffered per topic for on_message, >= 1
    validation_timeout_s: float = 5.0  # a validator call slower than this counts as IGNORE, > 0
    max_concurrent_validations: int = 64  # validator calls in flight, >= 1

    # --- peer scoring (py-libp2p PeerScorer; score = -invalid_message_weight * decayed REJECT count) ---
    invalid_message_weight: float = 10.0  # [P4 weight, positive here] score lost per REJECTed message, > 0
    invalid_message_cap: float = 100.0  # [P4 cap] counter cap, > 0
    invalid_message_half_life_s: float = 300.0  # [P4 decay] half-life of the REJECT counter, > 0
    # How py-libp2p 0.8.1 uses the thresholds (pubsub/gossipsub.py, pubsub/pubsub.py):
    gossip_threshold: float = -15.0  # below: we stop forwarding mesh/fanout traffic to it (not used for IHAVE), <= 0
    publish_threshold: float = -40.0  # below: its messages are dropped unvalidated, we send it nothing, < gossip
    graylist_threshold: float = -80.0  # below: its GRAFTs are refused and it is pruned first, < publish
    accept_px_threshold: float = math.inf  # peer exchange on PRUNE accepted from peers scoring >= this (inf = never)

    # --- repeat offenders (our own policy on top of scoring) ---
    offender_reject_threshold: float = 3.0  # decayed REJECT count at which we disconnect and ban, >= 1
    offender_ban_s: float = 600.0  # how long a banned peer is refused (both directions), > 0

    # --- connections ---
    # Inbound connections are refused (at the Noise handshake) while this many peers are
    # connected; our own dials (bootstrap peers, connect()) are not limited, >= 1.
    max_peers: int = 64
    dial_timeout_s: float = 10.0  # one connect() / bootstrap dial, > 0
    redial_backoff_min_s: float = 1.0  # first bootstrap redial delay (doubles per failure), > 0
    # cap of the bootstrap redial delay, >= min. Small: a dial to a peer that cannot be reached
    # costs a SYN, and after a partition heals some node must dial first before the others
    # wake up (any new connection ends every waiting backoff, P2PNode._bootstrap_loop).
    redial_backoff_max_s: float = 2.0

    # --- request/response ---
    max_request_bytes: int = 1024 * 1024  # largest request body we send or accept, >= 1
    max_response_bytes: int = 8 * 1024 * 1024  # largest response body we send or accept, >= 1
    request_timeout_s: float = 10.0  # default bound on request() and on serving one inbound request, > 0
    max_inbound_requests: int = 64  # inbound requests served concurrently (others wait), >= 1

    def validate(self) -> None:
        """Raise :class:`P2PConfigError` naming the first invalid field."""

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise P2PConfigError(f"P2PConfig.{name}: {what} (got {getattr(self, name)!r})")

        if not isinstance(self.seed, bytes) or len(self.seed) != 32:  # never echo the secret
            raise P2PConfigError("P2PConfig.seed: must be 32 bytes")
        need(len(self.listen) >= 1, "listen", "needs at least one multiaddr")
        for addr in self.listen:
            parse_tcp_multiaddr(addr, "listen", need_peer_id=False)
        for addr in self.bootstrap:
            parse_tcp_multiaddr(addr, "bootstrap", need_peer_id=True)
        for addr in self.announce:
            parse_tcp_multiaddr(addr, "announce", need_peer_id=False)
        need(self.gossip_degree >= 1, "gossip_degree", "must be >= 1")
        need(1 <= self.gossip_degree_low <= self.gossip_degree, "gossip_degree_low", "must be in 1..gossip_degree")
        need(self.gossip_degree_high >= self.gossip_degree, "gossip_degree_high", "must be >= gossip_degree")
        need(0.05 <= self.heartbeat_interval_s <= 60, "heartbeat_interval_s", "must be in 0.05..60")
        need(self.gossip_history >= 1, "gossip_history", "must be >= 1")
        need(1 <= self.gossip_window <= self.gossip_history, "gossip_window", "must be in 1..gossip_history")
        need(self.fanout_ttl_s >= 1, "fanout_ttl_s", "must be >= 1")
        need(self.prune_backoff_s >= 1, "prune_backoff_s", "must be >= 1")
        need(self.seen_ttl_s >= 1, "seen_ttl_s", "must be >= 1")
        need(
            1 <= self.max_message_bytes <= MAX_RPC_BYTES - RPC_OVERHEAD_BYTES,
            "max_message_bytes",
            f"must be in 1..{MAX_RPC_BYTES - RPC_OVERHEAD_BYTES} (py-libp2p rejects RPCs over 1 MiB)",
        )
        need(self.publish_rate_per_s > 0, "publish_rate_per_s", "must be > 0")
        need(
            1 <= self.publish_burst <= PEER_QUEUE_SIZE - PEER_QUEUE_HEADROOM,
            "publish_burst",
            f"must be in 1..{PEER_QUEUE_SIZE - PEER_QUEUE_HEADROOM} (a peer queue holds {PEER_QUEUE_SIZE})",
        )
        need(self.publish_queue_wait_s >= 0, "publish_queue_wait_s", "must be >= 0")
        need(self.delivery_queue_size >= 1, "delivery_queue_size", "must be >= 1")
        need(self.validation_timeout_s > 0, "validation_timeout_s", "must be > 0")
        need(self.max_concurrent_validations >= 1, "max_concurrent_validations", "must be >= 1")
        need(self.invalid_message_weight > 0, "invalid_message_weight", "must be > 0")
        need(self.invalid_message_cap > 0, "invalid_message_cap", "must be > 0")
        need(self.invalid_message_half_life_s > 0, "invalid_message_half_life_s", "must be > 0")
        need(self.gossip_threshold <= 0, "gossip_threshold", "must be <= 0")
        need(self.publish_threshold < self.gossip_threshold, "publish_threshold", "must be < gossip_threshold")
        need(self.graylist_threshold < self.publish_threshold, "graylist_threshold", "must be < publish_threshold")
        need(self.offender_reject_threshold >= 1, "offender_reject_threshold", "must be >= 1")
        # py-libp2p drops (without validating) every message of a peer scoring
        # below publish_threshold, so we must ban before the score gets there.
        need(
            self.offender_reject_threshold * self.invalid_message_weight < -self.publish_threshold,
            "offender_reject_threshold",
            "times invalid_message_weight must stay above publish_threshold, "
            "or offenders are silenced before they can be banned",
        )
        need(self.offender_ban_s > 0, "offender_ban_s", "must be > 0")
        need(self.max_peers >= 1, "max_peers", "must be >= 1")
        need(self.dial_timeout_s > 0, "dial_timeout_s", "must be > 0")
        need(self.redial_backoff_min_s > 0, "redial_backoff_min_s", "must be > 0")
        need(
            self.redial_backoff_max_s >= self.redial_backoff_min_s,
            "redial_backoff_max_s",
            "must be >= redial_backoff_min_s",
        )
        need(self.max_request_bytes >= 1, "max_request_bytes", "must be >= 1")
        need(self.max_response_bytes >= 1, "max_response_bytes", "must be >= 1")
        need(self.request_timeout_s > 0, "request_timeout_s", "must be > 0")
        need(self.max_inbound_requests >= 1, "max_inbound_requests", "must be >= 1")


ENV_P2P_TUNING = "LABELMESH_P2P_TUNING"


def p2p_tuning_from_env(env: Any) -> dict[str, Any]:
    """Numeric :class:`P2PConfig` fields overridden by
    ``LABELMESH_P2P_TUNING="publish_rate_per_s=10,gossip_degree=4"`` (comma-separated
    field=number pairs; e.g. for benchmarks and experiments). Raises
    :class:`P2PConfigError` naming the bad pair; ranges are checked by ``validate``."""
    text = str(env.get(ENV_P2P_TUNING, "")).strip()
    if not text:
        return {}
    from ..config import number_pairs
    kinds = {f.name: {"int": int, "float": float}[f.type] for f in sorted(dataclasses.fields(P2PConfig),
             key=lambda f: f.name) if f.type in ("int", "float")}
    return number_pairs(ENV_P2P_TUNING, text, kinds, P2PConfigError)


def ensure_port_free(addr: str) -> None:
    """Raise :class:`P2PError` if something already listens on ``addr``'s TCP port.

    py-libp2p's TCP listener sets SO_REUSEPORT (for hole punching), so a second
    node on the same port does *not* fail: the kernel silently splits inbound
    connections between the two. A plain bind (SO_REUSEADDR only) still fails
    against any live listener, so we probe with one first.
    """
    maddr = multiaddr.Multiaddr(addr)
    names = [p.name for p in maddr.protocols()]
    port = int(maddr.value_for_protocol("tcp"))
    if port == 0:
        return
    family = socket.AF_INET6 if names[0] == "ip6" else socket.AF_INET
    ip = maddr.value_for_protocol(names[0])
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError as exc:
            raise P2PError(f"cannot listen on {addr}: {exc.strerror or exc}") from None


def parse_tcp_multiaddr(addr: str, field_name: str, *, need_peer_id: bool) -> multiaddr.Multiaddr:
    try:
        maddr = multiaddr.Multiaddr(addr)
        names = [p.name for p in maddr.protocols()]
    except Exception as exc:  # multiaddr raises several unrelated types
        raise P2PConfigError(f"P2PConfig.{field_name}: {addr!r} is not a multiaddr: {exc}") from None
    if len(names) < 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise P2PConfigError(f"P2PConfig.{field_name}: {addr!r} must start with /ip4|ip6/<addr>/tcp/<port>")
    has_peer_id = names[-1] == "p2p"
    if need_peer_id and not has_peer_id:
        raise P2PConfigError(f"P2PConfig.{field_name}: {addr!r} must end with /p2p/<peer id>")
    if not need_peer_id and len(names) != 2:
        raise P2PConfigError(f"P2PConfig.{field_name}: {addr!r} must be exactly /ip4|ip6/<addr>/tcp/<port>")
    if need_peer_id:
        try:
            if len(names) != 3:
                raise ValueError("extra protocols")
            info_from_p2p_addr(maddr)
        except Exception:
            raise P2PConfigError(
                f"P2PConfig.{field_name}: {addr!r} must be /ip4|ip6/<addr>/tcp/<port>/p2p/<peer id>"
            ) from None
    return maddr

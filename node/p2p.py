"""The libp2p adapter: the only module of labelmesh that imports ``libp2p``.

How it works
============

:class:`P2PNode` wraps one py-libp2p host (TCP + Noise + yamux), one GossipSub
router and one request/response dispatcher, and exposes a small, libp2p-free
API to the daemon (peer ids and multiaddrs are plain strings, payloads are
bytes, errors are :class:`P2PError`).

``run()`` builds everything, listens, dials the bootstrap peers, calls
``task_status.started()`` and then serves until cancelled. All background
work lives in one nursery inside ``run()``:

* one *drain task per subscription*: accepted gossip messages are copied out of
  py-libp2p straight into a per-topic channel of ``delivery_queue_size`` slots,
  and the drain task calls ``on_message`` for each (py-libp2p's own
  subscription channel holds only 32 messages and silently drops the rest);
* one *redial task per bootstrap peer*: dial at start, wait for the connection
  to drop, redial with capped exponential backoff and jitter; only the first
  failure of a series is logged at WARNING (then DEBUG, then INFO on recovery);
* short-lived tasks for ``on_peer_connected`` callbacks and offender
  disconnects.

Gossip validation: ACCEPT / REJECT / IGNORE
-------------------------------------------

py-libp2p 0.8.1 validators are ``fn(forwarder, msg) -> bool`` and any ``False``
counts as an invalid message against the forwarder (``Pubsub.push_msg`` calls
``scorer.on_invalid_message``). There is no IGNORE. We map the three outcomes
like this (``_LabelmeshPubsub.validate_msg`` replaces the library's
``validate_msg``; signature checking stays in the library, before it):

* ACCEPT: return normally -> py-libp2p marks it seen, delivers it (to our
  ``notify_subscriptions`` override, which enqueues it for ``on_message``)
  and forwards it to the mesh.
* REJECT: raise ``ValidationError`` -> not delivered, not forwarded, the
  forwarder's P4 (invalid messages) counter is bumped by the library. We also
  remember the message id for ``seen_ttl_s`` (copies from other forwarders are
  rejected without re-running the validator, and penalised, as in
  go-libp2p-pubsub) and count the REJECT in our own offender table.
* IGNORE: raise ``ValidationError`` *after* arming a one-shot "suppress penalty"
  flag that our scorer subclass (``_LabelmeshScorer.on_invalid_message``)
  consumes. ``push_msg`` calls the scorer synchronously right after the
  exception propagates (no checkpoint in between), so the flag can only be
  consumed by the message that armed it. Not delivered, not forwarded, no
  penalty, and not cached: a later copy (e.g. once the referenced task is known)
  is validated afresh.

A validator that raises, returns something else, or runs longer than
``validation_timeout_s`` counts as IGNORE (a bug or overload on our side must
not penalise peers). A copy of a message whose validation is still in flight
is IGNOREd as a duplicate (py-libp2p marks messages seen only after
validation, so without this the validator and ``on_message`` could see one
message twice). Messages with more than one topic are REJECTed (go/js peers
never send them). Our own publishes are *not* passed to the validator: the
caller builds and checks what it publishes. ``on_message`` is called only for
messages originated by other peers. Messages with a missing or bad signature
are dropped by py-libp2p before validation, silently and without penalty
(``strict_signing``; a library limitation).

Repeat offenders
----------------

py-libp2p scoring only drops an offender's messages; it never prunes or
disconnects it and it forgets the peer's score on disconnect. We keep our own
decayed REJECT counter per peer (half-life ``invalid_message_half_life_s``,
kept across reconnects). When it reaches ``offender_reject_threshold`` the peer
is disconnected, put on the pubsub blacklist, and refused for
``offender_ban_s``: the Noise transport is wrapped (``_GatedNoiseTransport``)
so that a handshake with a banned peer id fails in both directions (and the
bootstrap redial loop waits for the ban to expire). ``P2PConfig.validate`` insists that the offender
threshold is reached before the library's publish threshold silences the peer
(otherwise we would never see enough REJECTs to ban it).

Wire format of the request/response protocols
---------------------------------------------

One request and one response per stream::

    request  = uvarint(len(body)) || body                 (len <= max_request_bytes)
    response = uvarint(1 + len(body)) || status || body   (len(body) <= max_response_bytes)
    status   = 0x00 ok (body = handler result) | 0x01 error (body = short UTF-8 reason)

Both sides read the length prefix first and reset the stream if it announces
more than their limit, before reading the body.

py-libp2p 0.8.1 defaults we override (verified in site-packages/libp2p)
----------------------------------------------------------------------

* ``new_swarm`` (``libp2p/__init__.py``) offers Noise, TLS, SECIO and
  *plaintext* unless ``sec_opt`` is given -> ``sec_opt`` = Noise only, muxer =
  yamux only (``muxer_opt``; the default also offers mplex), transports = TCP
  only (``transports=[TCP()]``).
* ``GossipSub.__init__`` (``pubsub/gossipsub.py``): heartbeat 120 s ->
  ``heartbeat_interval_s``; ``adaptive_gossip_enabled=True`` -> False;
  ``spam_protection_enabled=True`` (10 msg/s per peer and topic, *our own
  publishes included*, checked in ``GossipSub.publish``) -> False, we pace
  ourselves; ``eclipse_protection_enabled=True`` grafts up to 2 more peers per
  heartbeat, ignoring D_high, while the mesh has < 3 distinct IPs and a
  subscriber with another IP exists (small networks) -> False;
  ``_perform_opportunistic_grafting`` runs every
  heartbeat and, with equal scores, grafts 2 more peers each time until the
  mesh overflows D_high and is pruned (churn, GRAFT-flood warnings) ->
  disabled in ``_LabelmeshGossipSub``.
* ``ScoreParams`` (``pubsub/score.py``): all thresholds ``-inf`` -> see
  :class:`P2PConfig` (scoring fields). Only P4 (invalid messages) is weighted;
  P1-P3, P5 (fed by py-libp2p's own IWANT/IHAVE/GRAFT heuristics, which
  misfire) and P7 (IP colocation: every devnet peer is 127.0.0.1) are 0, so an
  honest peer scores 0 and a peer scores -10 per REJECT (decaying). With the
  defaults: 1 REJECT changes nothing, 2 stop our forwarding to the peer
  (gossip threshold -15), 3 ban it (offender policy). The publish (-40) and
  graylist (-80) thresholds are backstops that the ban pre-empts by design.
* ``Swarm`` (``network/swarm.py``, ``network/auto_connector.py``): the
  auto-connector dials every peer in the peerstore (target 200 connections),
  logging INFO every cycle, and would re-dial peers we dropped on purpose ->
  replaced by a never-started instance; we redial bootstrap peers ourselves.
  ``RetryConfig`` makes 4 attempts per dial, logging ERROR each time -> 2;
  the per-attempt ERRORs of a few loggers (failed TCP dial, refused handshake,
  failed stream open) are dropped by ``_LibraryNoiseFilter`` because we report
  those failures ourselves (P2PError, redial log).
* ``Pubsub.__init__`` starts a ``LastSeenCache`` sweeper *thread* that nobody
  stops -> Pubsub is created inside ``run()`` and ``seen_messages.stop()`` is
  called on teardown.
* ``Pubsub._teardown_if_connected`` (blacklisting a peer) races with the
  disconnect of the same peer and raises KeyError, which stops the pubsub service
  and the node -> replaced by a tolerant version in ``_LabelmeshPubsub``.
* ``TCP`` listeners (``transport/tcp/tcp.py`` ``_set_reuse_flags``) always set
  SO_REUSEPORT, so a second node on a busy port starts fine and steals half the
  inbound connections -> ``run()`` first probes each fixed port with a plain
  bind and fails with :class:`P2PError` if it is taken.
* ``libp2p.utils.logging.setup_logging`` sets the ``libp2p`` logger
  ``propagate=False`` at import -> re-enabled (unless ``LIBP2P_DEBUG`` is set,
  in which case py-libp2p's own debug logging is left alone); the
  auto-connector logger (forced to INFO by the library) is set to WARNING.
* ``read_varint_prefixed_bytes``/``read_exactly`` give up after ~100 partial
  reads -> our own bounded reader (``_read_frame``).
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Sequence
import dataclasses
from dataclasses import dataclass, field
import enum
import inspect
import logging
import math
import os
import random
import socket
from typing import Any

import multiaddr
import trio

import libp2p
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee, IRawConnection, ISecureConn
from libp2p.crypto.x25519 import create_new_key_pair as _create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import ValidationError
from libp2p.identity_utils import create_identity_from_seed
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import (
    PROTOCOL_ID as GOSSIPSUB_V10,
    PROTOCOL_ID_V11 as GOSSIPSUB_V11,
    PROTOCOL_ID_V12 as GOSSIPSUB_V12,
    GossipSub,
)
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import PeerScorer, ScoreParams, TopicScoreParams
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.transport import (
    PROTOCOL_ID as NOISE_PROTOCOL_ID,
    Transport as NoiseTransport,
)
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID, Yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.tcp.tcp import TCP
from libp2p.utils.varint import encode_uvarint

logger = logging.getLogger(__name__)

PINNED_LIBP2P_VERSION = "0.8.1"

# Offered GossipSub protocol versions, best first. v1.3+ (extensions, py-only
# v1.4/v2.0 features) is deliberately not offered; js-libp2p and go-libp2p
# speak 1.2/1.1.
GOSSIPSUB_PROTOCOLS: tuple[str, ...] = (GOSSIPSUB_V12, GOSSIPSUB_V11, GOSSIPSUB_V10)

# py-libp2p's per-peer outbound RPC queue size (pubsub/rpc_queue.py
# OutBoundQueueSize); read from the live queue when possible.
_PEER_QUEUE_SIZE = 32
# Slots of that queue we keep free for control messages (GRAFT/PRUNE/IHAVE).
_PEER_QUEUE_HEADROOM = 4
# Largest inbound pubsub RPC py-libp2p accepts (pubsub/rpc_queue.py DefaultMaxMessageSize).
_MAX_RPC_BYTES = 1024 * 1024
# Room left in an RPC for the signed envelope, key, signature, topic and framing.
_RPC_OVERHEAD_BYTES = 64 * 1024

# Slack when comparing decayed REJECT counts with the offender threshold.
_DECAY_TOLERANCE = 0.05

_STATUS_OK = 0
_STATUS_ERROR = 1
_MAX_ERROR_REASON_BYTES = 256


# ---------------------------------------------------------------------------
# Errors


from protocol.errors import LabelmeshError  # noqa: E402  (the one root error of the project)


class P2PError(LabelmeshError):
    """A peer-to-peer operation failed (dial, stream, timeout, size limit, remote error)."""


class P2PConfigError(P2PError):
    """A :class:`P2PConfig` value is out of range; the message names the field."""


class P2PTimeoutError(P2PError):
    """A bounded p2p operation (request, dial) did not finish in time."""


class P2PRemoteError(P2PError):
    """The remote request handler failed; the message carries the remote's short reason."""


class _FrameTooLarge(Exception):
    """A length prefix announced more bytes than allowed (internal)."""


# ---------------------------------------------------------------------------
# Configuration


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
    redial_backoff_max_s: float = 60.0  # cap of the bootstrap redial delay, >= min

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
            _parse_tcp_multiaddr(addr, "listen", need_peer_id=False)
        for addr in self.bootstrap:
            _parse_tcp_multiaddr(addr, "bootstrap", need_peer_id=True)
        for addr in self.announce:
            _parse_tcp_multiaddr(addr, "announce", need_peer_id=False)
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
            1 <= self.max_message_bytes <= _MAX_RPC_BYTES - _RPC_OVERHEAD_BYTES,
            "max_message_bytes",
            f"must be in 1..{_MAX_RPC_BYTES - _RPC_OVERHEAD_BYTES} (py-libp2p rejects RPCs over 1 MiB)",
        )
        need(self.publish_rate_per_s > 0, "publish_rate_per_s", "must be > 0")
        need(
            1 <= self.publish_burst <= _PEER_QUEUE_SIZE - _PEER_QUEUE_HEADROOM,
            "publish_burst",
            f"must be in 1..{_PEER_QUEUE_SIZE - _PEER_QUEUE_HEADROOM} (a peer queue holds {_PEER_QUEUE_SIZE})",
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
    from .config import number_pairs
    kinds = {f.name: {"int": int, "float": float}[f.type] for f in sorted(dataclasses.fields(P2PConfig),
             key=lambda f: f.name) if f.type in ("int", "float")}
    return number_pairs(ENV_P2P_TUNING, text, kinds, P2PConfigError)


def _ensure_port_free(addr: str) -> None:
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


def _parse_tcp_multiaddr(addr: str, field_name: str, *, need_peer_id: bool) -> multiaddr.Multiaddr:
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


# ---------------------------------------------------------------------------
# Logging


class _LibraryNoiseFilter(logging.Filter):
    """Drop py-libp2p ERRORs that report one failed attempt we already surface.

    Each of these fires on ordinary network events (a dead bootstrap peer, a
    refused handshake, a disconnect racing a stream open, a protocol the remote
    does not serve) and is reported to our caller as a :class:`P2PError` or by
    the redial loop. Kept, demoted to DEBUG, when the ``libp2p`` logger is
    enabled for DEBUG.
    """

    PREFIXES: dict[str, tuple[str, ...]] = {
        "libp2p.transport.tcp.tcp": ("Failed to open TCP stream",),
        "libp2p.network.swarm": ("failed to upgrade security for peer",),
        "libp2p.host.basic_host": ("Failed to open stream to peer",),
        "libp2p.protocol_muxer.multiselect_client": ("MultiselectClient handshake:",),
    }

    def filter(self, record: logging.LogRecord) -> bool:
        prefixes = self.PREFIXES.get(record.name)
        if not prefixes or not isinstance(record.msg, str) or not record.msg.startswith(prefixes):
            return True
        if logging.getLogger("libp2p").isEnabledFor(logging.DEBUG):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return True
        return False


_logging_configured = False


def _configure_libp2p_logging() -> None:
    """Re-attach py-libp2p's logger to ours and quiet its noisy parts (idempotent)."""
    global _logging_configured
    if _logging_configured:
        return
    _logging_configured = True
    if not os.environ.get("LIBP2P_DEBUG"):
        root = logging.getLogger("libp2p")
        root.propagate = True
        if root.level == logging.NOTSET or root.level > logging.WARNING:
            root.setLevel(logging.WARNING)
    # Forced to INFO by the library; logs every auto-connect cycle (we disable it anyway).
    logging.getLogger("libp2p.network.auto_connector").setLevel(logging.WARNING)
    noise_filter = _LibraryNoiseFilter()
    for name in _LibraryNoiseFilter.PREFIXES:
        logging.getLogger(name).addFilter(noise_filter)


_SIGNED_RECORD_CACHE: collections.OrderedDict = collections.OrderedDict()
_SIGNED_RECORD_TTL_S = 600.0
_SIGNED_RECORD_CACHE_SIZE = 4096


def _tune_libp2p_hot_paths() -> None:
    """Two py-libp2p 0.8.1 costs that dominated a 10-node devnet under gossip load
    (profiled with py-spy by ``scripts/bench``; see BENCHMARKS.md). Idempotent.

    1. Every pubsub RPC carries the sender's signed peer record, and py-libp2p verifies
       it (ed25519) twice per RPC (``Pubsub.continuously_read_stream`` and
       ``GossipSub.handle_rpc``) -- with ~D copies of each message per node. A record is
       immutable bytes: the same bytes from the same peer that verified once are
       accepted from memory (per local host, bounded, re-verified after 10 min).
    2. Yamux sent a WINDOW_UPDATE frame after every read (``PY_YAMUX_RELEASE_ON_READ``
       defaults to on), i.e. one more encrypted frame and syscall per gossip RPC;
       with it off, credit is returned in half-window batches as go-yamux does.
    """
    import time

    import libp2p.pubsub.gossipsub as gossipsub_mod
    import libp2p.pubsub.pubsub as pubsub_mod
    import libp2p.pubsub.utils as pubsub_utils

    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    original = pubsub_utils.maybe_consume_signed_record
    if getattr(pubsub_mod.maybe_consume_signed_record, "_labelmesh_cached", False):
        return

    def maybe_consume_signed_record(msg: Any, host: Any, peer_id: ID) -> bool:
        if not msg.HasField("senderRecord"):
            return True
        key = (host.get_id(), peer_id, msg.senderRecord)
        now = time.monotonic()
        seen = _SIGNED_RECORD_CACHE.get(key)
        if seen is not None and now - seen < _SIGNED_RECORD_TTL_S:
            return True
        ok = original(msg, host, peer_id)
        if ok:
            _SIGNED_RECORD_CACHE[key] = now
            _SIGNED_RECORD_CACHE.move_to_end(key)
            while len(_SIGNED_RECORD_CACHE) > _SIGNED_RECORD_CACHE_SIZE:
                _SIGNED_RECORD_CACHE.popitem(last=False)
        return ok

    maybe_consume_signed_record._labelmesh_cached = True  # type: ignore[attr-defined]
    pubsub_mod.maybe_consume_signed_record = maybe_consume_signed_record
    gossipsub_mod.maybe_consume_signed_record = maybe_consume_signed_record


# ---------------------------------------------------------------------------
# py-libp2p subclasses (only what the module docstring lists)


class _GatedNoiseTransport(NoiseTransport):
    """Noise, but a handshake with a banned peer id fails (both directions), and an
    inbound one fails while the node is full (``is_full``, see P2PConfig.max_peers)."""

    def __init__(self, *args: Any, is_refused: Callable[[ID], bool], is_full: Callable[[ID], bool],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._is_refused = is_refused
        self._is_full = is_full

    async def _gate(self, conn: ISecureConn, inbound: bool) -> ISecureConn:
        peer = conn.get_remote_peer()
        why = ("is banned" if self._is_refused(peer)
               else "is refused: too many peers connected" if inbound and self._is_full(peer) else "")
        if why:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await conn.close()
            raise HandshakeFailure(f"peer {peer} {why}")
        return conn

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return await self._gate(await super().secure_inbound(conn), inbound=True)

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return await self._gate(await super().secure_outbound(conn, peer_id), inbound=False)


class _NeverStartedAutoConnector(AutoConnector):
    """py-libp2p's auto-connector with ``start()`` doing nothing: it never dials."""

    async def start(self) -> None:
        return None


class _LabelmeshScorer(PeerScorer):
    """PeerScorer whose invalid-message penalty can be suppressed once (for IGNORE)."""

    def __init__(self, params: ScoreParams) -> None:
        super().__init__(params)
        # (peer, number of on_invalid_message calls to swallow); armed by
        # _LabelmeshPubsub.validate_msg right before it raises for an IGNORE.
        self.suppress: tuple[ID, int] | None = None

    def on_invalid_message(self, peer: ID, topic: str) -> None:
        if self.suppress is not None and self.suppress[0] == peer:
            remaining = self.suppress[1] - 1
            self.suppress = (peer, remaining) if remaining > 0 else None
            return
        super().on_invalid_message(peer, topic)


class _LabelmeshGossipSub(GossipSub):
    """GossipSub without py-libp2p's every-heartbeat opportunistic grafting (see module doc)."""

    def _perform_opportunistic_grafting(self, topic: str, peers_to_graft: Any) -> int:
        return 0


class _LabelmeshPubsub(Pubsub):
    """Pubsub with three-way validation and a direct hand-off of accepted messages."""

    def __init__(self, host: Any, router: _LabelmeshGossipSub, *, node: P2PNode, **kwargs: Any) -> None:
        super().__init__(host, router, **kwargs)
        self._lm_node = node
        self._lm_scorer: _LabelmeshScorer = router.scorer  # type: ignore[assignment]
        self._lm_forwarder: ID | None = None

    async def validate_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        outcome = await self._lm_node._validate_gossip(msg_forwarder, msg)
        # Nothing below may await: push_msg consumes the state set here
        # synchronously (notify_subscriptions on ACCEPT, the scorer on IGNORE).
        if outcome is GossipOutcome.ACCEPT:
            self._lm_forwarder = msg_forwarder
            return
        if outcome is GossipOutcome.IGNORE and msg.topicIDs:
            self._lm_scorer.suppress = (msg_forwarder, len(msg.topicIDs))
        raise ValidationError(outcome.value)

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        forwarder, self._lm_forwarder = self._lm_forwarder, None
        self._lm_node._on_gossip_accepted(publish_message, forwarder)

    async def _teardown_if_connected(self, peer_id: ID) -> None:
        """py-libp2p 0.8.1's version (run by ``add_to_blacklist``) does ``del
        self.peers[peer_id]`` after awaiting the stream reset; our offender ban
        disconnects the peer at the same time, ``_handle_dead_peer`` deletes the entry
        first, and the KeyError kills the pubsub service and with it the node (found
        by tests/test_attack_devnet.py). Same steps, tolerant of that race, and it
        also drops the peer's queue and router state, which the library leaks here."""
        stream = self.peers.get(peer_id)
        if stream is not None:
            try:
                await stream.reset()
            except Exception:
                pass
            if self.peers.pop(peer_id, None) is not None:
                queue = self.peer_queues.pop(peer_id, None)
                if queue is not None:
                    queue.close()
                self.router.remove_peer(peer_id)
        self._forget_all_subscriptions(peer_id)


class _NodeNotifee(INotifee):
    def __init__(self, node: P2PNode) -> None:
        self._node = node

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._node._on_connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._node._on_disconnected(conn.muxed_conn.peer_id)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


# ---------------------------------------------------------------------------
# Small helpers


class _TokenBucket:
    """Classic token bucket on the trio clock; ``take()`` waits for a token (FIFO)."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None
        self._lock = trio.Lock()

    async def _refill_and_wait(self) -> None:
        """Refill for the time passed; if less than one token is there, sleep until one is."""
        now = trio.current_time()
        if self._stamp is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            await trio.sleep((1.0 - self._tokens) / self._rate)
            self._tokens = 1.0
            self._stamp = trio.current_time()

    async def wait_available(self) -> None:
        """Wait until a token is there (without taking it)."""
        async with self._lock:
            await self._refill_and_wait()

    async def take(self) -> None:
        async with self._lock:
            await self._refill_and_wait()
            self._tokens -= 1.0


def _accepts_n_args(fn: Callable[..., Any], n: int) -> bool:
    """Whether ``fn`` can be called with ``n`` positional arguments."""
    try:
        inspect.signature(fn).bind(*range(n))
        return True
    except (TypeError, ValueError):
        return False


def _origin_of(msg: rpc_pb2.Message) -> str | None:
    """Base58 peer id of the message's publisher (``from``; authenticated by strict signing)."""
    try:
        return ID(msg.from_id).to_base58() if msg.from_id else None
    except Exception:
        return None


def _decayed(value: float, stamp: float, now: float, half_life: float) -> float:
    return value * 0.5 ** ((now - stamp) / half_life)


async def _read_frame(stream: INetStream, limit: int) -> bytes:
    """Read ``uvarint(len) || body`` with ``len <= limit``; reject before reading the body."""
    prefix = b""
    while True:
        byte = await stream.read(1)
        if not byte:
            raise StreamEOF("stream ended in a length prefix")
        prefix += byte
        if byte[0] & 0x80 == 0:
            break
        if len(prefix) >= 10:
            raise _FrameTooLarge("length prefix longer than 10 bytes")
    length = 0
    for shift, b in enumerate(prefix):
        length |= (b & 0x7F) << (7 * shift)
    if length > limit:
        raise _FrameTooLarge(f"frame of {length} bytes exceeds the limit of {limit}")
    body = bytearray()
    while len(body) < length:
        chunk = await stream.read(length - len(body))
        if not chunk:
            raise StreamEOF(f"stream ended after {len(body)} of {length} bytes")
        body += chunk
    return bytes(body)


def _frame(body: bytes) -> bytes:
    return encode_uvarint(len(body)) + body


async def _reset_quietly(stream: INetStream | None) -> None:
    if stream is None:
        return
    with trio.CancelScope(shield=True):
        with trio.move_on_after(1):
            try:
                await stream.reset()
            except Exception:
                logger.debug("stream reset failed", exc_info=True)


async def _close_quietly(stream: INetStream) -> None:
    with trio.CancelScope(shield=True):
        with trio.move_on_after(1):
            try:
                await stream.close()
            except Exception:
                logger.debug("stream close failed", exc_info=True)


# ---------------------------------------------------------------------------
# The node

GossipValidator = Callable[[str, bytes, str], "Awaitable[GossipOutcome] | GossipOutcome"]
MessageHandler = Callable[[str, bytes, str], Awaitable[None]]
PeerHandler = Callable[[str], Awaitable[None]]
RequestHandler = Callable[[str, bytes], Awaitable[bytes]]


class P2PNode:
    """One labelmesh peer on the libp2p network. See the module docstring.

    ``validator(topic, data, forwarder_peer_id)`` decides ACCEPT / REJECT /
    IGNORE for every gossip message from another peer (sync or async); a
    validator that takes a fourth argument also gets the publishing peer's id
    (libp2p ``from``, or None), which node/ratelimit.py uses to tell a flooding
    peer from its honest relayers.
    ``on_message(topic, data, forwarder_peer_id)`` is awaited for every
    accepted message originated by another peer, one at a time per topic, from
    the topic's drain task, in the order messages were accepted (which need not
    be the order they were published in). ``on_peer_connected(peer_id)`` is
    awaited, in its own task, when a peer goes from zero to one connection.
    Exceptions from these callbacks are logged, never propagated.
    """

    def __init__(
        self,
        config: P2PConfig,
        *,
        validator: GossipValidator,
        on_message: MessageHandler | None = None,
        on_peer_connected: PeerHandler | None = None,
    ) -> None:
        config.validate()
        _configure_libp2p_logging()
        _tune_libp2p_hot_paths()
        if libp2p.__version__ != PINNED_LIBP2P_VERSION:
            logger.warning(
                "py-libp2p %s is installed but node.p2p was written and verified against %s",
                libp2p.__version__,
                PINNED_LIBP2P_VERSION,
            )
        self.config = config
        self._validator = validator
        self._validator_takes_origin = _accepts_n_args(validator, 4)
        self._on_message = on_message
        self._on_peer_connected = on_peer_connected
        self._key_pair = create_identity_from_seed(config.seed)
        self._id = ID.from_pubkey(self._key_pair.public_key)
        self.peer_id: str = self._id.to_base58()

        self._host: Any = None
        self._pubsub: _LabelmeshPubsub | None = None
        self._router: _LabelmeshGossipSub | None = None
        self._nursery: trio.Nursery | None = None
        self._started = False
        self._stopped = False

        self._topics: dict[str, None] = {}  # insertion-ordered set of wanted topics
        self._deliveries: dict[str, trio.MemorySendChannel[tuple[str, bytes, str]]] = {}
        self._handlers: dict[str, RequestHandler] = {}

        self._connected: set[str] = set()
        self._pending_connected: list[str] = []  # peers that connected before our nursery opened
        self._peers_changed = trio.Event()
        self._rejects: dict[str, tuple[float, float]] = {}  # peer -> (decayed count, stamp)
        self._banned: dict[str, float] = {}  # peer -> banned until (trio clock)
        self._rejected_ids: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._validating: set[bytes] = set()  # ids of messages whose validation is in flight
        self._congested: set[ID] = set()

        self._bucket = _TokenBucket(config.publish_rate_per_s, config.publish_burst)
        self._validation_limiter = trio.CapacityLimiter(config.max_concurrent_validations)
        self._inbound_limiter = trio.CapacityLimiter(config.max_inbound_requests)
        self._counters: collections.Counter[str] = collections.Counter()

    # -- lifecycle -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial bootstrap peers, serve until cancelled, then tear down.

        For ``nursery.start(node.run)``: ``started()`` is called once listening.
        A node runs at most once. Raises :class:`P2PError` if a listen address
        cannot be bound.
        """
        if self._started:
            raise P2PError("P2PNode.run() may be called only once")
        self._started = True
        cfg = self.config
        for addr in cfg.listen:
            _ensure_port_free(addr)
        host = self._build_host()
        self._host = host
        router = self._build_router()
        # Pubsub registers its connection notifee and stream handlers in its
        # constructor: it must exist before we listen or dial, or early peers
        # never get a pubsub stream from us.
        pubsub = _LabelmeshPubsub(host, router, node=self, seen_ttl=cfg.seen_ttl_s, strict_signing=True)
        try:
            async with background_trio_service(pubsub), background_trio_service(router):
                await pubsub.wait_until_ready()
                async with host.run([multiaddr.Multiaddr(a) for a in cfg.listen]):
                    bound = host.get_transport_addrs()
                    if len(bound) < len(cfg.listen):
                        raise P2PError(f"could not listen on all of {list(cfg.listen)} (bound: {bound})")
                    async with trio.open_nursery() as nursery:
                        self._router, self._pubsub, self._nursery = router, pubsub, nursery
                        for peer in self._pending_connected:
                            nursery.start_soon(self._call_peer_connected, peer)
                        self._pending_connected.clear()
                        for topic in list(self._topics):
                            await self._start_subscription(topic)
                        for addr in cfg.bootstrap:
                            nursery.start_soon(self._bootstrap_loop, addr)
                        logger.info("p2p node %s listening on %s", self.peer_id, self.listen_addrs())
                        task_status.started()
                        await trio.sleep_forever()
        finally:
            self._stopped = True
            self._nursery = None
            for channel in self._deliveries.values():
                channel.close()
            # Joins py-libp2p's sweeper thread (it wakes immediately on stop).
            pubsub.seen_messages.stop()
            logger.info("p2p node %s stopped", self.peer_id)

    def _build_host(self) -> Any:
        cfg = self.config
        noise = _GatedNoiseTransport(
            self._key_pair,
            noise_privkey=_create_x25519_key_pair().private_key,
            is_refused=lambda peer: self._ban_remaining(peer.to_base58()) > 0,
            is_full=self._is_full,
        )
        host = new_host(
            key_pair=self._key_pair,
            sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            transports=[TCP()],
            listen_addrs=[multiaddr.Multiaddr(a) for a in cfg.listen],
            announce_addrs=[multiaddr.Multiaddr(a) for a in cfg.announce] or None,
            connection_config=ConnectionConfig(dial_timeout=cfg.dial_timeout_s),
        )
        swarm = host.get_network()
        swarm.auto_connector = _NeverStartedAutoConnector(swarm)
        swarm.retry_config = RetryConfig(max_retries=1, initial_delay=0.2, max_delay=1.0)
        swarm.register_notifee(_NodeNotifee(self))
        for protocol_id in self._handlers:
            host.set_stream_handler(TProtocol(protocol_id), self._make_stream_handler(protocol_id))
        return host

    def _build_router(self) -> _LabelmeshGossipSub:
        cfg = self.config
        decay = 0.5 ** (cfg.heartbeat_interval_s / cfg.invalid_message_half_life_s)
        params = ScoreParams(
            p4_invalid_messages=TopicScoreParams(
                weight=cfg.invalid_message_weight, cap=cfg.invalid_message_cap, decay=decay
            ),
            p7_ip_colocation_weight=0.0,
            gossip_threshold=cfg.gossip_threshold,
            publish_threshold=cfg.publish_threshold,
            graylist_threshold=cfg.graylist_threshold,
            accept_px_threshold=cfg.accept_px_threshold,
        )
        router = _LabelmeshGossipSub(
            protocols=[TProtocol(p) for p in GOSSIPSUB_PROTOCOLS],
            degree=cfg.gossip_degree,
            degree_low=cfg.gossip_degree_low,
            degree_high=cfg.gossip_degree_high,
            time_to_live=cfg.fanout_ttl_s,
            gossip_window=cfg.gossip_window,
            gossip_history=cfg.gossip_history,
            heartbeat_initial_delay=min(0.1, cfg.heartbeat_interval_s),
            heartbeat_interval=cfg.heartbeat_interval_s,  # type: ignore[arg-type]  # typed int, used as trio.sleep()
            do_px=False,
            prune_back_off=cfg.prune_backoff_s,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,
        )
        router.scorer = _LabelmeshScorer(params)
        return router

    def _require_running(self) -> tuple[Any, _LabelmeshPubsub, trio.Nursery]:
        if self._pubsub is None or self._nursery is None or self._stopped:
            raise P2PError("the p2p node is not running")
        return self._host, self._pubsub, self._nursery

    # -- addresses and peers -------------------------------------------------

    @property
    def max_payload_bytes(self) -> int:
        """Largest gossip payload ``publish`` accepts (``max_message_bytes``)."""
        return self.config.max_message_bytes

    def listen_addrs(self) -> list[str]:
        """Dialable multiaddrs of this node including ``/p2p/<id>`` (real ports once running)."""
        if self.config.announce:
            base = list(self.config.announce)
        elif self._host is not None:
            base = [str(a) for a in self._host.get_transport_addrs()]
        else:
            base = list(self.config.listen)
        return [f"{a}/p2p/{self.peer_id}" for a in base]

    def peers(self) -> list[dict[str, Any]]:
        """Connected peers: ``peer_id``, ``addrs`` (remote transport addrs), ``direction``,
        ``security``, ``muxer``, ``topics`` (their subscriptions), ``score``."""
        if self._host is None or self._stopped:
            return []
        swarm = self._host.get_network()
        pubsub = self._pubsub
        out = []
        for pid, conns in list(swarm.connections.items()):
            if not conns:
                continue
            addrs: list[str] = []
            for conn in conns:
                addrs.extend(str(a) for a in conn.get_transport_addresses())
            first = conns[0]
            topics = (
                sorted(t for t, members in pubsub.peer_topics.items() if pid in members) if pubsub else []
            )
            out.append(
                {
                    "peer_id": pid.to_base58(),
                    "addrs": sorted(set(addrs)),
                    "direction": str(first.direction),  # "inbound" / "outbound" / "unknown"
                    "security": first.get_negotiated_security_protocol(),
                    "muxer": first.get_negotiated_muxer_protocol(),
                    "topics": topics,
                    "score": self._score(pid),
                }
            )
        return out

    def mesh_peers(self, topic: str) -> list[str]:
        """Peers in our GossipSub mesh for ``topic`` (empty if not joined)."""
        if self._router is None:
            return []
        return sorted(p.to_base58() for p in self._router.mesh.get(topic, ()))

    def peer_score(self, peer_id: str) -> float:
        """py-libp2p's current score of a connected peer over our topics (0.0 if unknown)."""
        return self._score(ID.from_base58(peer_id))

    def is_banned(self, peer_id: str) -> bool:
        """True while ``peer_id`` is refused as a repeat offender."""
        return self._ban_remaining(peer_id) > 0

    def stats(self) -> dict[str, int]:
        """Monotonic counters (gossip delivered/dropped/rejected/ignored, publishes, requests, bans)."""
        return dict(self._counters)

    def _score(self, pid: ID) -> float:
        if self._router is None or self._router.scorer is None:
            return 0.0
        return float(self._router.scorer.score(pid, list(self._topics)))

    async def connect(self, multiaddr_str: str) -> str:
        """Dial a full multiaddr (with ``/p2p/<id>``); return the peer id. Raises :class:`P2PError`."""
        host, _, _ = self._require_running()
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(multiaddr_str))
        except Exception as exc:
            raise P2PError(f"not a dialable multiaddr with /p2p/<id>: {multiaddr_str!r} ({exc})") from None
        pid = info.peer_id.to_base58()
        if pid == self.peer_id:
            raise P2PError("refusing to dial ourselves")
        if self.is_banned(pid):
            raise P2PError(f"peer {pid} is banned for another {self._ban_remaining(pid):.0f} s")
        try:
            with trio.fail_after(self.config.dial_timeout_s):
                await host.connect(info)
        except trio.TooSlowError:
            raise P2PTimeoutError(f"dialing {multiaddr_str} timed out after {self.config.dial_timeout_s} s") from None
        except Exception as exc:
            raise P2PError(f"could not connect to {multiaddr_str}: {exc}") from exc
        return pid

    async def disconnect(self, peer_id: str) -> None:
        """Close all connections to ``peer_id`` (a bootstrap peer will be redialed after backoff)."""
        host, _, _ = self._require_running()
        try:
            await host.disconnect(ID.from_base58(peer_id))
        except Exception as exc:
            raise P2PError(f"could not disconnect {peer_id}: {exc}") from exc

    async def wait_for_peers(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` peers are connected; False if ``timeout`` s pass first."""
        with trio.move_on_after(timeout):
            while True:
                changed = self._peers_changed
                if len(self._connected) >= n:
                    return True
                await changed.wait()
        return False

    async def wait_for_mesh(self, topic: str, n: int, timeout: float) -> bool:
        """Wait until our mesh for ``topic`` has at least ``n`` peers; False on timeout.

        Polls every ~20 ms (py-libp2p has no mesh-change notification for "n peers").
        """
        with trio.move_on_after(timeout):
            while len(self.mesh_peers(topic)) < n:
                await trio.sleep(0.02)
            return True
        return False

    def _is_full(self, pid: ID) -> bool:
        """Whether an inbound connection from ``pid`` must be refused: max_peers other
        peers are connected already (counted in ``inbound_refused_full``)."""
        full = pid.to_base58() not in self._connected and len(self._connected) >= self.config.max_peers
        if full:
            self._counters["inbound_refused_full"] += 1
        return full

    def _on_connected(self, pid: ID) -> None:
        peer = pid.to_base58()
        if peer in self._connected:
            return
        self._connected.add(peer)
        self._signal_peers_changed()
        logger.debug("peer connected: %s", peer)
        if self._on_peer_connected is None:
            return
        if self._nursery is None:
            self._pending_connected.append(peer)
        else:
            self._nursery.start_soon(self._call_peer_connected, peer)

    def _on_disconnected(self, pid: ID) -> None:
        if self._host is not None and self._host.get_network().get_connections(pid):
            return
        peer = pid.to_base58()
        if peer in self._connected:
            self._connected.discard(peer)
            self._congested.discard(pid)
            self._signal_peers_changed()
            logger.debug("peer disconnected: %s", peer)

    def _signal_peers_changed(self) -> None:
        self._peers_changed.set()
        self._peers_changed = trio.Event()

    async def _call_peer_connected(self, peer: str) -> None:
        assert self._on_peer_connected is not None
        try:
            await self._on_peer_connected(peer)
        except Exception:
            logger.exception("on_peer_connected(%s) failed", peer)

    async def _bootstrap_loop(self, addr: str) -> None:
        """Keep one bootstrap peer connected: dial, wait for a drop, redial with backoff."""
        cfg = self.config
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        peer = info.peer_id.to_base58()
        if peer == self.peer_id:
            return
        host = self._host
        backoff = cfg.redial_backoff_min_s
        failures = 0
        while True:
            if peer in self._connected:
                while peer in self._connected:
                    changed = self._peers_changed
                    if peer not in self._connected:
                        break
                    await changed.wait()
                logger.info("bootstrap peer %s disconnected; will redial", peer)
                backoff = cfg.redial_backoff_min_s
                await trio.sleep(backoff * random.uniform(0.5, 1.0))
                continue
            banned_for = self._ban_remaining(peer)
            if banned_for > 0:
                await trio.sleep(banned_for)
                continue
            try:
                with trio.fail_after(cfg.dial_timeout_s):
                    await host.connect(info)
            except Exception as exc:  # TooSlowError and py-libp2p's many dial errors
                failures += 1
                self._counters["bootstrap_dial_failures"] += 1
                log = logger.warning if failures == 1 else logger.debug
                log("cannot reach bootstrap peer %s (attempt %d, retry in %.1f s): %s", addr, failures, backoff, exc)
                await trio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, cfg.redial_backoff_max_s)
                continue
            if failures:
                logger.info("connected to bootstrap peer %s after %d failed attempts", addr, failures)
            failures = 0
            backoff = cfg.redial_backoff_min_s
            # host.connect() returns once the connection is registered; if the
            # notifee has not run yet, give it a moment rather than redialing.
            with trio.move_on_after(1):
                while peer not in self._connected:
                    changed = self._peers_changed
                    if peer in self._connected:
                        break
                    await changed.wait()

    # -- offenders -----------------------------------------------------------

    def _ban_remaining(self, peer: str) -> float:
        until = self._banned.get(peer)
        if until is None:
            return 0.0
        remaining = until - trio.current_time()
        if remaining > 0:
            return remaining
        del self._banned[peer]
        if self._pubsub is not None:
            self._pubsub.remove_from_blacklist(ID.from_base58(peer))
        logger.info("ban of peer %s expired", peer)
        return 0.0

    def _record_reject(self, pid: ID) -> None:
        cfg = self.config
        peer = pid.to_base58()
        now = trio.current_time()
        count, stamp = self._rejects.get(peer, (0.0, now))
        count = _decayed(count, stamp, now, cfg.invalid_message_half_life_s) + 1.0
        self._rejects[peer] = (count, now)
        if len(self._rejects) > 10_000:  # forget peers whose counter has decayed away
            half_life = cfg.invalid_message_half_life_s
            for other, (value, seen) in list(self._rejects.items()):
                if _decayed(value, seen, now, half_life) < 0.01:
                    del self._rejects[other]
        # Tolerance: N REJECTs a few seconds apart decay to slightly under N.
        if count < cfg.offender_reject_threshold - _DECAY_TOLERANCE or self._ban_remaining(peer) > 0:
            return
        self._banned[peer] = now + cfg.offender_ban_s
        self._rejects.pop(peer, None)
        self._counters["offenders_banned"] += 1
        logger.warning(
            "banning peer %s for %.0f s: %.1f invalid messages (threshold %.1f)",
            peer,
            cfg.offender_ban_s,
            count,
            cfg.offender_reject_threshold,
        )
        if self._pubsub is not None:
            self._pubsub.add_to_blacklist(pid)
        if self._nursery is not None:
            self._nursery.start_soon(self._disconnect_offender, pid)

    async def _disconnect_offender(self, pid: ID) -> None:
        try:
            with trio.fail_after(5):
                await self._host.disconnect(pid)
        except Exception:
            logger.debug("disconnecting offender %s failed", pid, exc_info=True)

    # -- gossip --------------------------------------------------------------

    def subscribe(self, topic: str) -> None:
        """Join ``topic`` (now if running, else when ``run()`` starts). Idempotent."""
        if not topic:
            raise P2PError("topic must be a non-empty string")
        if topic in self._topics:
            return
        self._topics[topic] = None
        if self._nursery is not None and not self._stopped:
            self._nursery.start_soon(self._start_subscription, topic)

    async def _start_subscription(self, topic: str) -> None:
        """Open the topic's delivery channel and drain task, then join the topic."""
        if self._pubsub is None or self._nursery is None or self._stopped:
            return
        if self._on_message is not None and topic not in self._deliveries:
            send, receive = trio.open_memory_channel[tuple[str, bytes, str]](self.config.delivery_queue_size)
            self._deliveries[topic] = send
            self._nursery.start_soon(self._drain, topic, receive)
        try:
            await self._pubsub.subscribe(topic)
        except Exception:
            logger.exception("joining gossip topic %s failed", topic)

    async def _drain(self, topic: str, receive: trio.MemoryReceiveChannel[tuple[str, bytes, str]]) -> None:
        assert self._on_message is not None
        async with receive:
            async for msg_topic, data, forwarder in receive:
                try:
                    await self._on_message(msg_topic, data, forwarder)
                except Exception:
                    logger.exception("on_message failed for a message on %s", topic)

    def _on_gossip_accepted(self, msg: rpc_pb2.Message, forwarder: ID | None) -> None:
        """Called synchronously by py-libp2p (via notify_subscriptions) for each accepted message."""
        if ID(msg.from_id) == self._id:
            return  # our own publish
        self._counters["gossip_accepted"] += 1
        for topic in msg.topicIDs:
            channel = self._deliveries.get(topic)
            if channel is None:
                continue
            try:
                channel.send_nowait((topic, bytes(msg.data), forwarder.to_base58() if forwarder else ""))
            except trio.WouldBlock:
                self._counters["gossip_delivery_dropped"] += 1
                if self._counters["gossip_delivery_dropped"] % 1000 == 1:
                    logger.warning(
                        "on_message is too slow for %s: %d accepted messages dropped so far (sync repairs)",
                        topic,
                        self._counters["gossip_delivery_dropped"],
                    )
            except trio.ClosedResourceError:
                pass

    async def _validate_gossip(self, forwarder: ID, msg: rpc_pb2.Message) -> GossipOutcome:
        """Three-way validation of one message (called by _LabelmeshPubsub.validate_msg)."""
        if forwarder == self._id:
            return GossipOutcome.ACCEPT  # our own publish: the caller validated it
        msg_id = msg.from_id + msg.seqno
        if msg_id in self._validating:
            # Another copy is being validated right now (py-libp2p marks a
            # message seen only after validation): a duplicate, so IGNORE.
            self._counters["gossip_duplicates"] += 1
            return GossipOutcome.IGNORE
        self._validating.add(msg_id)
        try:
            outcome = await self._run_validator(forwarder, msg)
        finally:
            self._validating.discard(msg_id)
        if outcome is GossipOutcome.REJECT:
            self._counters["gossip_rejected"] += 1
            self._remember_rejected(msg_id)
            self._record_reject(forwarder)
        elif outcome is GossipOutcome.IGNORE:
            self._counters["gossip_ignored"] += 1
        return outcome

    async def _run_validator(self, forwarder: ID, msg: rpc_pb2.Message) -> GossipOutcome:
        if len(msg.topicIDs) != 1:
            return GossipOutcome.REJECT
        if ID(msg.from_id) == self._id or self._ban_remaining(forwarder.to_base58()) > 0:
            return GossipOutcome.IGNORE  # an echo of our own message / in flight from a banned peer
        if self._is_rejected(msg.from_id + msg.seqno):
            return GossipOutcome.REJECT
        topic = msg.topicIDs[0]
        result: Any = GossipOutcome.IGNORE
        with trio.move_on_after(self.config.validation_timeout_s) as scope:
            async with self._validation_limiter:
                try:
                    args: tuple = (topic, bytes(msg.data), forwarder.to_base58())
                    if self._validator_takes_origin:
                        args += (_origin_of(msg),)
                    result = self._validator(*args)
                    if inspect.isawaitable(result):
                        result = await result
                except Exception:
                    logger.exception("gossip validator failed on %s; treating the message as IGNORE", topic)
                    return GossipOutcome.IGNORE
        if scope.cancelled_caught:
            logger.debug("gossip validator timed out on %s; IGNORE", topic)
            return GossipOutcome.IGNORE
        if not isinstance(result, GossipOutcome):
            logger.error("gossip validator returned %r, not a GossipOutcome; treating as IGNORE", result)
            return GossipOutcome.IGNORE
        return result

    def _remember_rejected(self, msg_id: bytes) -> None:
        now = trio.current_time()
        self._rejected_ids[msg_id] = now + self.config.seen_ttl_s
        self._rejected_ids.move_to_end(msg_id)
        while self._rejected_ids:
            oldest_id, expiry = next(iter(self._rejected_ids.items()))
            if expiry > now and len(self._rejected_ids) <= 10_000:
                break
            del self._rejected_ids[oldest_id]

    def _is_rejected(self, msg_id: bytes) -> bool:
        expiry = self._rejected_ids.get(msg_id)
        return expiry is not None and expiry > trio.current_time()

    async def publish(self, topic: str, data: bytes) -> None:
        """Sign and gossip ``data`` on ``topic``, paced by the token bucket.

        Also waits (up to ``publish_queue_wait_s``) for room in the outbound
        queue of every peer the message will be sent to; a peer still full after
        that is marked congested and not waited for again until its queue drains
        to half. Raises :class:`P2PError` if not running or ``data`` is too large.
        """
        _, pubsub, _ = self._require_running()
        if len(data) > self.config.max_message_bytes:
            raise P2PError(
                f"gossip message of {len(data)} bytes exceeds max_message_bytes={self.config.max_message_bytes}"
            )
        await self._bucket.take()
        await self._await_queue_room(topic)
        _, pubsub, _ = self._require_running()
        await pubsub.publish(topic, bytes(data))
        self._counters["published"] += 1

    async def wait_publish_slot(self) -> None:
        """Wait until ``publish`` could send at once (a token in the pacing bucket). A
        publisher that gathers what to send *after* this wait sends the freshest data
        (node/daemon.py bundles everything queued meanwhile)."""
        await self._bucket.wait_available()

    def _publish_targets(self, topic: str) -> set[ID]:
        router, pubsub = self._router, self._pubsub
        if router is None or pubsub is None:
            return set()
        targets = set(router.mesh.get(topic, ())) | set(router.fanout.get(topic, ()))
        if not targets:
            targets = set(pubsub.peer_topics.get(topic, ()))
        return {p for p in targets if p in pubsub.peer_queues}

    async def _await_queue_room(self, topic: str) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        deadline = trio.current_time() + self.config.publish_queue_wait_s
        while True:
            full = []
            for pid in self._publish_targets(topic):
                queue = pubsub.peer_queues.get(pid)
                if queue is None:
                    continue
                size = getattr(getattr(queue, "_queue", None), "max_size", _PEER_QUEUE_SIZE)
                if pid in self._congested:
                    if len(queue) <= size // 2:
                        self._congested.discard(pid)
                        logger.info("peer %s drained its gossip queue", pid)
                    continue
                if len(queue) >= size - _PEER_QUEUE_HEADROOM:
                    full.append(pid)
            if not full:
                return
            if trio.current_time() >= deadline:
                for pid in full:
                    self._congested.add(pid)
                    self._counters["publish_peer_congested"] += 1
                    logger.warning("peer %s is not draining its gossip queue; it may miss messages (sync repairs)", pid)
                return
            await trio.sleep(0.002)

    # -- request/response ----------------------------------------------------

    def set_request_handler(self, protocol_id: str, handler: RequestHandler) -> None:
        """Serve ``protocol_id``: ``handler(peer_id, request) -> response`` (before or after run())."""
        if not protocol_id.startswith("/"):
            raise P2PError(f"protocol id must start with '/': {protocol_id!r}")
        self._handlers[protocol_id] = handler
        if self._host is not None:
            self._host.set_stream_handler(TProtocol(protocol_id), self._make_stream_handler(protocol_id))

    def _make_stream_handler(self, protocol_id: str) -> Callable[[INetStream], Awaitable[None]]:
        async def handle(stream: INetStream) -> None:
            await self._serve_request(protocol_id, stream)

        return handle

    async def _serve_request(self, protocol_id: str, stream: INetStream) -> None:
        cfg = self.config
        peer = stream.muxed_conn.peer_id.to_base58()
        handler = self._handlers.get(protocol_id)
        if handler is None:
            await _reset_quietly(stream)
            return
        try:
            with trio.fail_after(cfg.request_timeout_s):
                async with self._inbound_limiter:
                    request = await _read_frame(stream, cfg.max_request_bytes)
                    try:
                        response = bytes(await handler(peer, request))
                        if len(response) > cfg.max_response_bytes:
                            raise P2PError(f"response of {len(response)} bytes exceeds max_response_bytes")
                        body = bytes([_STATUS_OK]) + response
                    except Exception as exc:
                        self._counters["requests_failed"] += 1
                        if isinstance(exc, LabelmeshError):
                            logger.warning("request handler %s refused a request from %s: %s", protocol_id, peer, exc)
                            reason = str(exc)
                        else:
                            logger.exception("request handler %s failed on a request from %s", protocol_id, peer)
                            reason = "internal error"
                        body = bytes([_STATUS_ERROR]) + reason.encode("utf-8", "replace")[:_MAX_ERROR_REASON_BYTES]
                    await stream.write(_frame(body))
        except _FrameTooLarge as exc:
            self._counters["requests_oversized"] += 1
            logger.info("refused an oversized %s request from %s: %s", protocol_id, peer, exc)
            await _reset_quietly(stream)
        except trio.TooSlowError:
            logger.info("gave up serving a %s request from %s after %.1f s", protocol_id, peer, cfg.request_timeout_s)
            await _reset_quietly(stream)
        except Exception as exc:  # the stream broke (EOF, reset, connection closed)
            logger.debug("serving a %s request from %s failed: %r", protocol_id, peer, exc)
            await _reset_quietly(stream)
        else:
            self._counters["requests_served"] += 1
            await _close_quietly(stream)

    async def request(self, peer_id: str, protocol_id: str, data: bytes, *, timeout: float | None = None) -> bytes:
        """Send one request on a new stream and return the response body.

        Dials the peer if needed (known addresses only). Raises
        :class:`P2PTimeoutError` after ``timeout`` (default ``request_timeout_s``),
        :class:`P2PRemoteError` if the remote handler failed, and
        :class:`P2PError` on oversize, EOF, reset or an unsupported protocol.
        """
        host, _, _ = self._require_running()
        cfg = self.config
        if len(data) > cfg.max_request_bytes:
            raise P2PError(f"request of {len(data)} bytes exceeds max_request_bytes={cfg.max_request_bytes}")
        limit = cfg.request_timeout_s if timeout is None else timeout
        try:
            pid = ID.from_base58(peer_id)
        except Exception:
            raise P2PError(f"not a peer id: {peer_id!r}") from None
        stream: INetStream | None = None
        try:
            with trio.fail_after(limit):
                stream = await host.new_stream(pid, [TProtocol(protocol_id)])
                await stream.write(_frame(bytes(data)))
                frame = await _read_frame(stream, cfg.max_response_bytes + 1)
        except trio.TooSlowError:
            await _reset_quietly(stream)
            raise P2PTimeoutError(f"{protocol_id} request to {peer_id} timed out after {limit} s") from None
        except _FrameTooLarge as exc:
            await _reset_quietly(stream)
            raise P2PError(f"{protocol_id} response from {peer_id} too large: {exc}") from None
        except Exception as exc:
            await _reset_quietly(stream)
            raise P2PError(f"{protocol_id} request to {peer_id} failed: {type(exc).__name__}: {exc}") from exc
        await _close_quietly(stream)
        if not frame:
            raise P2PError(f"{protocol_id} response from {peer_id} is empty")
        if frame[0] == _STATUS_OK:
            return frame[1:]
        if frame[0] == _STATUS_ERROR:
            reason = frame[1:].decode("utf-8", "replace")
            raise P2PRemoteError(f"{protocol_id} request to {peer_id} failed remotely: {reason}")
        raise P2PError(f"{protocol_id} response from {peer_id} has unknown status {frame[0]}")


__all__ = [
    "GOSSIPSUB_PROTOCOLS",
    "GossipOutcome",
    "LabelmeshError",
    "P2PConfig",
    "P2PConfigError",
    "P2PError",
    "P2PNode",
    "P2PRemoteError",
    "P2PTimeoutError",
]

"""P2PNode: one labelmesh peer on the libp2p network (see the package docstring,
node/net/__init__.py, for how it works and what it overrides in py-libp2p)."""
from __future__ import annotations

import collections
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import libp2p
import multiaddr
import trio
from google.protobuf.message import DecodeError
from libp2p import new_host
from libp2p.abc import INetStream
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import ParseError
from libp2p.identity_utils import create_identity_from_seed
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.protocol_muxer.exceptions import MultiselectClientError
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.score import ScoreParams, TopicScoreParams
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID, Yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.tcp.tcp import TCP

from protocol.errors import LabelmeshError

from ..policy.penalties import PenaltyPolicy, PenaltyRecord
from ..policy.tokens import TokenBucket
from .config import (
    GOSSIPSUB_PROTOCOLS, PEER_QUEUE_HEADROOM, PEER_QUEUE_SIZE, PINNED_LIBP2P_VERSION, GossipOutcome, P2PConfig,
    ensure_port_free,
)
from .errors import P2PError, P2PRemoteError, P2PTimeoutError
from .framing import (
    MAX_ERROR_REASON_BYTES, STATUS_ERROR, STATUS_OK, FrameTooLarge, close_quietly, encode_frame, read_frame, reset_quietly,
)
from .patches import configure_libp2p_logging, fix_libp2p_partial_reads, tune_libp2p_hot_paths
from .router import (
    GatedNoiseTransport, LabelmeshGossipSub, LabelmeshPubsub, LabelmeshScorer, NeverStartedAutoConnector, NodeNotifee,
)

logger = logging.getLogger("node.p2p")


class _PublishPacer:
    """Paces our publishes with a token bucket on the trio clock: ``take()`` waits for a
    token (FIFO)."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._bucket = TokenBucket(rate_per_s, burst)
        self._lock = trio.Lock()

    async def _wait_for_token(self) -> None:
        """Refill for the time passed; if less than one token is there, sleep until one is."""
        delay = self._bucket.seconds_until(trio.current_time())
        if delay > 0:
            await trio.sleep(delay)
            self._bucket.refill(trio.current_time())

    async def wait_available(self) -> None:
        """Wait until a token is there (without taking it)."""
        async with self._lock:
            await self._wait_for_token()

    async def take(self) -> None:
        async with self._lock:
            await self._wait_for_token()
            self._bucket.tokens -= 1.0


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


GossipValidator = Callable[[str, bytes, str], "Awaitable[GossipOutcome] | GossipOutcome"]
MessageHandler = Callable[[str, bytes, str], Awaitable[None]]
PeerHandler = Callable[[str], Awaitable[None]]
RequestHandler = Callable[[str, bytes], Awaitable[bytes]]



def negotiation_timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is py-libp2p's protocol negotiation timing out --
    the peer did not answer at all, unlike a refusal ("protocols not supported")."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, MultiselectClientError) and "timed out" in str(exc):
            return True
        exc, seen = exc.__cause__, seen + 1
    return False

class P2PNode:
    """One labelmesh peer on the libp2p network. See the module docstring.

    ``validator(topic, data, forwarder_peer_id)`` decides ACCEPT / REJECT /
    IGNORE for every gossip message from another peer (sync or async); a
    validator that takes a fourth argument also gets the publishing peer's id
    (libp2p ``from``, or None), which node/policy/ratelimit.py uses to tell a flooding
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
        configure_libp2p_logging()
        tune_libp2p_hot_paths()
        fix_libp2p_partial_reads()
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
        self._pubsub: LabelmeshPubsub | None = None
        self._router: LabelmeshGossipSub | None = None
        self._nursery: trio.Nursery | None = None
        self._started = False
        self._stopped = False

        self._topics: dict[str, None] = {}  # insertion-ordered set of wanted topics
        self._deliveries: dict[str, trio.MemorySendChannel[tuple[str, bytes, str]]] = {}
        self._handlers: dict[str, RequestHandler] = {}

        self._connected: set[str] = set()
        self._pending_connected: list[str] = []  # peers that connected before our nursery opened
        self._peers_changed = trio.Event()
        # Set (and replaced) whenever a peer connects, in either direction: a sign of life of
        # the network that wakes the bootstrap redials waiting out a backoff (_bootstrap_loop).
        self._sign_of_life = trio.Event()
        # the node's one penalty policy (node/policy/penalties.py): a decayed REJECT count per peer
        self._penalties = PenaltyPolicy(config.offender_reject_threshold, config.offender_ban_s,
                                        config.invalid_message_half_life_s)
        self._offenders: dict[str, PenaltyRecord] = {}  # peer -> REJECT count and ban (trio clock)
        self._rejected_ids: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._validating: set[bytes] = set()  # ids of messages whose validation is in flight
        self._congested: set[ID] = set()

        self._bucket = _PublishPacer(config.publish_rate_per_s, config.publish_burst)
        self._validation_limiter = trio.CapacityLimiter(config.max_concurrent_validations)
        self._inbound_limiter = trio.CapacityLimiter(config.max_inbound_requests)
        # the counters of a peer stream gone wrong are shown from 0 (node_info, metrics), so a
        # check of them cannot pass on a missing key
        self._counters: collections.Counter[str] = collections.Counter(pubsub_rpcs_malformed=0, stream_errors=0)

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
            ensure_port_free(addr)
        host = self._build_host()
        self._host = host
        router = self._build_router()
        # Pubsub registers its connection notifee and stream handlers in its
        # constructor: it must exist before we listen or dial, or early peers
        # never get a pubsub stream from us.
        pubsub = LabelmeshPubsub(host, router, node=self, seen_ttl=cfg.seen_ttl_s, strict_signing=True)
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
        noise = GatedNoiseTransport(
            self._key_pair,
            noise_privkey=create_x25519_key_pair().private_key,
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
        swarm.auto_connector = NeverStartedAutoConnector(swarm)
        swarm.retry_config = RetryConfig(max_retries=1, initial_delay=0.2, max_delay=1.0)
        swarm.register_notifee(NodeNotifee(self))
        swarm.set_stream_handler(self._guarded_stream_handler(swarm.common_stream_handler))
        for protocol_id in self._handlers:
            host.set_stream_handler(TProtocol(protocol_id), self._make_stream_handler(protocol_id))
        return host

    def _build_router(self) -> LabelmeshGossipSub:
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
        router = LabelmeshGossipSub(
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
        router.scorer = LabelmeshScorer(params)
        return router

    def _require_running(self) -> tuple[Any, LabelmeshPubsub, trio.Nursery]:
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

    async def on_request_failed(self, peer_id: str, error: BaseException) -> None:
        """A request to ``peer_id`` failed with ``error``. If it got no answer at all in time
        (P2PTimeoutError), the link looks dead -- a partition hangs TCP connections without
        closing them --: close it, so a bootstrap peer is redialed at once on a fresh
        connection (and any other peer redials us). Other failures (the peer refused, does
        not serve the protocol, reset the stream) say the link works: nothing is done. No-op
        if the peer is not connected."""
        if not isinstance(error, P2PTimeoutError) or peer_id not in self._connected or self._host is None:
            return
        self._counters["redials_after_failed_request"] += 1
        logger.info("link to %s looks dead (a request failed): reconnecting", peer_id)
        try:
            await self.disconnect(peer_id)
        except P2PError as exc:
            logger.debug("closing the link to %s failed: %s", peer_id, exc)

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

    def note_connected(self, pid: ID) -> None:
        peer = pid.to_base58()
        if peer in self._connected:
            return
        self._connected.add(peer)
        self._signal_peers_changed()
        self._sign_of_life.set()
        self._sign_of_life = trio.Event()
        logger.debug("peer connected: %s", peer)
        if self._on_peer_connected is None:
            return
        if self._nursery is None:
            self._pending_connected.append(peer)
        else:
            self._nursery.start_soon(self._call_peer_connected, peer)

    def note_disconnected(self, pid: ID) -> None:
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
        """Keep one bootstrap peer connected: dial, wait for a drop, redial with backoff.

        The backoff (doubling from ``redial_backoff_min_s`` up to ``redial_backoff_max_s``
        while dials fail) ends early on any sign of life: when any peer connects to us or
        we to it, every bootstrap redial waiting out a backoff dials again at once (after a
        short jitter), its backoff back at the minimum. After a partition heals, the first
        link that comes back (from either side) thus brings back all the others within
        about a second, instead of each waiting out a backoff grown while the network was
        cut (measured: ``reconnect_s_after_heal`` in BENCHMARKS.md)."""
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
            life = self._sign_of_life  # a connection made while we dial counts too
            # py-libp2p refuses for 60 s any dial to a peer that failed once (its negative
            # cache, see the package docstring); our backoff decides when to try again
            negative_cache = getattr(host.get_network(), "_negative_peer_cache", None)
            if negative_cache is not None:
                negative_cache.evict(peer)
            try:
                with trio.fail_after(cfg.dial_timeout_s):
                    await host.connect(info)
            except Exception as exc:  # TooSlowError and py-libp2p's many dial errors
                failures += 1
                self._counters["bootstrap_dial_failures"] += 1
                log = logger.warning if failures == 1 else logger.debug
                log("cannot reach bootstrap peer %s (attempt %d, retry in %.1f s): %s", addr, failures, backoff, exc)
                with trio.move_on_after(backoff * random.uniform(0.8, 1.2)):
                    await life.wait()
                if life.is_set():  # the network shows signs of life: try again now
                    self._counters["bootstrap_redials_woken"] += 1
                    backoff = cfg.redial_backoff_min_s
                    await trio.sleep(random.uniform(0.0, 0.2))
                else:
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
        rec = self._offenders.get(peer)
        if rec is None or not rec.banned_until:
            return 0.0
        remaining = self._penalties.ban_remaining(rec, trio.current_time())
        if remaining > 0:
            return remaining
        rec.banned_until = 0.0
        if self._pubsub is not None:
            self._pubsub.remove_from_blacklist(ID.from_base58(peer))
        logger.info("ban of peer %s expired", peer)
        return 0.0

    def note_pubsub_reader_error(self, pid: ID, error: Exception) -> None:
        """Called by LabelmeshPubsub when reading a peer's pubsub stream failed with
        anything but the end of the stream (the stream is reset, the node goes on). An
        RPC that does not decode (protobuf ``DecodeError``, a bad length prefix) counts as
        an invalid message of the peer (``pubsub_rpcs_malformed``, the penalty policy of
        REJECTs); anything else is counted (``stream_errors``) and logged, not penalised
        (it may be ours or the library's)."""
        peer = pid.to_base58()
        if isinstance(error, (DecodeError, ParseError)):
            self._counters["pubsub_rpcs_malformed"] += 1
            logger.warning("peer %s sent a pubsub RPC that does not decode (%s: %s); stream reset, peer penalised",
                           peer, type(error).__name__, error)
            self._record_reject(pid)
        else:
            self._counters["stream_errors"] += 1
            logger.error("reading pubsub RPCs from %s failed; stream reset", peer, exc_info=error)

    def _record_reject(self, pid: ID) -> None:
        """One point of the penalty policy for ``pid`` (a REJECTed message or a malformed
        RPC); bans it when it reaches ``offender_reject_threshold``."""
        cfg = self.config
        peer = pid.to_base58()
        now = trio.current_time()
        self._ban_remaining(peer)  # an expired ban is lifted (un-blacklisted) first
        rec = self._offenders.setdefault(peer, PenaltyRecord())
        banned = self._penalties.penalise(rec, 1.0, now)
        if len(self._offenders) > 10_000:  # forget peers whose counter has decayed away
            for other, r in list(self._offenders.items()):
                if not r.banned_until and self._penalties.points(r, now) < 0.01:
                    del self._offenders[other]
        if not banned:
            return
        self._counters["offenders_banned"] += 1
        logger.warning(
            "banning peer %s for %.0f s: %.1f invalid messages (threshold %.1f)",
            peer,
            cfg.offender_ban_s,
            rec.penalty,
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

    def deliver_gossip_message(self, msg: rpc_pb2.Message, forwarder: ID | None) -> None:
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

    async def validate_gossip_message(self, forwarder: ID, msg: rpc_pb2.Message) -> GossipOutcome:
        """Three-way validation of one message (called by LabelmeshPubsub.validate_msg)."""
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
        (node/core/node.py bundles everything queued meanwhile)."""
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
                size = getattr(getattr(queue, "_queue", None), "max_size", PEER_QUEUE_SIZE)
                if pid in self._congested:
                    if len(queue) <= size // 2:
                        self._congested.discard(pid)
                        logger.info("peer %s drained its gossip queue", pid)
                    continue
                if len(queue) >= size - PEER_QUEUE_HEADROOM:
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

    def _guarded_stream_handler(
        self, dispatch: Callable[[INetStream], Awaitable[None]]
    ) -> Callable[[INetStream], Awaitable[None]]:
        """Wrap the host's dispatcher of inbound streams (every protocol: pubsub, identify,
        ping, ours): an exception of one stream's handler is logged, counted
        (``stream_errors``) and ends that stream only. py-libp2p 0.8.1 runs the handlers
        in the connection's task group, where an uncaught exception ends the process."""

        async def guarded(stream: INetStream) -> None:
            try:
                await dispatch(stream)
            except Exception as exc:  # noqa: BLE001 - one stream's failure, reported here
                self._counters["stream_errors"] += 1
                peer = stream.muxed_conn.peer_id
                logger.error("an inbound %s stream from %s failed; stream reset", stream.get_protocol(), peer,
                             exc_info=exc)
                await reset_quietly(stream)

        return guarded

    def _make_stream_handler(self, protocol_id: str) -> Callable[[INetStream], Awaitable[None]]:
        async def handle(stream: INetStream) -> None:
            await self._serve_request(protocol_id, stream)

        return handle

    async def _serve_request(self, protocol_id: str, stream: INetStream) -> None:
        cfg = self.config
        peer = stream.muxed_conn.peer_id.to_base58()
        handler = self._handlers.get(protocol_id)
        if handler is None:
            await reset_quietly(stream)
            return
        try:
            with trio.fail_after(cfg.request_timeout_s):
                async with self._inbound_limiter:
                    request = await read_frame(stream, cfg.max_request_bytes)
                    try:
                        response = bytes(await handler(peer, request))
                        if len(response) > cfg.max_response_bytes:
                            raise P2PError(f"response of {len(response)} bytes exceeds max_response_bytes")
                        body = bytes([STATUS_OK]) + response
                    except Exception as exc:
                        self._counters["requests_failed"] += 1
                        if isinstance(exc, LabelmeshError):
                            logger.warning("request handler %s refused a request from %s: %s", protocol_id, peer, exc)
                            reason = str(exc)
                        else:
                            logger.exception("request handler %s failed on a request from %s", protocol_id, peer)
                            reason = "internal error"
                        body = bytes([STATUS_ERROR]) + reason.encode("utf-8", "replace")[:MAX_ERROR_REASON_BYTES]
                    await stream.write(encode_frame(body))
        except FrameTooLarge as exc:
            self._counters["requests_oversized"] += 1
            logger.info("refused an oversized %s request from %s: %s", protocol_id, peer, exc)
            await reset_quietly(stream)
        except trio.TooSlowError:
            logger.info("gave up serving a %s request from %s after %.1f s", protocol_id, peer, cfg.request_timeout_s)
            await reset_quietly(stream)
        except Exception as exc:  # the stream broke (EOF, reset, connection closed)
            logger.debug("serving a %s request from %s failed: %r", protocol_id, peer, exc)
            await reset_quietly(stream)
        else:
            self._counters["requests_served"] += 1
            await close_quietly(stream)

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
                await stream.write(encode_frame(bytes(data)))
                frame = await read_frame(stream, cfg.max_response_bytes + 1)
        except trio.TooSlowError:
            await reset_quietly(stream)
            raise P2PTimeoutError(f"{protocol_id} request to {peer_id} timed out after {limit} s") from None
        except FrameTooLarge as exc:
            await reset_quietly(stream)
            raise P2PError(f"{protocol_id} response from {peer_id} too large: {exc}") from None
        except Exception as exc:
            await reset_quietly(stream)
            if negotiation_timed_out(exc):
                # py-libp2p gives up opening the stream when the peer does not answer the
                # protocol negotiation in time (StreamFailure from MultiselectClientError):
                # on a link that a partition hangs this comes before our own timeout, and it
                # is the same sign of a dead link (on_request_failed closes it)
                raise P2PTimeoutError(f"{protocol_id} request to {peer_id}: no answer to the protocol "
                                      f"negotiation ({type(exc).__name__}: {exc})") from exc
            raise P2PError(f"{protocol_id} request to {peer_id} failed: {type(exc).__name__}: {exc}") from exc
        await close_quietly(stream)
        if not frame:
            raise P2PError(f"{protocol_id} response from {peer_id} is empty")
        if frame[0] == STATUS_OK:
            return frame[1:]
        if frame[0] == STATUS_ERROR:
            reason = frame[1:].decode("utf-8", "replace")
            raise P2PRemoteError(f"{protocol_id} request to {peer_id} failed remotely: {reason}")
        raise P2PError(f"{protocol_id} response from {peer_id} has unknown status {frame[0]}")

"""Our subclasses of py-libp2p's parts (only what the package docstring lists): a Noise
transport that refuses banned peers and inbound peers past ``max_peers``, an
auto-connector that never dials, a scorer whose invalid-message penalty an IGNORE can
suppress, GossipSub without opportunistic grafting, Pubsub with three-way validation,
whole RPCs per write and a reader that survives a bad peer, and the connection notifee
of a P2PNode."""
from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee, IRawConnection, ISecureConn
from libp2p.exceptions import ValidationError
from libp2p.io.exceptions import IncompleteReadError
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.stream.exceptions import StreamClosed, StreamError, StreamReset
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import PeerScorer, ScoreParams
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.transport import Transport as NoiseTransport

from libp2p.utils.varint import encode_varint_prefixed

from .config import GossipOutcome
from .framing import reset_quietly

logger = logging.getLogger("node.p2p")


class GossipHost(Protocol):
    """What these parts call back on their P2PNode (node/net/host.py), which imports them."""

    async def validate_gossip_message(self, forwarder: ID, msg: rpc_pb2.Message) -> GossipOutcome: ...

    def deliver_gossip_message(self, msg: rpc_pb2.Message, forwarder: ID | None) -> None: ...

    def note_connected(self, pid: ID) -> None: ...

    def note_disconnected(self, pid: ID) -> None: ...

    def note_pubsub_reader_error(self, pid: ID, error: Exception) -> None: ...


class GatedNoiseTransport(NoiseTransport):
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


class NeverStartedAutoConnector(AutoConnector):
    """py-libp2p's auto-connector with ``start()`` doing nothing: it never dials."""

    async def start(self) -> None:
        return None


class LabelmeshScorer(PeerScorer):
    """PeerScorer whose invalid-message penalty can be suppressed once (for IGNORE)."""

    def __init__(self, params: ScoreParams) -> None:
        super().__init__(params)
        # (peer, number of on_invalid_message calls to swallow); armed by
        # LabelmeshPubsub.validate_msg right before it raises for an IGNORE.
        self.suppress: tuple[ID, int] | None = None

    def on_invalid_message(self, peer: ID, topic: str) -> None:
        if self.suppress is not None and self.suppress[0] == peer:
            remaining = self.suppress[1] - 1
            self.suppress = (peer, remaining) if remaining > 0 else None
            return
        super().on_invalid_message(peer, topic)


class LabelmeshGossipSub(GossipSub):
    """GossipSub without py-libp2p's every-heartbeat opportunistic grafting (see module doc)."""

    def _perform_opportunistic_grafting(self, topic: str, peers_to_graft: Any) -> int:
        return 0


class LabelmeshPubsub(Pubsub):
    """Pubsub with three-way validation and a direct hand-off of accepted messages."""

    def __init__(self, host: Any, router: LabelmeshGossipSub, *, node: GossipHost, **kwargs: Any) -> None:
        super().__init__(host, router, **kwargs)
        self._lm_node = node
        self._lm_scorer: LabelmeshScorer = router.scorer  # type: ignore[assignment]
        self._lm_forwarder: ID | None = None
        self._lm_write_locks: weakref.WeakKeyDictionary[INetStream, trio.Lock] = weakref.WeakKeyDictionary()

    async def validate_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        outcome = await self._lm_node.validate_gossip_message(msg_forwarder, msg)
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
        self._lm_node.deliver_gossip_message(publish_message, forwarder)

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        """Write one RPC (``uvarint(len) || RPC``) as a whole: one writer at a time per stream.

        py-libp2p 0.8.1 writes to a peer's stream from several tasks: the peer's sending
        loop, and, whenever the peer (re)connects or subscribes, one task per topic that
        replays the message cache (``GossipSub.send_recent_messages``) and one that
        flushes pending publishes. Yamux takes its lock per frame (64 KiB at most, less
        when the send window is short), not per write, so two RPCs written at once are
        interleaved frame by frame as soon as one is over 64 KiB or the link is slow;
        the receiver then reads another RPC's bytes as part of the first: a protobuf
        ``DecodeError`` (found by the WAN devnet: a ~100 KB task message). A write that
        fails or is cancelled half-way resets the stream, so a half-written RPC is
        never followed by another one. Same contract as the library's: False (and the
        peer's stream dropped, if it is still the registered one) when the stream is
        closed or reset.
        """
        data = encode_varint_prefixed(rpc_msg.SerializeToString())
        lock = self._lm_write_locks.get(stream)
        if lock is None:
            lock = self._lm_write_locks[stream] = trio.Lock()
        async with lock:
            try:
                await stream.write(data)
                return True
            except BaseException as exc:
                await reset_quietly(stream)
                if not isinstance(exc, (StreamClosed, StreamReset)):
                    raise
        peer_id = stream.muxed_conn.peer_id
        logger.debug("pubsub stream to %s closed or reset while writing", peer_id)
        if self.peers.get(peer_id) is stream:  # not a stream already replaced by a new one
            self._handle_dead_peer(peer_id)
        return False

    async def stream_handler(self, stream: INetStream) -> None:
        """Read a peer's RPCs until its stream ends; nothing it sends can stop the node.

        py-libp2p 0.8.1 catches only stream/varint/incomplete-read errors here; anything
        else raised while reading or handling an RPC (a protobuf ``DecodeError`` from a
        misframed or garbage RPC, a bug in the library's RPC handling) propagated into
        the connection's task group and ended the process. Now the stream is reset and
        the peer's pubsub state dropped (py-libp2p re-opens streams to a peer that is
        still connected) whatever the error, and the node is told
        (``note_pubsub_reader_error``: logged, counted, a malformed RPC penalised).
        """
        peer_id = stream.muxed_conn.peer_id
        try:
            await self.continuously_read_stream(stream)
            return
        except (StreamError, IncompleteReadError) as error:  # the stream or connection broke
            logger.debug("pubsub stream from %s ended: %r", peer_id, error)
        except Exception as error:  # noqa: BLE001 - per stream: logged and counted by the node
            self._lm_node.note_pubsub_reader_error(peer_id, error)
        await reset_quietly(stream)
        self._handle_dead_peer(peer_id)

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


class NodeNotifee(INotifee):
    def __init__(self, node: GossipHost) -> None:
        self._node = node

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._node.note_connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._node.note_disconnected(conn.muxed_conn.peer_id)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

"""Real py-libp2p hosts on 127.0.0.1 in one process (node/net/host.py).

Every wait is a condition with a bound; nothing sleeps to synchronise.
Each test starts its nodes in pytest-trio's ``nursery`` fixture, which is
cancelled (tearing the nodes down) when the test returns.
"""

from __future__ import annotations

from collections.abc import Callable
import hashlib
import inspect
import logging
import threading
from typing import Any

import pytest
import trio
from libp2p.peer.id import ID

from node.net import (
    GossipOutcome,
    P2PConfig,
    P2PConfigError,
    P2PError,
    P2PNode,
    P2PRemoteError,
    P2PTimeoutError,
)

TOPIC = "/labelmesh/test/tasks/1"
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
WAIT = 15.0  # generous bound for any single condition on a loaded 2-core machine


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``cond`` until true; fail the test after ``timeout`` seconds."""
    try:
        with trio.fail_after(timeout):
            while not cond():
                await trio.sleep(0.01)
    except trio.TooSlowError:
        pytest.fail(f"timed out after {timeout} s waiting for: {what}")


def accept_all(topic: str, data: bytes, forwarder: str) -> GossipOutcome:
    return GossipOutcome.ACCEPT


class Peer:
    """A running P2PNode plus everything its callbacks saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.node: P2PNode
        self.validated: list[tuple[str, bytes, str]] = []
        self.messages: list[tuple[str, bytes, str]] = []
        self.connected: list[str] = []

    @property
    def id(self) -> str:
        return self.node.peer_id

    def datas(self) -> list[bytes]:
        return [data for _, data, _ in self.messages]

    def connected_ids(self) -> set[str]:
        return {p["peer_id"] for p in self.node.peers()}


class Net:
    """Starts named nodes in the test's nursery."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery

    async def start(
        self,
        name: str,
        *,
        bootstrap: Peer | None = None,
        bootstrap_addrs: tuple[str, ...] = (),
        validator: Callable[[str, bytes, str], Any] = accept_all,
        topics: tuple[str, ...] = (TOPIC,),
        sync_validator: bool = False,
        **config: object,
    ) -> Peer:
        peer = Peer(name)

        async def validate_async(topic: str, data: bytes, forwarder: str) -> GossipOutcome:
            peer.validated.append((topic, data, forwarder))
            outcome = validator(topic, data, forwarder)
            return await outcome if inspect.isawaitable(outcome) else outcome

        def validate_sync(topic: str, data: bytes, forwarder: str) -> GossipOutcome:
            peer.validated.append((topic, data, forwarder))
            return validator(topic, data, forwarder)

        async def on_message(topic: str, data: bytes, forwarder: str) -> None:
            peer.messages.append((topic, data, forwarder))

        async def on_peer_connected(peer_id: str) -> None:
            peer.connected.append(peer_id)

        cfg = P2PConfig(
            seed=hashlib.sha256(b"labelmesh-test-" + name.encode()).digest(),
            listen=[LOOPBACK],
            bootstrap=bootstrap.node.listen_addrs() if bootstrap else bootstrap_addrs,
            **config,  # type: ignore[arg-type]
        )
        peer.node = P2PNode(
            cfg,
            validator=validate_sync if sync_validator else validate_async,
            on_message=on_message,
            on_peer_connected=on_peer_connected,
        )
        for topic in topics:
            peer.node.subscribe(topic)  # before run(): joined when run() starts
        with trio.fail_after(WAIT):
            await self.nursery.start(peer.node.run)
        return peer


@pytest.fixture
def net(nursery: trio.Nursery) -> Net:
    return Net(nursery)


async def meshed(a: Peer, b: Peer, topic: str = TOPIC) -> None:
    """Wait until a and b have each other in their meshes for ``topic``."""
    await wait_until(
        lambda: b.id in a.node.mesh_peers(topic) and a.id in b.node.mesh_peers(topic),
        f"{a.name} and {b.name} meshed on {topic}",
    )


async def line(
    net: Net, b_validator: Callable[[str, bytes, str], GossipOutcome] = accept_all
) -> tuple[Peer, Peer, Peer]:
    """A - B - C: B bootstraps to A, C to B; A and C are never connected. C's validator is sync."""
    a = await net.start("a")
    b = await net.start("b", bootstrap=a, validator=b_validator)
    c = await net.start("c", bootstrap=b, sync_validator=True)
    await meshed(a, b)
    await meshed(b, c)
    assert c.id not in a.connected_ids() and a.id not in c.connected_ids()
    return a, b, c


# ---------------------------------------------------------------------------


async def test_bootstrap_gossip_both_ways(net: Net) -> None:
    a = await net.start("a")
    b = await net.start("b", bootstrap=a)
    assert await a.node.wait_for_peers(1, WAIT) and await b.node.wait_for_peers(1, WAIT)
    await meshed(a, b)

    # Real ports and full addresses, Noise + yamux negotiated, callbacks fired.
    (addr,) = a.node.listen_addrs()
    assert addr.startswith("/ip4/127.0.0.1/tcp/") and "/tcp/0/" not in addr and addr.endswith(f"/p2p/{a.id}")
    (info,) = b.node.peers()
    assert info["peer_id"] == a.id and info["security"] == "/noise" and info["muxer"] == "/yamux/1.0.0"
    assert info["direction"] == "outbound" and TOPIC in info["topics"]
    await wait_until(lambda: a.connected == [b.id] and b.connected == [a.id], "on_peer_connected on both sides")

    await a.node.publish(TOPIC, b"from-a")
    await b.node.publish(TOPIC, b"from-b")
    await wait_until(lambda: b.messages and a.messages, "each side receives the other's message")

    assert b.validated == [(TOPIC, b"from-a", a.id)]
    assert a.validated == [(TOPIC, b"from-b", b.id)]
    assert b.messages == [(TOPIC, b"from-a", a.id)]
    assert a.messages == [(TOPIC, b"from-b", b.id)]  # never our own publish
    assert a.node.stats()["published"] == 1 and b.node.stats()["gossip_accepted"] == 1


async def test_request_response(net: Net) -> None:
    server = await net.start("server", topics=(), max_request_bytes=1024)
    client = await net.start("client", bootstrap=server, topics=(), max_request_bytes=64 * 1024)
    assert await client.node.wait_for_peers(1, WAIT)
    seen: list[tuple[str, bytes]] = []

    async def echo(peer_id: str, data: bytes) -> bytes:
        seen.append((peer_id, data))
        return data[::-1]

    async def broken(peer_id: str, data: bytes) -> bytes:
        raise RuntimeError("handler bug")

    async def refusing(peer_id: str, data: bytes) -> bytes:
        raise P2PError("unknown task")

    async def stuck(peer_id: str, data: bytes) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    handlers = {"/lm/echo/1": echo, "/lm/broken/1": broken, "/lm/refuse/1": refusing, "/lm/stuck/1": stuck}
    for protocol_id, handler in handlers.items():
        server.node.set_request_handler(protocol_id, handler)

    assert await client.node.request(server.id, "/lm/echo/1", b"ping") == b"gnip"
    assert seen == [(client.id, b"ping")]
    assert await client.node.request(server.id, "/lm/echo/1", b"") == b""

    # Oversized for the server (client allows it): refused, server unharmed.
    with pytest.raises(P2PError):
        await client.node.request(server.id, "/lm/echo/1", b"x" * 4096)
    assert server.node.stats()["requests_oversized"] == 1
    # Oversized for the client itself: refused before sending.
    with pytest.raises(P2PError, match="max_request_bytes"):
        await client.node.request(server.id, "/lm/echo/1", b"x" * (64 * 1024 + 1))
    assert await client.node.request(server.id, "/lm/echo/1", b"x" * 1024) == b"x" * 1024

    with pytest.raises(P2PRemoteError, match="internal error"):
        await client.node.request(server.id, "/lm/broken/1", b"?")
    with pytest.raises(P2PRemoteError, match="unknown task"):
        await client.node.request(server.id, "/lm/refuse/1", b"?")
    with pytest.raises(P2PTimeoutError):
        await client.node.request(server.id, "/lm/stuck/1", b"?", timeout=0.5)
    with pytest.raises(P2PError):
        await client.node.request(server.id, "/lm/not-served/1", b"?")

    assert await client.node.request(server.id, "/lm/echo/1", b"still alive") == b"evila llits"
    assert server.id in client.connected_ids()


async def test_reject_and_ignore_stop_at_the_validator(net: Net) -> None:
    def b_rules(topic: str, data: bytes, forwarder: str) -> GossipOutcome:
        if data.startswith(b"bad"):
            return GossipOutcome.REJECT
        if data.startswith(b"ign"):
            return GossipOutcome.IGNORE
        if data.startswith(b"boom"):
            raise RuntimeError("validator bug")  # counts as IGNORE: our bug is no peer's offence
        return GossipOutcome.ACCEPT

    a, b, c = await line(net, b_rules)

    await a.node.publish(TOPIC, b"boom-1")
    await wait_until(lambda: b.node.stats().get("gossip_ignored", 0) == 1, "B ignores boom-1")

    await a.node.publish(TOPIC, b"ign-1")
    await wait_until(lambda: b.node.stats().get("gossip_ignored", 0) == 2, "B ignores ign-1")
    assert b.node.peer_score(a.id) == 0.0  # IGNORE: no penalty
    assert b.node.stats().get("gossip_rejected", 0) == 0 and b.node.stats()["gossip_ignored"] == 2

    await a.node.publish(TOPIC, b"bad-1")
    await wait_until(lambda: b.node.stats().get("gossip_rejected", 0) == 1, "B rejects bad-1")
    assert b.node.peer_score(a.id) < 0.0  # REJECT: the forwarder is penalised
    assert b.node.stats()["gossip_rejected"] == 1
    assert not b.node.is_banned(a.id)  # one REJECT is not yet an offender

    # A later good message overtakes nothing: once it reached C, the earlier
    # bad/ignored ones have been dropped at B for good.
    await a.node.publish(TOPIC, b"ok-1")
    await wait_until(lambda: b"ok-1" in c.datas(), "ok-1 reaches C through B")
    assert b.datas() == [b"ok-1"]
    assert c.datas() == [b"ok-1"]
    assert [d for _, d, _ in c.validated] == [b"ok-1"]
    assert c.messages == [(TOPIC, b"ok-1", b.id)]


async def test_multi_hop_line(net: Net) -> None:
    a, b, c = await line(net)
    await a.node.publish(TOPIC, b"a-to-c")
    await wait_until(lambda: b"a-to-c" in c.datas(), "A's message reaches C")
    assert c.messages == [(TOPIC, b"a-to-c", b.id)]  # forwarded by B

    await c.node.publish(TOPIC, b"c-to-a")
    await wait_until(lambda: b"c-to-a" in a.datas(), "C's message reaches A")
    assert a.messages == [(TOPIC, b"c-to-a", b.id)]
    assert sorted(b.datas()) == [b"a-to-c", b"c-to-a"]


async def test_copy_arriving_during_validation_is_a_duplicate(net: Net) -> None:
    # Triangle: B gets A's message from A and, via C, a second copy while the
    # first is still being validated (B's validator is held on an event).
    release = trio.Event()

    async def slow_on_first(topic: str, data: bytes, forwarder: str) -> GossipOutcome:
        if not release.is_set():
            await release.wait()
        return GossipOutcome.ACCEPT

    a = await net.start("a")
    b = await net.start("b", bootstrap=a, validator=slow_on_first)
    c = await net.start("c", bootstrap=b)
    await c.node.connect(a.node.listen_addrs()[0])
    await meshed(a, b)
    await meshed(b, c)
    await meshed(a, c)

    await a.node.publish(TOPIC, b"twice")
    await wait_until(lambda: b"twice" in c.datas(), "C accepts and forwards the message")
    await wait_until(lambda: b.node.stats().get("gossip_duplicates", 0) >= 1, "B ignores the copy from C")
    release.set()
    await wait_until(lambda: b.messages, "B accepts the first copy")
    assert b.datas() == [b"twice"]
    assert len(b.validated) == 1
    assert b.node.peer_score(c.id) == 0.0  # a duplicate is no offence


async def test_burst_of_500_publishes_is_paced_and_delivered(net: Net) -> None:
    # A publisher faster than the default 10/s (the daemon bundles instead): the token
    # bucket and the wait for queue room must still keep py-libp2p from dropping anything.
    a = await net.start("a", publish_rate_per_s=200.0, publish_burst=16)
    b = await net.start("b", bootstrap=a)
    await meshed(a, b)
    sent = [b"burst-%03d" % i for i in range(500)]
    with trio.fail_after(30):
        for data in sent:
            await a.node.publish(TOPIC, data)
    await wait_until(lambda: len(b.messages) >= len(sent), "all 500 messages delivered", timeout=30)
    assert sorted(b.datas()) == sent
    assert a.node.stats().get("publish_peer_congested", 0) == 0
    assert b.node.stats().get("gossip_delivery_dropped", 0) == 0


async def test_repeat_offender_is_disconnected_and_refused(net: Net) -> None:
    def reject_all(topic: str, data: bytes, forwarder: str) -> GossipOutcome:
        return GossipOutcome.REJECT

    a = await net.start("a")
    # B's bootstrap peer is A: its redial loop must respect the ban too.
    b = await net.start("b", bootstrap=a, validator=reject_all, offender_ban_s=120.0)
    await meshed(a, b)
    for i in range(3):  # offender_reject_threshold defaults to 3
        await a.node.publish(TOPIC, b"junk-%d" % i)
    await wait_until(lambda: b.node.is_banned(a.id), "B bans A")
    await wait_until(lambda: a.id not in b.connected_ids() and b.id not in a.connected_ids(), "A and B disconnected")
    assert b.node.stats()["offenders_banned"] == 1

    with pytest.raises(P2PError):
        await a.node.connect(b.node.listen_addrs()[0])  # B refuses the Noise handshake
    with pytest.raises(P2PError, match="banned"):
        await b.node.connect(a.node.listen_addrs()[0])  # B won't dial A either
    assert a.id not in b.connected_ids()
    assert b.messages == []


async def test_inbound_connections_are_refused_while_full(net: Net) -> None:
    """max_peers caps the peers that may connect to a node (Sybil peer ids are free);
    its own dials are not limited, and a slot that frees up can be taken again."""
    a = await net.start("a", max_peers=1)
    b = await net.start("b", bootstrap=a)
    assert await b.node.wait_for_peers(1, WAIT)
    c = await net.start("c")
    with pytest.raises(P2PError):
        await c.node.connect(a.node.listen_addrs()[0])  # A is full: the handshake fails
    await wait_until(lambda: a.node.stats().get("inbound_refused_full", 0) >= 1, "A counts the refusal")
    assert a.connected_ids() == {b.id}
    await a.node.connect(c.node.listen_addrs()[0])  # A's own dial is allowed
    await wait_until(lambda: a.connected_ids() == {b.id, c.id}, "A dialled C")
    await a.node.disconnect(b.id)
    await a.node.disconnect(c.id)
    await wait_until(lambda: not a.connected_ids(), "A has no peers")
    d = await net.start("d")  # (C's dialer remembers that A failed it: a fresh peer)
    await d.node.connect(a.node.listen_addrs()[0])  # room again
    await wait_until(lambda: d.id in a.connected_ids(), "D connected to A")


async def test_bootstrap_peer_is_redialed_after_a_drop(net: Net) -> None:
    a = await net.start("a")
    b = await net.start("b", bootstrap=a, redial_backoff_min_s=0.2)
    assert await b.node.wait_for_peers(1, WAIT)
    await a.node.disconnect(b.id)
    await wait_until(lambda: a.id not in b.connected_ids(), "B notices the drop")
    assert await b.node.wait_for_peers(1, WAIT), "B redials its bootstrap peer"
    await meshed(a, b)


async def test_any_new_connection_ends_a_redial_backoff(net: Net) -> None:
    """After a partition heals, the first link that comes back must bring the others back at
    once: A's dial to C fails and backs off for 1,000 s; when B connects to A, A dials C
    again at once (it could not connect within the test's bound otherwise)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c_cfg = P2PConfig(seed=hashlib.sha256(b"labelmesh-test-c").digest(), listen=[f"/ip4/127.0.0.1/tcp/{port}"])
    c = P2PNode(c_cfg, validator=accept_all)  # its peer id is known before it runs
    a = Peer("a")
    a.node = P2PNode(P2PConfig(seed=hashlib.sha256(b"labelmesh-test-a").digest(), listen=[LOOPBACK],
                               bootstrap=[f"/ip4/127.0.0.1/tcp/{port}/p2p/{c.peer_id}"],
                               redial_backoff_min_s=1000.0, redial_backoff_max_s=1000.0), validator=accept_all)
    with trio.fail_after(WAIT):
        await net.nursery.start(a.node.run)
    await wait_until(lambda: a.node.stats().get("bootstrap_dial_failures", 0) >= 1, "A failed to reach C")
    with trio.fail_after(WAIT):
        await net.nursery.start(c.run)  # C is back, but A waits out its backoff...
    await net.start("b", bootstrap=a)  # ... until a sign of life: B connects to A
    await wait_until(lambda: c.peer_id in a.connected_ids(), "A dialed C again after B connected")
    assert a.node.stats()["bootstrap_redials_woken"] >= 1


async def test_redial_replaces_a_link_that_looks_dead(net: Net) -> None:
    a = await net.start("a")
    b = await net.start("b", bootstrap=a, redial_backoff_min_s=0.2)
    assert await b.node.wait_for_peers(1, WAIT)
    first = a.connected.count(b.id)
    # a refusal or a protocol the peer does not serve says the link works: kept
    await b.node.on_request_failed(a.id, P2PRemoteError("refused"))
    await b.node.on_request_failed(a.id, P2PError("protocol not supported"))
    assert b.node.stats().get("redials_after_failed_request", 0) == 0 and a.id in b.connected_ids()
    await b.node.on_request_failed(a.id, P2PTimeoutError("no answer"))  # e.g. a sync request to A timed out
    await wait_until(lambda: a.connected.count(b.id) > first and a.id in b.connected_ids(), "B reconnected to A")
    assert b.node.stats()["redials_after_failed_request"] == 1
    await b.node.on_request_failed("12D3KooWNotConnectedNotConnectedNotConnectedNotConn", P2PTimeoutError("x"))
    assert b.node.stats()["redials_after_failed_request"] == 1  # not connected: nothing to do


async def test_unreachable_bootstrap_is_retried_quietly(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    ghost = P2PNode(
        P2PConfig(seed=b"\x01" * 32, listen=[LOOPBACK]), validator=accept_all
    )  # never started: nobody listens on port 1
    caplog.set_level(logging.DEBUG, logger="node.p2p")
    a = await net.start("a", topics=())
    lonely = P2PNode(
        P2PConfig(
            seed=b"\x02" * 32,
            listen=[LOOPBACK],
            bootstrap=[f"/ip4/127.0.0.1/tcp/1/p2p/{ghost.peer_id}"],
            redial_backoff_min_s=0.05,
            redial_backoff_max_s=0.2,
        ),
        validator=accept_all,
    )
    with trio.fail_after(WAIT):
        await net.nursery.start(lonely.run)
    await wait_until(lambda: lonely.stats().get("bootstrap_dial_failures", 0) >= 4, "four failed dials")
    assert await lonely.connect(a.node.listen_addrs()[0]) == a.id  # still works normally

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "bootstrap" in r.getMessage()]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert errors == [], [f"{r.name}: {r.getMessage()}" for r in errors]


# -- big messages over slow links, and peers whose streams fail (the WAN devnet's crash) --


async def _relay_in_pieces(src: trio.SocketStream, dst: trio.SocketStream, piece: int) -> None:
    try:
        while data := await src.receive_some(65536):
            for i in range(0, len(data), piece):
                await dst.send_all(data[i : i + piece])
                await trio.sleep(0.0002)  # the receiver reads each piece on its own
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await dst.aclose()


async def slow_link(nursery: trio.Nursery, to: Peer, piece: int = 100) -> str:
    """A TCP relay to ``to`` that hands bytes on in ``piece``-byte pieces, as a slow link
    with small segments does; returns the multiaddr (with ``to``'s peer id) to dial."""

    async def handle(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", int(to.node.listen_addrs()[0].split("/")[4]))
        async with trio.open_nursery() as both:
            both.start_soon(_relay_in_pieces, client, server, piece)
            both.start_soon(_relay_in_pieces, server, client, piece)

    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handle, [listener])
    return f"/ip4/127.0.0.1/tcp/{listener.socket.getsockname()[1]}/p2p/{to.id}"


async def test_read_exactly_waits_for_every_piece_and_fails_only_at_the_end() -> None:
    """node/net/patches.py replaces py-libp2p's read_exactly (101 reads at most, then
    "connection closed") in the modules of our stack that call it."""
    import importlib

    from libp2p.io.exceptions import IncompleteReadError
    from libp2p.io.utils import read_exactly as library_read_exactly

    from node.net.patches import READ_EXACTLY_USERS, fix_libp2p_partial_reads, patient_read_exactly

    class Trickle:
        def __init__(self, data: bytes) -> None:
            self.data, self.reads = data, 0

        async def read(self, n: int) -> bytes:
            await trio.lowlevel.checkpoint()
            self.reads += 1
            piece, self.data = self.data[:1], self.data[1:]  # one byte per read
            return piece

    record = bytes(range(256)) * 4
    with pytest.raises(IncompleteReadError):
        await library_read_exactly(Trickle(record), len(record))  # what Noise did on a slow link
    trickle = Trickle(record)
    assert await patient_read_exactly(trickle, len(record)) == record and trickle.reads == len(record)
    with pytest.raises(IncompleteReadError) as ended:
        await patient_read_exactly(Trickle(record[:300]), len(record))
    assert (ended.value.expected_bytes, ended.value.received_bytes) == (len(record), 300)
    fix_libp2p_partial_reads()  # P2PNode calls it; idempotent
    for name in READ_EXACTLY_USERS:
        assert importlib.import_module(name).read_exactly is patient_read_exactly, name


async def test_big_message_over_a_link_of_small_pieces_arrives_on_the_same_connection(
    net: Net, nursery: trio.Nursery
) -> None:
    """A 100 KB message through a link that delivers 100-byte pieces: Noise reads each
    64 KiB record with py-libp2p's read_exactly, which gave up after 101 partial reads and
    dropped the connection; the redial then replayed the message cache to the peer
    concurrently with its sending loop, interleaving two RPCs on one stream, and the
    receiver died of a protobuf DecodeError (found by the WAN devnet). Now the message
    arrives whole, on the first connection, and nothing is counted as malformed."""
    a = await net.start("a")
    b = await net.start("b", bootstrap_addrs=(await slow_link(nursery, a),))
    await meshed(a, b)
    big = bytes(range(256)) * 400  # 102,400 bytes
    await a.node.publish(TOPIC, big)
    await a.node.publish(TOPIC, b"after-the-big-one")
    await wait_until(lambda: len(b.messages) == 2, "both messages delivered over the slow link", timeout=60)
    assert b.datas() == [big, b"after-the-big-one"]
    assert b.connected == [a.id] and a.connected == [b.id]  # never dropped and redialed
    for peer in (a, b):
        stats = peer.node.stats()
        assert stats["pubsub_rpcs_malformed"] == 0 and stats["stream_errors"] == 0, stats


async def test_concurrent_writers_of_one_pubsub_stream_never_interleave_rpcs(net: Net) -> None:
    """py-libp2p writes to a peer's stream from its sending loop and, when the peer
    (re)connects or subscribes, from message-cache replay tasks; yamux interleaves
    concurrent writes frame by frame (64 KiB). Here, on loopback, a 300 KB RPC and five
    small ones written at once: without whole-RPC writes B reads a misframed RPC."""
    from libp2p.pubsub.pb import rpc_pb2

    a = await net.start("a")
    b = await net.start("b", bootstrap=a)
    await meshed(a, b)
    pubsub = a.node._pubsub
    assert pubsub is not None
    (stream,) = [s for pid, s in pubsub.peers.items() if pid.to_base58() == b.id]
    big = rpc_pb2.RPC(publish=[rpc_pb2.Message(data=b"x" * 300_000, topicIDs=[TOPIC], seqno=b"\x00" * 8)])
    small = rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid="/labelmesh/test/other")])
    results: list[bool] = []

    async def write(rpc: Any) -> None:
        results.append(await pubsub.write_msg(stream, rpc))

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as writers:
            writers.start_soon(write, big)  # unsigned: B parses it, then drops it (strict signing)
            for _ in range(5):
                writers.start_soon(write, small)
    assert results == [True] * 6
    await wait_until(lambda: b.id in a.node.mesh_peers(TOPIC), "A still has B in its mesh")
    await a.node.publish(TOPIC, b"after")
    await wait_until(lambda: b.messages, "B receives the next message on the same stream")
    assert b.datas() == [b"after"]
    assert b.node.stats()["pubsub_rpcs_malformed"] == 0
    assert pubsub.peers.get(ID.from_base58(b.id)) is stream  # never reset


async def test_undecodable_pubsub_rpcs_are_penalised_not_fatal(net: Net) -> None:
    """A peer that writes a length-prefixed RPC that is not protobuf on a gossipsub stream:
    py-libp2p 0.8.1 let the DecodeError end the process. Now the stream is reset, the RPC
    counted (node_info / metrics) and penalised like a REJECT; the peer stays connected
    and its gossip still flows until its third one bans it."""
    from libp2p.custom_types import TProtocol
    from libp2p.utils.varint import encode_uvarint

    from node.net import GOSSIPSUB_PROTOCOLS

    a = await net.start("a")
    b = await net.start("b", bootstrap=a, offender_ban_s=120.0)
    await meshed(a, b)
    junk = b"\xff" * 64  # field 0x7fff.., wire type 7: never a valid protobuf

    async def send_junk() -> None:
        stream = await a.node._host.new_stream(ID.from_base58(b.id), [TProtocol(GOSSIPSUB_PROTOCOLS[0])])
        await stream.write(encode_uvarint(len(junk)) + junk)

    await send_junk()
    await wait_until(lambda: b.node.stats()["pubsub_rpcs_malformed"] == 1, "B counts the malformed RPC")
    assert not b.node.is_banned(a.id) and a.id in b.connected_ids()
    await a.node.publish(TOPIC, b"still-honest")
    await wait_until(lambda: b.messages, "A's gossip still reaches B")
    for n in (2, 3):
        await send_junk()
        await wait_until(lambda: b.node.stats()["pubsub_rpcs_malformed"] == n, f"B counts RPC {n}")
    await wait_until(lambda: b.node.is_banned(a.id), "the third malformed RPC bans A")
    await wait_until(lambda: a.id not in b.connected_ids(), "A disconnected")
    assert b.node.stats()["offenders_banned"] == 1 and b.node.stats()["stream_errors"] == 0


async def test_a_failing_stream_handler_ends_its_stream_not_the_node(net: Net) -> None:
    """Any protocol's handler that raises (py-libp2p runs them in the connection's task
    group, where an uncaught exception ends the process) costs that stream only."""
    from libp2p.custom_types import TProtocol

    a = await net.start("a", topics=())
    b = await net.start("b", bootstrap=a, topics=())

    async def boom(stream: Any) -> None:
        await stream.read(1)
        raise RuntimeError("a bug in some handler")

    async def echo(peer_id: str, request: bytes) -> bytes:
        return request

    b.node._host.set_stream_handler(TProtocol("/test/boom/1"), boom)
    b.node.set_request_handler("/test/echo/1", echo)
    assert await a.node.wait_for_peers(1, WAIT)
    with pytest.raises(P2PError):
        await a.node.request(b.id, "/test/boom/1", b"x", timeout=WAIT)
    await wait_until(lambda: b.node.stats()["stream_errors"] == 1, "B counts the failed stream")
    assert await a.node.request(b.id, "/test/echo/1", b"still up", timeout=WAIT) == b"still up"
    assert b.id in a.connected_ids()


async def test_listen_failure_is_reported(net: Net) -> None:
    a = await net.start("a", topics=())
    port = a.node.listen_addrs()[0].split("/")[4]
    clash = P2PNode(P2PConfig(seed=b"\x03" * 32, listen=[f"/ip4/127.0.0.1/tcp/{port}"]), validator=accept_all)
    # py-libp2p alone would happily share the port (SO_REUSEPORT).
    with pytest.raises(P2PError, match="cannot listen"):
        with trio.fail_after(WAIT):
            await clash.run()
    with pytest.raises(P2PError, match="only once"):
        await clash.run()


def test_config_is_validated() -> None:
    good = dict(seed=b"s" * 32, listen=[LOOPBACK])
    P2PConfig(**good).validate()  # type: ignore[arg-type]
    bad_cases = [
        dict(seed=b"short"),
        dict(listen=[]),
        dict(listen=["/ip4/127.0.0.1/udp/0"]),
        dict(bootstrap=["/ip4/127.0.0.1/tcp/4001"]),  # no /p2p/<id>
        dict(gossip_degree_low=7),
        dict(publish_burst=100),
        dict(publish_threshold=-10.0),  # above gossip_threshold
        dict(offender_reject_threshold=10.0),  # silenced (score -100 < -40) before banned
        dict(max_message_bytes=2 * 1024 * 1024),
        dict(max_peers=0),
    ]
    for override in bad_cases:
        with pytest.raises(P2PConfigError):
            P2PNode(P2PConfig(**{**good, **override}), validator=accept_all)  # type: ignore[arg-type]


def test_no_sweeper_threads_leak() -> None:
    # Runs after the network tests in this file (pytest keeps file order):
    # every Pubsub sweeper thread must have been stopped by P2PNode teardown.
    leaked = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    assert not [t for t in leaked if "_background_cleanup" in repr(getattr(t, "_target", None))], leaked


def test_a_negotiation_that_times_out_is_a_dead_link_a_refusal_is_not():
    """Across a partition, opening a stream fails with py-libp2p's StreamFailure caused by the
    protocol negotiation timing out (before our own request timeout): that must count as a
    timeout (so on_request_failed closes the hung link and it is redialed), while a peer that
    refuses the protocol is alive (found by scripts/bench reconnect: no link ever dropped)."""
    from libp2p.host.exceptions import StreamFailure
    from libp2p.protocol_muxer.exceptions import MultiselectClientError

    from node.net.host import negotiation_timed_out

    def failure(msg):
        try:
            try:
                raise MultiselectClientError(msg)
            except MultiselectClientError as e:
                raise StreamFailure("failed to open a stream to peer") from e
        except StreamFailure as f:
            return f

    assert negotiation_timed_out(failure("response timed out after 5s, protocols tried: ['/x']"))
    assert not negotiation_timed_out(failure("protocols not supported: ['/x']"))
    assert not negotiation_timed_out(RuntimeError("timed out"))

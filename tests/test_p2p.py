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
            bootstrap=bootstrap.node.listen_addrs() if bootstrap else (),
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

"""An in-memory network with the P2PNode interface, for in-process multi-node tests.

Gossip is flooding with per-node de-duplication (by message bytes), every hop
goes through the receiving node's validator exactly like libp2p's (ACCEPT
forwards, REJECT/IGNORE drop); links can be cut (partitions) and messages dropped
with a seeded probability. Delivery happens in tasks of the network's nursery,
so with ``trio.testing.MockClock(autojump_threshold=0)`` tests run on fake time.
"""
from __future__ import annotations

import hashlib
import random

import trio


class FakeP2PError(Exception):
    pass


class FakeNet:
    def __init__(self, *, drop_rate: float = 0.0, seed: int = 0, latency: float = 0.001):
        self.nodes: dict[str, "FakeP2P"] = {}
        self.links: set[frozenset] = set()
        self.drop_rate = drop_rate
        self.rng = random.Random(seed)
        self.latency = latency
        self.nursery: trio.Nursery | None = None
        self.delivered = 0
        self.dropped = 0

    def make(self, name: str) -> "FakeP2P":
        p = FakeP2P(self, name)
        self.nodes[name] = p
        return p

    def connect(self, a: str, b: str) -> None:
        self.links.add(frozenset((a, b)))

    def connect_all(self) -> None:
        names = sorted(self.nodes)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                self.connect(a, b)

    def cut(self, a: str, b: str) -> None:
        self.links.discard(frozenset((a, b)))

    def partition(self, side_a: list[str], side_b: list[str]) -> None:
        for a in side_a:
            for b in side_b:
                self.cut(a, b)

    def neighbours(self, name: str) -> list[str]:
        return sorted(n for l in self.links if name in l for n in l if n != name)

    def linked(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self.links


class FakeP2P:
    def __init__(self, net: FakeNet, name: str):
        self.net = net
        self.peer_id = name
        self.topics: set[str] = set()
        self.seen: set[bytes] = set()
        self.validator = None
        self.handlers = {}
        self.running = False
        self.max_payload_bytes = 512 * 1024
        self.published: list[tuple[str, bytes]] = []  # every payload this node published

    # -- P2PNode interface
    def subscribe(self, topic: str) -> None:
        self.topics.add(topic)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.running = False

    def listen_addrs(self) -> list[str]:
        return [f"/memory/{self.peer_id}"]

    def peers(self) -> list[dict]:
        return [{"peer_id": n, "addrs": []} for n in self.net.neighbours(self.peer_id) if self.net.nodes[n].running]

    def mesh_peers(self, topic: str) -> list[str]:
        return [p["peer_id"] for p in self.peers()]

    async def wait_publish_slot(self) -> None:
        """No pacing on the in-memory network."""

    async def publish(self, topic: str, data: bytes) -> None:
        self.published.append((topic, data))
        self.seen.add(hashlib.sha256(data).digest())
        self._forward(topic, data, exclude=None)

    def set_request_handler(self, protocol_id: str, handler) -> None:
        self.handlers[protocol_id] = handler

    async def request(self, peer_id: str, protocol_id: str, data: bytes, *, timeout: float | None = None) -> bytes:
        other = self.net.nodes.get(peer_id)
        if other is None or not other.running or not self.net.linked(self.peer_id, peer_id):
            raise FakeP2PError(f"no connection to {peer_id}")
        h = other.handlers.get(protocol_id)
        if h is None:
            raise FakeP2PError(f"{peer_id} does not speak {protocol_id}")
        with trio.fail_after(timeout or 10):
            await trio.sleep(self.net.latency)
            return await h(self.peer_id, data)

    async def disconnect(self, peer_id: str) -> None:
        self.net.cut(self.peer_id, peer_id)

    async def on_request_failed(self, peer_id: str, error: BaseException) -> None:
        """P2PNode.on_request_failed: the in-memory links never hang, so nothing to close."""

    # -- internals
    def _forward(self, topic: str, data: bytes, exclude: str | None) -> None:
        for n in self.net.neighbours(self.peer_id):
            if n == exclude:
                continue
            other = self.net.nodes[n]
            if not other.running or topic not in other.topics:
                continue
            if self.net.drop_rate and self.net.rng.random() < self.net.drop_rate:
                self.net.dropped += 1
                continue
            self.net.nursery.start_soon(other._receive, topic, data, self.peer_id)

    async def _receive(self, topic: str, data: bytes, from_peer: str) -> None:
        await trio.sleep(self.net.latency)
        h = hashlib.sha256(data).digest()
        if h in self.seen or not self.running:
            return
        self.seen.add(h)
        outcome = await self.validator(topic, data, from_peer)
        self.net.delivered += 1
        if outcome.name == "ACCEPT":
            self._forward(topic, data, exclude=from_peer)

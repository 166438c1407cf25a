"""A userspace WAN between network namespaces: what ``tc netem`` would do, on kernels without it.

Why: the kernels of this project's machines are built without ``sch_netem``
(``CONFIG_NET_SCH_NETEM`` is not set in /proc/config.gz; ``tc qdisc add ... netem`` answers
"Specified qdisc kind is unknown"), and no other qdisc of theirs can delay packets. So
``scripts/devnet up --netns --wan`` wires the nodes through this relay instead of a bridge.

How it works
------------
Each node namespace gets a TUN device ``eth0`` (``10.213.0.<i+1>/24``), created *inside*
the namespace (the relay enters it with ``setns`` to open it), whose other end is a file
descriptor of this process. For every IPv4 packet node i sends, the relay applies node i's
egress link, as netem on i's interface would:

* **loss**: dropped with probability ``loss`` (TCP retransmits it);
* **rate**: the packet leaves when i's link is free and takes ``bytes / rate`` to send; a
  link whose backlog exceeds ``limit`` packets' worth drops the packet (netem's ``limit``);
* **delay**: it reaches the destination ``delay_i`` ± ``jitter`` (normal) later, but never
  before an earlier packet of the same (source, destination) pair (netem with jitter
  reorders packets; TCP then sees spurious losses, which a real WAN path rarely shows);
* **partition**: while ``<root>/partition.json`` lists a cut set of nodes, packets between
  that set and the rest are dropped silently (a cut cable, as the bridge mode does).

A pair's RTT is ``delay_i + delay_j`` (+ serialization). The interface counters of each
namespace's ``eth0`` count what the node sent and what the relay delivered to it, IP bytes.
The relay runs at a raised priority (nice -10) so that 50 busy nodes on 2 cores delay its
timers as little as possible; what is left shows as extra jitter (``stats`` says how late
deliveries were).

    python -m devtools.linkemu --root .devnet      (started and stopped by devtools.netns)
"""
from __future__ import annotations

import ctypes
import fcntl
import heapq
import json
import os
import random
import selectors
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
MTU = 1500
READY_FILE = "linkemu.ready"
STATS_FILE = "linkemu.json"
PARTITION_FILE = "partition.json"


@dataclass(frozen=True)
class Shaping:
    """Per-node egress link of a shaped devnet (the same for every node except the delay,
    drawn per node from [delay_min_ms, delay_max_ms] with ``seed``)."""

    delay_min_ms: float = 20.0
    delay_max_ms: float = 100.0
    jitter_ms: float = 5.0
    loss: float = 0.01              # probability per packet
    rate_mbit: float = 20.0         # 0 = unlimited
    limit_packets: int = 1000
    seed: int = 1

    def delays_ms(self, n: int) -> list[float]:
        rng = random.Random(self.seed)
        return [round(rng.uniform(self.delay_min_ms, self.delay_max_ms), 3) for _ in range(n)]

    def as_dict(self) -> dict:
        return asdict(self)


#: ``--wan`` of issue #21: RTT 40-200 ms between any two nodes, 1% loss, 20 Mbit/s.
WAN = Shaping()


def _setns(path: str) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns({path}): {os.strerror(e)}")
    finally:
        os.close(fd)


def open_tun(ns: str, name: str = "eth0") -> int:
    """Create TUN device ``name`` inside namespace ``ns``; return its non-blocking fd."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(f"/var/run/netns/{ns}")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        finally:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the relay's own namespace failed")
    finally:
        os.close(own)
    return fd


class Relay:
    def __init__(self, root: Path, layout: dict):
        self.root = Path(root)
        self.shaping = Shaping(**layout["shaping"])
        nodes = layout["nodes"]
        self.n = len(nodes)
        self.delay = [d / 1000.0 for d in layout["delays_ms"]]
        self.subnet = bytes(int(x) for x in layout["subnet"].split("."))
        sh = self.shaping
        self.rate = sh.rate_mbit * 1e6 / 8 if sh.rate_mbit > 0 else 0.0
        self.limit_s = sh.limit_packets * MTU / self.rate if self.rate else float("inf")
        self.rng = random.Random(sh.seed * 7 + 1)
        self.fds: list[int] = []
        for i in range(self.n):
            e = nodes[str(i)]
            fd = open_tun(e["ns"])
            self.fds.append(fd)
            subprocess.run(["ip", "-n", e["ns"], "addr", "add", f"{e['addr']}/24", "dev", "eth0"], check=True)
            subprocess.run(["ip", "-n", e["ns"], "link", "set", "eth0", "mtu", str(MTU), "up"], check=True)
            subprocess.run(["ip", "-n", e["ns"], "link", "set", "lo", "up"], check=True)
        self.link_free = [0.0] * self.n
        self.last: dict[tuple[int, int], float] = {}
        self.heap: list = []
        self.seq = 0
        self.cut: set[int] = set()
        self._part_mtime = None
        self.stats = {"packets": 0, "dropped_loss": 0, "dropped_limit": 0, "dropped_cut": 0, "dropped_other": 0,
                      "late_ms_max": 0.0, "late_ms_sum": 0.0, "delivered": 0}

    def _check_partition(self) -> None:
        p = self.root / PARTITION_FILE
        try:
            m = p.stat().st_mtime_ns
        except FileNotFoundError:
            m = None
        if m != self._part_mtime:
            self._part_mtime = m
            self.cut = set(json.loads(p.read_text()).get("cut", [])) if m is not None else set()

    def _take(self, i: int, pkt: bytes, now: float) -> None:
        st = self.stats
        st["packets"] += 1
        if len(pkt) < 20 or pkt[0] >> 4 != 4 or pkt[16:19] != self.subnet[:3]:
            st["dropped_other"] += 1
            return
        j = pkt[19] - 1
        if not 0 <= j < self.n or j == i:
            st["dropped_other"] += 1
            return
        if (i in self.cut) != (j in self.cut):
            st["dropped_cut"] += 1
            return
        sh = self.shaping
        if sh.loss and self.rng.random() < sh.loss:
            st["dropped_loss"] += 1
            return
        start = max(now, self.link_free[i])
        if start - now > self.limit_s:
            st["dropped_limit"] += 1
            return
        if self.rate:
            start += len(pkt) / self.rate
            self.link_free[i] = start
        at = start + self.delay[i]
        if sh.jitter_ms:
            at = max(start, at + self.rng.gauss(0.0, sh.jitter_ms / 1000.0))
        key = (i, j)
        at = max(at, self.last.get(key, 0.0))
        self.last[key] = at
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, j, pkt))

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        for i, fd in enumerate(self.fds):
            sel.register(fd, selectors.EVENT_READ, i)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        signal.signal(signal.SIGINT, lambda *_: stop.append(1))
        (self.root / READY_FILE).write_text(str(os.getpid()))
        next_check = 0.0
        heap = self.heap
        while not stop:
            now = time.monotonic()
            if now >= next_check:
                self._check_partition()
                self._write_stats()
                next_check = now + 0.25
            timeout = min(0.05, max(0.0, heap[0][0] - now)) if heap else 0.05
            for key, _ in sel.select(timeout):
                i = key.data
                fd = self.fds[i]
                for _ in range(256):
                    try:
                        pkt = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    self._take(i, pkt, time.monotonic())
            now = time.monotonic()
            st = self.stats
            while heap and heap[0][0] <= now:
                at, _, j, pkt = heapq.heappop(heap)
                late = (now - at) * 1000.0
                st["late_ms_sum"] += late
                if late > st["late_ms_max"]:
                    st["late_ms_max"] = late
                st["delivered"] += 1
                try:
                    os.write(self.fds[j], pkt)
                except OSError:
                    st["dropped_other"] += 1
        self._write_stats()

    def _write_stats(self) -> None:
        tmp = self.root / (STATS_FILE + ".tmp")
        tmp.write_text(json.dumps(self.stats))
        tmp.replace(self.root / STATS_FILE)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m devtools.linkemu", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="devnet directory holding netns.json")
    args = p.parse_args(argv)
    root = Path(args.root)
    layout = json.loads((root / "netns.json").read_text())
    try:
        os.nice(-10)
    except OSError:
        pass
    relay = Relay(root, layout)
    relay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Network namespaces for a devnet: one virtual host per node, partitions by rewiring a bridge.

How it works
------------
``scripts/devnet up --netns`` asks ``setup`` for one namespace per node plus a
"hub" namespace (names ``lm<token>-<i>`` and ``lm<token>-hub``, the token is
random per devnet, so parallel devnets never collide). Each node namespace has
``lo`` and ``eth0`` = ``10.213.0.<i+1>/24``, one end of a veth pair whose other
end (``n<i>``) sits in the hub, enslaved to bridge ``br0``. Nothing is created
in the host's own namespace: every interface is born inside a namespace, and
the addresses exist only inside them. Nodes are started with
``ip netns exec <ns> labelmesh run`` (the RPC socket is a file in the data dir,
so it is reachable from the host as usual).

A partition moves the hub ports of one side to a second bridge ``br1`` (not
connected to ``br0``): packets between the sides are silently dropped, as with a
cut cable, and TCP connections hang rather than reset — the hard case for a
p2p node. ``heal`` moves every port back to ``br0``. ``teardown`` deletes the
namespaces (which deletes their interfaces). The layout is recorded in
``<devnet>/netns.json`` so that ``down``, ``chaos`` and a later ``up`` can find it.

Requires root (or CAP_NET_ADMIN) and iproute2. ``available()`` probes both and
says why not, so callers can fall back to loopback.

**Shaped links** (``setup(..., shaping=WAN)``, ``scripts/devnet up --netns --wan``): this
machine's kernels have no ``sch_netem``, so instead of the hub and its bridge the node
namespaces are wired through one relay process (``devtools/linkemu.py``) that applies each
node's egress delay, jitter, loss and rate, and drops packets across a partition while
``partition.json`` lists a cut set. Everything else is the same: addresses, ports,
``exec_prefix``, ``partition``/``heal``, ``teardown`` (which also stops the relay).
``link_bytes`` reads every node's ``eth0`` counters in both modes.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .errors import DevtoolsError

SUBNET = "10.213.0"
PORT = 4001
_FILE = "netns.json"


class NetnsError(DevtoolsError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {r.stderr.strip() or r.returncode}")
    return r


def available() -> tuple[bool, str]:
    """(True, "") if this machine lets us create namespaces, else (False, why)."""
    if not shutil.which("ip"):
        return False, "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    name = f"lmprobe{secrets.token_hex(3)}"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return False, f"`ip netns add` refused: {r.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return True, ""


def load(root: Path) -> dict | None:
    p = Path(root) / _FILE
    return json.loads(p.read_text()) if p.exists() else None


def setup(root: Path, n: int, shaping=None) -> dict:
    """Create the hub and ``n`` node namespaces (or, with ``shaping``, the namespaces and
    the link relay); record and return the layout."""
    if shaping is not None:
        return _setup_relay(Path(root), n, shaping)
    token = secrets.token_hex(3)
    hub = f"lm{token}-hub"
    layout = {"token": token, "hub": hub, "nodes": {}, "partitioned": []}
    created: list[str] = []
    try:
        _ip("netns", "add", hub)
        created.append(hub)
        layout_path = Path(root) / _FILE
        layout_path.write_text(json.dumps({**layout, "namespaces": created}, indent=1))
        for br in ("br0", "br1"):
            _ip("-n", hub, "link", "add", br, "type", "bridge")
            _ip("-n", hub, "link", "set", br, "up")
        for i in range(n):
            ns = f"lm{token}-{i}"
            _ip("netns", "add", ns)
            created.append(ns)
            layout_path.write_text(json.dumps({**layout, "namespaces": created}, indent=1))
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"n{i}", "netns", hub)
            _ip("-n", hub, "link", "set", f"n{i}", "master", "br0")
            _ip("-n", hub, "link", "set", f"n{i}", "up")
            addr = f"{SUBNET}.{i + 1}"
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            layout["nodes"][str(i)] = {"ns": ns, "addr": addr, "port": PORT}
    except BaseException:
        for ns in created:
            _ip("netns", "del", ns, check=False)
        (Path(root) / _FILE).unlink(missing_ok=True)
        raise
    layout["namespaces"] = created
    (Path(root) / _FILE).write_text(json.dumps(layout, indent=1))
    return layout


def _setup_relay(root: Path, n: int, shaping) -> dict:
    from . import linkemu

    if not os.path.exists("/dev/net/tun"):
        raise NetnsError("shaped links need /dev/net/tun (the link relay's TUN devices)")
    token = secrets.token_hex(3)
    layout = {"token": token, "nodes": {}, "partitioned": [], "relay": None, "subnet": SUBNET,
              "shaping": shaping.as_dict(), "delays_ms": shaping.delays_ms(n), "namespaces": []}
    path = Path(root) / _FILE
    try:
        for i in range(n):
            ns = f"lm{token}-{i}"
            _ip("netns", "add", ns)
            layout["namespaces"].append(ns)
            layout["nodes"][str(i)] = {"ns": ns, "addr": f"{SUBNET}.{i + 1}", "port": PORT}
            path.write_text(json.dumps(layout, indent=1))
        ready = Path(root) / linkemu.READY_FILE
        ready.unlink(missing_ok=True)
        log = open(Path(root) / "linkemu.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "devtools.linkemu", "--root", str(Path(root).resolve())],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        layout["relay"] = proc.pid
        path.write_text(json.dumps(layout, indent=1))
        end = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > end:
                raise NetnsError(f"the link relay did not start (see {Path(root) / 'linkemu.log'})")
            time.sleep(0.05)
    except BaseException:
        teardown(root)
        raise
    return layout


def _relay_alive(pid: int) -> bool:
    try:
        return b"devtools.linkemu" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def link_bytes(root: Path) -> dict[int, tuple[int, int]]:
    """Per node, (bytes sent, bytes received) on its ``eth0`` so far (IP bytes through the
    relay; Ethernet frames on the bridge)."""
    layout = load(root)
    out = {}
    for i, e in (layout or {}).get("nodes", {}).items():
        r = _ip("-n", e["ns"], "-s", "-j", "link", "show", "dev", "eth0")
        st = json.loads(r.stdout)[0]["stats64"]
        out[int(i)] = (int(st["tx"]["bytes"]), int(st["rx"]["bytes"]))
    return out


def listen_addr(layout: dict, i: int) -> str:
    e = layout["nodes"][str(i)]
    return f"/ip4/{e['addr']}/tcp/{e['port']}"


def exec_prefix(root: Path, i: int) -> list[str]:
    """Command prefix that runs a program inside node ``i``'s namespace ([] without netns)."""
    layout = load(root)
    if not layout or str(i) not in layout["nodes"]:
        return []
    return ["ip", "netns", "exec", layout["nodes"][str(i)]["ns"]]


def partition(root: Path, side: list[int]) -> None:
    """Cut nodes ``side`` off from the others (they still reach each other)."""
    layout = load(root)
    if not layout:
        raise NetnsError("this devnet has no network namespaces (start it with `up --netns`)")
    if layout.get("relay"):
        layout["partitioned"] = sorted(set(layout["partitioned"]) | set(side))
        _write_cut(root, layout["partitioned"])
        (Path(root) / _FILE).write_text(json.dumps(layout, indent=1))
        return
    for i in side:
        _ip("-n", layout["hub"], "link", "set", f"n{i}", "master", "br1")
    layout["partitioned"] = sorted(set(layout["partitioned"]) | set(side))
    (Path(root) / _FILE).write_text(json.dumps(layout, indent=1))


def heal(root: Path) -> None:
    """Put every node back on the same bridge."""
    layout = load(root)
    if not layout:
        return
    if layout.get("relay"):
        _write_cut(root, [])
    for i in ([] if layout.get("relay") else layout["nodes"]):
        _ip("-n", layout["hub"], "link", "set", f"n{i}", "master", "br0", check=False)
    layout["partitioned"] = []
    (Path(root) / _FILE).write_text(json.dumps(layout, indent=1))


def _write_cut(root: Path, cut: list[int]) -> None:
    from .linkemu import PARTITION_FILE

    tmp = Path(root) / (PARTITION_FILE + ".tmp")
    tmp.write_text(json.dumps({"cut": sorted(cut)}))
    tmp.replace(Path(root) / PARTITION_FILE)


def teardown(root: Path) -> int:
    """Stop the link relay (if any) and delete every namespace this devnet created;
    return how many."""
    layout = load(root)
    if not layout:
        return 0
    pid = layout.get("relay")
    if pid and _relay_alive(pid):
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 10
        while _relay_alive(pid) and time.monotonic() < end:
            time.sleep(0.05)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if _relay_alive(pid):
            os.kill(pid, signal.SIGKILL)
    k = 0
    for ns in layout.get("namespaces", []):
        if _ip("netns", "del", ns, check=False).returncode == 0:
            k += 1
    (Path(root) / _FILE).unlink(missing_ok=True)
    return k

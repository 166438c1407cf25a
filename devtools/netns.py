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
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
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


def setup(root: Path, n: int) -> dict:
    """Create the hub and ``n`` node namespaces; record and return the layout."""
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
    for i in side:
        _ip("-n", layout["hub"], "link", "set", f"n{i}", "master", "br1")
    layout["partitioned"] = sorted(set(layout["partitioned"]) | set(side))
    (Path(root) / _FILE).write_text(json.dumps(layout, indent=1))


def heal(root: Path) -> None:
    """Put every node back on the same bridge."""
    layout = load(root)
    if not layout:
        return
    for i in layout["nodes"]:
        _ip("-n", layout["hub"], "link", "set", f"n{i}", "master", "br0", check=False)
    layout["partitioned"] = []
    (Path(root) / _FILE).write_text(json.dumps(layout, indent=1))


def teardown(root: Path) -> int:
    """Delete every namespace this devnet created; return how many."""
    layout = load(root)
    if not layout:
        return 0
    k = 0
    for ns in layout.get("namespaces", []):
        if _ip("netns", "del", ns, check=False).returncode == 0:
            k += 1
    (Path(root) / _FILE).unlink(missing_ok=True)
    return k

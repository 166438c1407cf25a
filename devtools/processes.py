"""The node processes of a devnet: start, stop and recognise them, call their RPC socket,
and wait for a condition. Shared by ``devnet`` (which makes devnets) and ``chaos``
(which hurts them); ``<root>/pids.json`` records what was started."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .errors import DevtoolsError


class DevnetError(DevtoolsError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rpc(root: Path, i: int, method: str, params=None, timeout: float = 30.0):
    """Call ``method`` on devnet node ``i`` (its RPC socket) and return the result."""
    from node.rpc import RpcClient

    with RpcClient(root / f"node-{i}" / "node.sock", timeout=timeout) as c:
        return c.call(method, params or {})


def poll(cond, timeout: float, what: str, *, interval: float = 0.2, retry_on: tuple = (Exception,),
         error: type[Exception] = DevnetError):
    """Call ``cond`` every ``interval`` s until it returns something truthy (returned) or
    ``timeout`` s pass (``error`` naming ``what`` and the last error). Exceptions of the
    ``retry_on`` types (a node still starting, busy or restarting) count as "not yet"."""
    deadline = time.monotonic() + timeout
    last_err = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except retry_on as e:
            last_err = e
        time.sleep(interval)
    raise error(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last_err!r})" if last_err else ""))


def read_pids(root: Path) -> dict:
    """{node index (str): {"pid", "data_dir"}} of the processes this devnet started."""
    p = root / "pids.json"
    return json.loads(p.read_text()) if p.exists() else {}


def is_alive(pid: int, data_dir: str) -> bool:
    """Whether ``pid`` is a live (not zombie) node process serving ``data_dir``."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except OSError:
        return False
    return data_dir in cmd


def start_node(root: Path, i: int) -> int:
    dd = (root / f"node-{i}").resolve()  # absolute: `down` recognises its processes by this path
    log = open(dd / "node.log", "ab")
    from .netns import exec_prefix  # [] unless the devnet was started with --netns
    proc = subprocess.Popen([*exec_prefix(root, i), sys.executable, "-m", "node.cli", "run", "--data-dir", str(dd)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    pids = read_pids(root)
    pids[str(i)] = {"pid": proc.pid, "data_dir": str(dd)}
    (root / "pids.json").write_text(json.dumps(pids, indent=1))
    return proc.pid


def stop_node(root: Path, i: int, sig=signal.SIGTERM, timeout: float = 15.0) -> None:
    ent = read_pids(root).get(str(i))
    if not ent:
        return
    pid, dd = ent["pid"], ent["data_dir"]
    if not is_alive(pid, dd):
        return
    os.kill(pid, sig)
    end = time.monotonic() + timeout
    while time.monotonic() < end and is_alive(pid, dd):
        time.sleep(0.05)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    if is_alive(pid, dd):
        os.kill(pid, signal.SIGKILL)

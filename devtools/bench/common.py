"""Helpers shared by the sub-benchmarks: figures, statistics, process footprint and
throw-away devnets (RPC through node.rpc's one client)."""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from node.rpc.client import RpcClient

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    """Progress goes to stderr, so ``--json`` keeps stdout clean."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def figure(name: str, value, unit: str, *, limit=None, target=None, higher_is_better: bool = True,
           note: str = "") -> dict:
    """One reported figure. ``ratio`` = value / limit when a limit applies."""
    f = {"name": name, "value": _round(value), "unit": unit}
    if limit is not None and limit > 0 and value is not None:
        f["limit"] = _round(limit)
        f["ratio"] = round(value / limit, 3)
    if target is not None:
        f["target"] = target
        if value is not None:
            f["meets_target"] = bool(value >= target if higher_is_better else value <= target)
    if note:
        f["note"] = note
    return f


def _round(v):
    if isinstance(v, float):
        if abs(v) >= 100:
            return round(v, 1)
        return round(v, 4)
    return v


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def percentile(xs, q: float):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(xs)
    if not s:
        return None
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


# ------------------------------------------------------------------ process footprint

def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_split_mb(pid: int) -> tuple[float, float]:
    """(anonymous, file-backed) resident MB: LMDB's memory-mapped pages count as file-backed."""
    anon = file = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            anon = int(line.split()[1]) / 1024
        elif line.startswith("RssFile:") or line.startswith("RssShmem:"):
            file += int(line.split()[1]) / 1024
    return anon, file


def cpu_s(pid: int) -> float:
    """User + system CPU seconds used by ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_pids(pid: int) -> list[int]:
    """Live child processes of ``pid`` (e.g. a node's signature helpers, node/core/verifier.py)."""
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            out += [int(k) for k in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


def children_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of each live child process of ``pid``."""
    out = {}
    for k in children_pids(pid):
        try:
            out[k] = cpu_s(k)
        except OSError:
            pass
    return out


def children_rss_mb(pid: int) -> float:
    """VmRSS of ``pid``'s live child processes, together."""
    total = 0.0
    for k in children_pids(pid):
        try:
            total += rss_mb(k)
        except OSError:
            pass
    return total


def reaped_children_cpu_s(pid: int) -> float:
    """cutime + cstime: CPU seconds of ``pid``'s children that it has already waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / CLK_TCK


class CpuMeter:
    """CPU % of one core used by a set of processes between start() and stop().

    With ``children=True`` a process's figure includes its child processes (a node's
    signature helpers, node/core/verifier.py): live children, children born during the
    window (all of their CPU) and children reaped during it."""

    def __init__(self, pids, children: bool = False):
        self.pids = list(pids)
        self.children = children

    def _sample(self, p: int) -> tuple[float, dict[int, float]]:
        if not self.children:
            return cpu_s(p), {}
        return cpu_s(p) + reaped_children_cpu_s(p), children_cpu_s(p)

    def start(self):
        self.t0 = time.monotonic()
        self.c0 = {p: self._sample(p) for p in self.pids}
        return self

    def stop(self) -> dict[int, float]:
        dt = time.monotonic() - self.t0
        out = {}
        for p in self.pids:
            own0, kids0 = self.c0[p]
            own1, kids1 = self._sample(p)
            used = (own1 - own0 + sum(c - kids0.get(k, 0.0) for k, c in kids1.items())
                    - sum(c for k, c in kids0.items() if k not in kids1))  # reaped: counted in own1 whole
            out[p] = 100.0 * used / dt
        return out


def dir_bytes(path: Path) -> int:
    """Bytes of disk actually allocated under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


# ------------------------------------------------------------------ RPC

# ------------------------------------------------------------------ devnets

class Devnet:
    """A throw-away devnet of ``n`` real node processes (``devtools.devnet.up``; with
    ``netns`` or ``shaping``, one network namespace each, links shaped with ``shaping``) in
    a short temporary directory; ``close()`` stops exactly its processes and removes it
    (and its namespaces). ``web``: every node serves its web UI (off by default: it
    changes the footprint)."""

    def __init__(self, n: int, prefix: str = "lmb", shaping=None, web: bool = False, balances=(),
                 netns: bool = False):
        from devtools import devnet, processes

        self.devnet = devnet
        self.processes = processes
        self.root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.n = n
        try:
            self.meta = devnet.up(self.root, n, netns=netns or shaping is not None, shaping=shaping, web=web,
                                  balances=balances)
        except BaseException:
            self.close()
            raise
        self.network_id = bytes.fromhex(self.meta["network_id"])
        self.clients: dict[int, RpcClient] = {}

    def sock(self, i: int) -> Path:
        return self.root / f"node-{i}" / "node.sock"

    def rpc(self, i: int, method: str, params=None, timeout: float = 60.0):
        return self.processes.rpc(self.root, i, method, params or {}, timeout=timeout)

    def client(self, i: int) -> RpcClient:
        c = self.clients.get(i)
        if c is None:
            c = self.clients[i] = RpcClient(self.sock(i), timeout=120.0)
        return c

    def pid(self, i: int) -> int:
        return self.processes.read_pids(self.root)[str(i)]["pid"]

    def pids(self) -> list[int]:
        return [self.pid(i) for i in range(self.n)]

    def close(self):
        for c in getattr(self, "clients", {}).values():
            try:
                c.close()
            except OSError:
                pass
        try:
            self.devnet.down(self.root)
        except Exception as e:  # pragma: no cover - reported, never hidden
            log(f"devnet down in {self.root} failed: {e}")
            raise
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wait_until(cond, timeout: float, what: str, interval: float = 0.05):
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def post_task(net: Devnet, node: int, n_items: int, n_classes: int, duration_s: float, title: str = "bench") -> dict:
    """Post a task signed by the devnet's funded requester; returns task_post's result."""
    labels = [f"c{k}" for k in range(n_classes)]
    return net.rpc(node, "task_post", {"account": "requester", "title": title, "labels": labels,
                                        "items": [f"i{k}" for k in range(n_items)], "duration_s": duration_s,
                                        "bounty": 1_000_000, "redundancy": 3})


def run_threads(fn, args_list):
    """Run ``fn(*args)`` for each args tuple in its own thread; re-raise the first error."""
    errors = []

    def wrap(*a):
        try:
            fn(*a)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    ts = [threading.Thread(target=wrap, args=a, daemon=True) for a in args_list]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


# ------------------------------------------------------------------ signed workload

_KEYS: list = []


def annotator_keys(n: int):
    """``n`` deterministic annotator signing keys (bench-only seeds)."""
    import nacl.signing

    while len(_KEYS) < n:
        k = len(_KEYS)
        _KEYS.append(nacl.signing.SigningKey(b"labelmesh-bench\x00" + k.to_bytes(16, "big")))
    return _KEYS[:n]


def make_batches(network_id: bytes, task_id: bytes, *, n_msgs: int, labels_per_msg: int, n_items: int,
                 n_classes: int, t_base_ms: int, first: int = 0, n_annotators: int = 1000, seed: int = 1) -> list[bytes]:
    """Signed AnnotationBatch envelopes (raw bytes), all distinct.

    Message k (counting from ``first``) is signed by annotator ``k % n_annotators`` with
    created_at ``t_base_ms + k // n_annotators`` (so (annotator, created_at) is unique),
    and labels ``labels_per_msg`` consecutive items (mod ``n_items``) with pseudo-random
    classes. An annotator's successive messages label successive items, as an honest
    annotator does: none is made redundant by the keep rule (PROTOCOL.md 6.3) while one
    annotator's messages to a task label at most ``n_items`` items in all.
    """
    import random

    from protocol.messages import AnnotationBatch, sign_message

    keys = annotator_keys(n_annotators)
    pubs = [bytes(k.verify_key) for k in keys]
    rng = random.Random(seed * 1_000_003 + first)
    if labels_per_msg > n_items:
        raise ValueError(f"a batch of {labels_per_msg} labels needs at least as many items, not {n_items}")
    out = []
    for k in range(first, first + n_msgs):
        a = k % n_annotators
        start = ((k // n_annotators) * labels_per_msg + a * 7919) % n_items
        labels = tuple(sorted(((start + j) % n_items, rng.randrange(n_classes)) for j in range(labels_per_msg)))
        b = AnnotationBatch(annotator=pubs[a], task_id=task_id, created_at=t_base_ms + k // n_annotators,
                            labels=labels)
        out.append(sign_message(b, keys[a], network_id).raw)
    return out


DETAILS: dict[str, str] = {}
"""Extra markdown sections (title -> body) a benchmark wants in BENCHMARKS.md."""

"""Signature checks of big message groups, off the event loop, in helper processes.

Why processes and not threads
-----------------------------
libsodium runs without the GIL, but every ``crypto_sign_open`` call re-takes the GIL
for pynacl's few microseconds of Python around it. While the trio thread is busy
(decoding the next RPC request, validating, storing), a worker thread that wants the
GIL back waits for the interpreter's switch interval (5 ms) on each call. Measured on
this project's machine (2 cores): one thread verifying alone 16.7k/s; next to a Python
thread busy 50 % of the time 8.0k/s, 80 % 3.1k/s, 100 % 0.2k/s. So verifying in
threads only overlaps with the event loop's idle time: one RPC message costs
verify + everything else, serially, and ``ingest_batch_1`` stayed at ~0.5-0.64 of the
single-core verify rate. A helper process has its own interpreter and GIL, so the
node's second core really verifies while the first decodes and stores.

How it works
------------
``Verifier.verify(msgs)`` sends one request per group -- for each message the
(public key, signature || signed bytes) that ``protocol.messages.verify_signature``
checks (``signature_check_input``: the same function, so the same answer) -- over a
pipe to ``node/core/verify_worker.py`` and awaits one byte per message, without blocking
the event loop (trio pipes). Requests are pipelined: a group is written as soon as it
is decoded (the pipe is enlarged to hold several), so the helper goes from one group
to the next without waiting for the busy event loop to read an answer and send the
next request (without that, the helper idled ~25 % of the time and batch-1 ingest
reached only ~0.65 of the verify limit). At most ``processes`` helpers (a new one only
when every helper is busy); they start on first use (~0.1 s) and one unused for
``idle_s`` is stopped (a node without bulk traffic keeps none; a helper also exits by
itself after 2 x ``idle_s`` without a request). A helper that cannot start, dies or
answers nonsense costs nothing but speed: the group is verified in a thread as before
(``failures`` counts it, a warning is logged) and helpers are not tried again for
``RETRY_AFTER_S``. A request cancelled half-way leaves its helper's pipe out of step:
that helper is dropped and the other requests on it are sent again to a new one.
Helpers exit when the node closes their pipe or dies (even by ``kill -9``: they read
EOF); ``aclose`` kills and reaps them. ``processes=0`` means threads only (the default
of in-process nodes; ``labelmesh run`` uses ``auto_processes()``).
"""
from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

import trio

from protocol.messages import SignedMessage, signature_check_input, verify_signature

from ..errors import NodeError

log = logging.getLogger("labelmesh.node")

WORKER_SCRIPT = str(Path(__file__).with_name("verify_worker.py"))
RETRY_AFTER_S = 10.0
IDLE_S = 10.0  # a helper unused this long is stopped (~12 MB RSS each); restarting one takes ~0.1 s
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
MAX_AUTO_PROCESSES = 4
MAX_FORCED_PROCESSES = 64  # LABELMESH_VERIFY_PROCESSES is clamped to 0..this


def auto_processes(env=None) -> int:
    """Helpers for this machine: one per core but one (the event loop's), at least 1, at most 4;
    ``LABELMESH_VERIFY_PROCESSES=N`` overrides it (0 = verify in threads of the node process;
    clamped to 0..MAX_FORCED_PROCESSES; not an integer: a warning, and the automatic count)."""
    env = os.environ if env is None else env
    forced = env.get("LABELMESH_VERIFY_PROCESSES", "").strip()
    if forced:
        try:
            n = int(forced)
        except ValueError:
            log.warning("LABELMESH_VERIFY_PROCESSES=%r is not an integer; ignored", forced)
        else:
            if not 0 <= n <= MAX_FORCED_PROCESSES:
                log.warning("LABELMESH_VERIFY_PROCESSES=%d is outside 0..%d; using %d",
                            n, MAX_FORCED_PROCESSES, min(max(n, 0), MAX_FORCED_PROCESSES))
            return min(max(n, 0), MAX_FORCED_PROCESSES)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_AUTO_PROCESSES, cores - 1))


def verify_all(msgs: list[SignedMessage], network_id: bytes) -> list[bool]:
    """``verify_signature`` of each message, here and now (the thread / small-group path)."""
    return [verify_signature(m, network_id) for m in msgs]


class WorkerError(NodeError):
    """The helper failed (exited, answered nonsense, could not start) or was stopped."""


class _Request:
    __slots__ = ("count", "answer")

    def __init__(self, count: int):
        self.count = count
        self.answer: bytes | None = None


class _Worker:
    """One helper process. Requests are pipelined: a group is written as soon as it is
    ready (the pipe holds ``PIPE_BYTES``), so the helper starts on the next group the
    moment it answers one, without waiting for the busy event loop to read the answer.
    Answers come back in request order; whoever holds ``recv_lock`` reads them for
    everyone in ``pending`` until its own is in."""

    __slots__ = ("proc", "last_used", "load", "pending", "send_lock", "recv_lock", "broken")

    def __init__(self, proc: trio.Process):
        self.proc = proc
        self.last_used = trio.current_time()
        self.load = 0  # groups handed to this helper and not answered yet
        self.pending: deque[_Request] = deque()  # written to the pipe, answer not read yet (in order)
        self.send_lock = trio.Lock()
        self.recv_lock = trio.Lock()
        self.broken: BaseException | None = None  # why the pipe is out of step, once it is


PIPE_BYTES = 1 << 20  # Linux default /proc/sys/fs/pipe-max-size


class Verifier:
    def __init__(self, network_id: bytes, processes: int = 0, *, idle_s: float = IDLE_S):
        self.network_id = network_id
        self.processes = max(0, int(processes))
        self.idle_s = idle_s
        self._workers: list[_Worker] = []
        self._spawning = 0
        self._spawned_lot = trio.lowlevel.ParkingLot()
        self._dead: list[trio.Process] = []  # killed, not reaped yet
        self._retry_at = float("-inf")
        self._closed = False
        # counters (tests, metrics)
        self.spawned = 0
        self.failures = 0
        self.groups_in_process = 0
        self.groups_in_thread = 0

    async def verify(self, msgs: list[SignedMessage]) -> list[bool]:
        """``[verify_signature(m, network_id) for m in msgs]``, computed off the event loop."""
        self._reap()
        if self.processes and not self._closed and trio.current_time() >= self._retry_at:
            result = await self._verify_in_process(msgs)
            if result is not None:
                self.groups_in_process += 1
                return result
        self.groups_in_thread += 1
        return await trio.to_thread.run_sync(verify_all, msgs, self.network_id)

    async def _verify_in_process(self, msgs: list[SignedMessage]) -> list[bool] | None:
        nid = self.network_id
        parts, sent = [], []
        for k, m in enumerate(msgs):
            check = signature_check_input(m, nid)
            if check is not None:
                pk, signed = check
                parts += (pk, len(signed).to_bytes(4, "little"), signed)
                sent.append(k)
        out = [False] * len(msgs)
        if not sent:
            return out
        payload = b"".join(parts)
        frame = len(sent).to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload
        while True:
            w = None
            try:
                w = await self._pick()
                try:
                    answer = await self._exchange(w, frame, len(sent))
                finally:
                    w.load -= 1
                    w.last_used = trio.current_time()
                break
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, WorkerError) as e:
                if w is not None and isinstance(w.broken, trio.Cancelled):
                    # another request on this helper was cancelled half-way, so its pipe is out
                    # of step: not the helper's fault; drop it and send ours to a new one
                    self._discard(w)
                    continue
                if w is None or self._discard(w):  # one warning per helper that fails
                    log.warning("signature helper process failed (%s: %s); verifying in threads for %.0f s",
                                type(e).__name__, e, RETRY_AFTER_S)
                self.failures += 1
                self._retry_at = trio.current_time() + RETRY_AFTER_S
                return None
        for k, flag in zip(sent, answer):
            out[k] = flag == 1
        return out

    async def _pick(self) -> _Worker:
        """A helper with nothing to do, else a new one (up to ``processes``), else the least
        loaded. Its ``load`` is counted before returning (no checkpoint in between)."""
        while True:
            if self._closed or trio.current_time() < self._retry_at:
                raise WorkerError("helpers unavailable")
            for x in [x for x in self._workers if x.broken is not None]:
                self._discard(x)
            live = self._workers
            w = next((x for x in reversed(live) if not x.load), None)
            if w is None and len(live) + self._spawning < self.processes:
                self._spawning += 1
                try:
                    w = await self._spawn()
                finally:
                    self._spawning -= 1
                    self._spawned_lot.unpark_all()
                self._workers.append(w)
                if self._closed:  # the node stopped while this one was starting
                    self._discard(w)
                    raise WorkerError("stopped")
            if w is None and live:
                w = min(live, key=lambda x: x.load)
            if w is not None:
                w.load += 1
                return w
            await self._spawned_lot.park()  # another task is starting the only helper

    async def _exchange(self, w: _Worker, frame: bytes, count: int) -> bytes:
        req = _Request(count)
        async with w.send_lock:
            self._check(w)
            w.pending.append(req)
            try:
                await w.proc.stdin.send_all(frame)
            except BaseException as e:
                if w.broken is None:
                    w.broken = e  # a partly written request: the pipe is out of step
                raise
        async with w.recv_lock:
            while req.answer is None:
                self._check(w)
                head = w.pending[0]
                try:
                    head.answer = await self._read_answer(w, head.count)
                except BaseException as e:
                    if w.broken is None:
                        w.broken = e  # a partly read answer (or none): out of step
                    raise
                w.pending.popleft()
        return req.answer

    @staticmethod
    def _check(w: _Worker) -> None:
        if w.broken is not None:
            raise WorkerError(f"helper unusable ({type(w.broken).__name__})")

    @staticmethod
    async def _read_answer(w: _Worker, count: int) -> bytes:
        need = 4 + count
        buf = bytearray()
        while len(buf) < need:
            chunk = await w.proc.stdout.receive_some(need - len(buf))
            if not chunk:
                raise WorkerError(f"helper exited (status {w.proc.poll()})")
            buf += chunk
        if int.from_bytes(buf[:4], "little") != count:
            raise WorkerError("helper answered for a different request")
        return bytes(buf[4:])

    async def _spawn(self) -> _Worker:
        # -P: do not put node/ first on the helper's sys.path (it imports only the stdlib and nacl).
        # The helper stops by itself after 2 x idle_s without a request; we drop it after idle_s.
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-P", WORKER_SCRIPT, str(2 * self.idle_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.spawned += 1
        try:  # room for a few whole groups in the pipe: the helper never waits for the event loop
            fcntl.fcntl(proc.stdin.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass
        return _Worker(proc)

    def _discard(self, w: _Worker) -> bool:
        """Stop a helper; False if it was stopped already."""
        if w.broken is None:
            w.broken = WorkerError("stopped")
        if w not in self._workers:
            return False
        self._workers.remove(w)
        for s in (w.proc.stdin, w.proc.stdout):
            try:
                s.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        try:
            w.proc.kill()
        except OSError:
            pass
        self._dead.append(w.proc)
        return True

    def _reap(self) -> None:
        if self._dead:
            self._dead = [p for p in self._dead if p.poll() is None]
        now = trio.current_time()
        for w in list(self._workers):  # helpers unused for idle_s: stop them (memory back to the machine)
            if not w.load and now - w.last_used >= self.idle_s:
                self._discard(w)

    async def aclose(self) -> None:
        """Stop every helper (called when the node stops)."""
        self._closed = True
        for w in list(self._workers):
            self._discard(w)
        with trio.move_on_after(5):
            for p in self._dead:
                await p.wait()
        self._dead = [p for p in self._dead if p.poll() is None]

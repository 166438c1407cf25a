"""JSON-RPC 2.0 over a Unix socket, one JSON value per line (like bitcoind/geth IPC).

How it works
------------
The server listens on ``<data-dir>/node.sock``; the socket file is created with
mode 0600 (umask 0177 while binding) inside the data dir (mode 0700), so only
the owner can connect. Each connection is read line by line; a line is a
request object or a batch (array). Limits, all refused with a JSON-RPC error and
never a crash: a line over ``MAX_REQUEST_BYTES`` (-32600, then the connection is
closed since the stream cannot be resynchronised), a batch over ``MAX_BATCH``
(-32600), JSON nested too deeply, NaN/Infinity or integers beyond 64 bits
(-32700), more than ``MAX_CONNECTIONS`` clients (the connection that has waited
longest without sending a request -- idle or slow -- is closed to make room; only
if every connection is running a request is the newest told -32000 and closed),
a client idle for ``IDLE_TIMEOUT_S`` or not reading its answers for 60 s (closed).
A failure on one connection is logged and closes that connection only.

Error codes: -32700 parse error, -32600 invalid request, -32601 method not
found, -32602 invalid params, -32603 internal error, -32000..-32099 application
errors (see ``node/rpc/errors.py`` and ``node/rpc/methods/``).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import trio

from .errors import APP_ERROR, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, RpcError
from .wire import encode_reply, error_reply, is_big, parse_constant, parse_float, parse_int

log = logging.getLogger("labelmesh.rpc")

MAX_REQUEST_BYTES = 16 << 20
MAX_BATCH = 64
MAX_CONNECTIONS = 128
IDLE_TIMEOUT_S = 300.0
MAX_RESPONSE_BYTES = 256 << 20

#: A method: ``await fn(node, params) -> JSON-able result`` (raises RpcError).
Method = Callable[[object, dict], Awaitable[object]]


def _ensure_private_dir(d: Path, node) -> None:
    """The socket's directory must be ours and closed to everyone else (0700), so no
    other user can reach the socket or swap it. The node's own data dir is tightened
    if needed; any other directory is refused rather than changed."""
    st = os.stat(d)
    if st.st_uid != os.geteuid():
        raise OSError(f"{d} belongs to another user; refusing to put the RPC socket there")
    if stat.S_IMODE(st.st_mode) & 0o077:
        data_dir = getattr(node, "data_dir", None)
        if data_dir is None or Path(data_dir).resolve() != d.resolve():
            raise OSError(f"{d} is open to other users (mode {stat.S_IMODE(st.st_mode):o}); "
                          f"put the RPC socket in a directory with mode 0700")
        log.warning("data dir %s had mode %o; tightening it to 0700", d, stat.S_IMODE(st.st_mode))
        os.chmod(d, 0o700)


class _Conn:
    """One client connection: cancelled to evict it; ``busy`` while a request runs."""

    __slots__ = ("scope", "last_active", "busy")

    def __init__(self, scope: trio.CancelScope, last_active: float):
        self.scope = scope
        self.last_active = last_active
        self.busy = False


class RpcServer:
    """Serves ``methods`` (name -> Method, e.g. ``node.rpc.methods.METHODS``), each called
    with ``node``, on the Unix socket ``path``. Start with ``nursery.start(server.run)``."""

    def __init__(self, node, path: Path, methods: Mapping[str, Method]):
        self.node = node
        self.path = Path(path)
        self.methods = methods
        self.connections = 0
        self.calls = 0
        self.evicted = 0  # idle connections closed to make room for new clients
        self._conns: set[_Conn] = set()
        self.method_stats: dict[tuple[str, str], list] = {}  # (method, "ok" | error code) -> [calls, seconds]

    def _bind(self) -> trio.socket.SocketType:
        path = str(self.path)
        if len(path.encode()) > 100:
            raise OSError(f"socket path too long for a Unix socket: {path} (use a shorter --data-dir)")
        _ensure_private_dir(self.path.parent, self.node)
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise OSError(f"{path} exists and is not a socket; refusing to replace it (check rpc_socket)")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                probe.close()
                raise OSError(f"another node is already serving {path}")
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)  # stale socket of a dead node
            finally:
                probe.close()
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is born 0600: no window for other users
        try:
            raw.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        raw.listen(128)
        return trio.socket.from_stdlib_socket(raw)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        sock = self._bind()
        listener = trio.SocketListener(sock)
        task_status.started()
        try:
            await trio.serve_listeners(self._handle, [listener])
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self.connections >= MAX_CONNECTIONS and not self._evict_idlest():
            try:
                with trio.move_on_after(1):
                    await self._send(stream, error_reply(None, APP_ERROR,
                                                    f"too many RPC clients (max {MAX_CONNECTIONS}); retry later"))
            except Exception:
                pass
            finally:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            return
        self.connections += 1
        conn = _Conn(trio.CancelScope(), trio.current_time())
        self._conns.add(conn)
        buf = bytearray()
        scanned = 0  # bytes of buf already searched for a newline
        try:
            with conn.scope:
                while True:
                    nl = buf.find(b"\n", scanned)
                    if nl < 0:
                        scanned = len(buf)
                        if len(buf) > MAX_REQUEST_BYTES:
                            await self._send(stream, error_reply(None, INVALID_REQUEST,
                                                            f"request larger than {MAX_REQUEST_BYTES} bytes; split it"))
                            return
                        with trio.move_on_after(IDLE_TIMEOUT_S) as scope:
                            chunk = await stream.receive_some(1 << 16)
                        if scope.cancelled_caught or not chunk:
                            return
                        buf += chunk
                        continue
                    line = bytes(buf[:nl])
                    del buf[: nl + 1]
                    scanned = 0
                    if len(line) > MAX_REQUEST_BYTES:
                        await self._send(stream, error_reply(None, INVALID_REQUEST, f"request larger than {MAX_REQUEST_BYTES} bytes; split it"))
                        return
                    if not line.strip():
                        continue
                    conn.busy = True  # never evicted while busy: a request runs to its end
                    try:
                        reply = await self.handle_line(line)
                    finally:
                        conn.busy = False
                        conn.last_active = trio.current_time()
                    if reply is not None:
                        await self._send(stream, reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError, trio.TooSlowError):
            pass  # client went away, or does not read its answers: drop it
        except Exception:  # one client must never take the server (and the node) down
            log.exception("RPC connection failed")
        finally:
            self._conns.discard(conn)
            self.connections -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _evict_idlest(self) -> bool:
        """At capacity: close the connection that has waited longest without a request
        (idle or slow clients), so a new client is always served. False if all are busy."""
        idle = [c for c in self._conns if not c.busy and not c.scope.cancel_called]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_active)
        victim.scope.cancel()
        self.evicted += 1
        return True

    async def _send(self, stream, obj) -> None:
        if is_big(obj):
            chunks = await trio.to_thread.run_sync(encode_reply, obj)
        else:
            chunks = [json.dumps(obj, separators=(",", ":")).encode() + b"\n"]
        if sum(map(len, chunks)) > MAX_RESPONSE_BYTES:
            chunks = [json.dumps(error_reply(obj.get("id") if isinstance(obj, dict) else None, APP_ERROR,
                                        "response too large; ask for less (limit/offset)")).encode() + b"\n"]
        with trio.fail_after(60):
            for chunk in chunks:
                await stream.send_all(chunk)

    async def handle_line(self, line: bytes):
        """Answer one line: a request, a notification or a batch. Never raises."""
        try:
            req = json.loads(line, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)
        except (ValueError, UnicodeDecodeError) as e:
            return error_reply(None, PARSE_ERROR, f"parse error: {e}")
        except RecursionError:
            return error_reply(None, PARSE_ERROR, "parse error: JSON nested too deeply")
        if isinstance(req, list):
            if not req:
                return error_reply(None, INVALID_REQUEST, "empty batch")
            if len(req) > MAX_BATCH:
                return error_reply(None, INVALID_REQUEST, f"batch of {len(req)} requests; the limit is {MAX_BATCH}")
            out = [r for r in [await self._one(x) for x in req] if r is not None]
            return out or None
        return await self._one(req)

    async def _one(self, req) -> dict | None:
        if not isinstance(req, dict):
            return error_reply(None, INVALID_REQUEST, "a request must be a JSON object")
        id_ = req.get("id")
        if not isinstance(id_, (str, int, type(None))) or isinstance(id_, bool):
            return error_reply(None, INVALID_REQUEST, "id must be a string, an integer or null")
        is_notification = "id" not in req
        if req.get("jsonrpc") != "2.0":
            return error_reply(id_, INVALID_REQUEST, 'missing "jsonrpc": "2.0"')
        method = req.get("method")
        if not isinstance(method, str):
            return error_reply(id_, INVALID_REQUEST, "method must be a string")
        params = req.get("params", {})
        if isinstance(params, list):
            params = {"_args": params}
        if not isinstance(params, dict):
            return error_reply(id_, INVALID_PARAMS, "params must be an object")
        fn = self.methods.get(method)
        self.calls += 1
        if fn is None:
            self._record("(unknown)", str(METHOD_NOT_FOUND), 0.0)
            return None if is_notification else error_reply(
                id_, METHOD_NOT_FOUND, f"unknown method {method!r}; call rpc_methods for the list")
        started, code = time.perf_counter(), "ok"
        try:
            result = await fn(self.node, params)
        except RpcError as e:
            code = str(e.code)
            return None if is_notification else error_reply(id_, e.code, e.message, e.data)
        except Exception as e:  # a bug must not take the node down; log it, tell the client
            code = str(INTERNAL_ERROR)
            log.exception("RPC method %s failed", method)
            return None if is_notification else error_reply(id_, INTERNAL_ERROR, f"internal error: {type(e).__name__}: {e}")
        finally:
            self._record(method, code, time.perf_counter() - started)
        return None if is_notification else {"jsonrpc": "2.0", "id": id_, "result": result}

    def _record(self, method: str, code: str, seconds: float) -> None:
        """Per (method, outcome) call count and time, for metrics (node/services/metrics.py)."""
        st = self.method_stats.get((method, code))
        if st is None:
            st = self.method_stats[(method, code)] = [0, 0.0]
        st[0] += 1
        st[1] += seconds

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
errors (see ``node/api.py``).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger("labelmesh.rpc")

MAX_REQUEST_BYTES = 16 << 20
MAX_BATCH = 64
MAX_CONNECTIONS = 128
IDLE_TIMEOUT_S = 300.0
MAX_RESPONSE_BYTES = 256 << 20
#: A reply carrying a string of at least this many characters (task_export's content,
#: a blob) is JSON-encoded in a worker thread, in slices (_encode): Label Studio JSON of
#: 100,000 items is a 43 MB line; encoded on the loop it stalled gossip, sync and
#: finality for 0.17-0.26 s (measured), in slices in the thread the loop's longest gap was 7 ms.
THREAD_ENCODE_CHARS = 1 << 20
#: ... and so is a reply carrying a list of at least this many entries (a page of
#: annotations_list or consensus_get), one entry at a time: a page of 10,000 batches of
#: 100 labels took 0.28 s to encode in one go.
THREAD_ENCODE_ITEMS = 1_000

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
APP_ERROR = -32000          # generic application error
NOT_FOUND = -32001          # unknown task / message / account
REJECTED = -32002           # the message is invalid (reason in message)
STORE_FULL = -32003         # disk or map full: free space, the node resumes by itself
UNAVAILABLE = -32004        # e.g. no peer has a blob


def _encode(obj) -> list[bytes]:
    """One reply (or batch of replies) as a JSON line, in chunks of about _SEND_CHUNK
    bytes whose concatenation is ``json.dumps(obj, separators=(",", ":"))`` + newline.
    Strings of THREAD_ENCODE_CHARS or more in the top levels (batch -> reply -> result
    -> field -> entry) are escaped a slice at a time and never copied whole, and lists
    there are encoded an entry at a time: the C encoder holds the GIL for the whole of
    one call (0.14 s for a 40 MB string), so pieces let the event loop's thread run in
    between when this runs in a worker thread."""
    pieces: list[str] = []
    _dumps_into(obj, 4 if isinstance(obj, list) else 3, pieces)
    pieces.append("\n")
    chunks, group, size = [], [], 0
    for piece in pieces:
        group.append(piece)
        size += len(piece)
        if size >= _SEND_CHUNK:
            chunks.append("".join(group).encode())
            group, size = [], 0
    if group:
        chunks.append("".join(group).encode())
    return chunks


def _dumps_into(obj, depth: int, out: list[str]) -> None:
    if isinstance(obj, str) and len(obj) >= THREAD_ENCODE_CHARS:
        # JSON escaping is per code point, so slices escape independently
        out.append('"')
        out.extend(json.dumps(obj[i:i + _ESCAPE_SLICE])[1:-1] for i in range(0, len(obj), _ESCAPE_SLICE))
        out.append('"')
    elif depth > 0 and isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        out.append("{")
        for n, (k, v) in enumerate(obj.items()):
            out.append(("," if n else "") + json.dumps(k) + ":")
            _dumps_into(v, depth - 1, out)
        out.append("}")
    elif depth > 0 and isinstance(obj, list):
        out.append("[")
        for n, v in enumerate(obj):
            if n:
                out.append(",")
            _dumps_into(v, depth - 1, out)
        out.append("]")
    else:
        out.append(json.dumps(obj, separators=(",", ":")))


_SEND_CHUNK = 1 << 17
_ESCAPE_SLICE = 1 << 16


def _is_big(obj) -> bool:
    """Whether a reply (or a batch of replies) has a result field holding a string of
    THREAD_ENCODE_CHARS or more characters or a list of THREAD_ENCODE_ITEMS or more
    entries (such replies are encoded in a worker thread).  Looks at the top level of
    each result only: the methods that return big payloads (task_export's content,
    blob_get's data, the pages of annotations_list and consensus_get) return them there."""
    for reply in obj if isinstance(obj, list) else (obj,):
        result = reply.get("result") if isinstance(reply, dict) else None
        if isinstance(result, dict) and any(
                (isinstance(v, str) and len(v) >= THREAD_ENCODE_CHARS)
                or (isinstance(v, list) and len(v) >= THREAD_ENCODE_ITEMS) for v in result.values()):
            return True
    return False


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def _error(id_, code, message, data=None) -> dict:
    e = {"code": code, "message": message}
    if data is not None:
        e["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": e}


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


def _parse_int(text: str) -> int:
    # Every integer of the API fits in 64 bits; bigger ones would overflow the codec later.
    v = int(text)
    if not -(1 << 63) <= v < 1 << 64:
        raise ValueError(f"integer {text[:24]}... is outside the 64-bit range")
    return v


def _parse_float(text: str) -> float:
    v = float(text)
    if v in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:24]} is out of range")
    return v


def _parse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


class RpcServer:
    def __init__(self, node, path: Path):
        from . import api

        self.node = node
        self.path = Path(path)
        self.methods = api.METHODS
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
                    await self._send(stream, _error(None, APP_ERROR,
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
                            await self._send(stream, _error(None, INVALID_REQUEST,
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
                        await self._send(stream, _error(None, INVALID_REQUEST, f"request larger than {MAX_REQUEST_BYTES} bytes; split it"))
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
        if _is_big(obj):
            chunks = await trio.to_thread.run_sync(_encode, obj)
        else:
            chunks = [json.dumps(obj, separators=(",", ":")).encode() + b"\n"]
        if sum(map(len, chunks)) > MAX_RESPONSE_BYTES:
            chunks = [json.dumps(_error(obj.get("id") if isinstance(obj, dict) else None, APP_ERROR,
                                        "response too large; ask for less (limit/offset)")).encode() + b"\n"]
        with trio.fail_after(60):
            for chunk in chunks:
                await stream.send_all(chunk)

    async def handle_line(self, line: bytes):
        """Answer one line: a request, a notification or a batch. Never raises."""
        try:
            req = json.loads(line, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
        except (ValueError, UnicodeDecodeError) as e:
            return _error(None, PARSE_ERROR, f"parse error: {e}")
        except RecursionError:
            return _error(None, PARSE_ERROR, "parse error: JSON nested too deeply")
        if isinstance(req, list):
            if not req:
                return _error(None, INVALID_REQUEST, "empty batch")
            if len(req) > MAX_BATCH:
                return _error(None, INVALID_REQUEST, f"batch of {len(req)} requests; the limit is {MAX_BATCH}")
            out = [r for r in [await self._one(x) for x in req] if r is not None]
            return out or None
        return await self._one(req)

    async def _one(self, req) -> dict | None:
        if not isinstance(req, dict):
            return _error(None, INVALID_REQUEST, "a request must be a JSON object")
        id_ = req.get("id")
        if not isinstance(id_, (str, int, type(None))) or isinstance(id_, bool):
            return _error(None, INVALID_REQUEST, "id must be a string, an integer or null")
        is_notification = "id" not in req
        if req.get("jsonrpc") != "2.0":
            return _error(id_, INVALID_REQUEST, 'missing "jsonrpc": "2.0"')
        method = req.get("method")
        if not isinstance(method, str):
            return _error(id_, INVALID_REQUEST, "method must be a string")
        params = req.get("params", {})
        if isinstance(params, list):
            params = {"_args": params}
        if not isinstance(params, dict):
            return _error(id_, INVALID_PARAMS, "params must be an object")
        fn = self.methods.get(method)
        self.calls += 1
        if fn is None:
            self._record("(unknown)", str(METHOD_NOT_FOUND), 0.0)
            return None if is_notification else _error(
                id_, METHOD_NOT_FOUND, f"unknown method {method!r}; call rpc_methods for the list")
        started, code = time.perf_counter(), "ok"
        try:
            result = await fn(self.node, params)
        except RpcError as e:
            code = str(e.code)
            return None if is_notification else _error(id_, e.code, e.message, e.data)
        except Exception as e:  # a bug must not take the node down; log it, tell the client
            code = str(INTERNAL_ERROR)
            log.exception("RPC method %s failed", method)
            return None if is_notification else _error(id_, INTERNAL_ERROR, f"internal error: {type(e).__name__}: {e}")
        finally:
            self._record(method, code, time.perf_counter() - started)
        return None if is_notification else {"jsonrpc": "2.0", "id": id_, "result": result}

    def _record(self, method: str, code: str, seconds: float) -> None:
        """Per (method, outcome) call count and time, for metrics (node/metrics.py)."""
        st = self.method_stats.get((method, code))
        if st is None:
            st = self.method_stats[(method, code)] = [0, 0.0]
        st[0] += 1
        st[1] += seconds


class RpcCallError(Exception):
    def __init__(self, code: int, message: str, data=None):
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data


class RpcClient:
    """Blocking client for the CLI, scripts and tests."""

    def __init__(self, path: str | os.PathLike, timeout: float = 60.0):
        self.path = str(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._id = 0

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            s.connect(self.path)
            self._sock = s
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, method: str, params: dict | None = None):
        self._id += 1
        s = self._connect()
        s.sendall(json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method,
                              "params": params or {}}).encode() + b"\n")
        while b"\n" not in self._buf:
            chunk = s.recv(1 << 20)
            if not chunk:
                self.close()
                raise ConnectionError("node closed the RPC connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        resp = json.loads(line)
        if "error" in resp:
            e = resp["error"]
            raise RpcCallError(e.get("code", 0), e.get("message", ""), e.get("data"))
        return resp["result"]

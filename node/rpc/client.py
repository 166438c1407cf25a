"""The JSON-RPC client of labelmesh: one blocking connection to a node's Unix socket, used
by the CLI, the development tools and the tests. ``call`` sends a request and returns
its result (RpcCallError for a JSON-RPC error); ``send_line`` sends a request line built
beforehand and returns the decoded reply as it is (benchmarks, hostile tests)."""
from __future__ import annotations

import json
import os
import socket

from .errors import RpcCallError


def request_line(method: str, params: dict | None = None, id_: int = 1) -> bytes:
    """One JSON-RPC 2.0 request as a line (compact JSON and a newline)."""
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params or {}},
                      separators=(",", ":")).encode() + b"\n"


class RpcClient:
    """One connection to a node's RPC socket (opened on first use, or by ``connect``);
    ``timeout`` bounds every socket operation. A context manager closes it."""

    def __init__(self, path: str | os.PathLike, timeout: float = 60.0):
        self.path = str(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._id = 0

    def connect(self) -> socket.socket:
        """Open the connection if it is not open (OSError if the node is not there)."""
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(self.path)
            except BaseException:
                s.close()
                raise
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

    def send_line(self, line: bytes) -> dict:
        """Send one request line (or batch) and return the node's reply, decoded, as it is.
        ConnectionError if the node closes the connection before answering."""
        s = self.connect()
        s.sendall(line)
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                reply, self._buf = self._buf[:nl], self._buf[nl + 1:]
                return json.loads(reply)
            chunk = s.recv(1 << 20)
            if not chunk:
                self.close()
                raise ConnectionError("node closed the RPC connection")
            self._buf += chunk

    def call(self, method: str, params: dict | None = None):
        """Call ``method`` and return its result; RpcCallError if the node answers an error."""
        self._id += 1
        resp = self.send_line(request_line(method, params, self._id))
        if "error" in resp:
            e = resp["error"]
            raise RpcCallError(e.get("code", 0), e.get("message", ""), e.get("data"))
        return resp["result"]

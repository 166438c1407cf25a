"""JSON-RPC error codes and the errors of the rpc package (both derive from the project's
root error): RpcError is what a method raises (the server turns it into a JSON-RPC error),
RpcCallError is what the client raises when the node answers with one."""
from __future__ import annotations

from typing import Any

from ..errors import NodeError

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


class RpcError(NodeError):
    """Raised by an RPC method: the JSON-RPC error ``code`` with a message that says what to fix."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class RpcCallError(NodeError):
    """The node answered a call with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data=None):
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data

"""JSON-RPC 2.0 over the node's Unix socket.

``server`` (RpcServer: limits, connections; handed its method table), ``wire`` (the JSON
both ways), ``errors`` (codes, RpcError, RpcCallError), ``params`` (reading a method's
params), ``client`` (RpcClient, the one client: CLI, devtools, tests) and ``methods``
(the methods by topic, and the one table of them)."""
from .client import RpcClient, request_line
from .errors import RpcCallError, RpcError

__all__ = ["RpcCallError", "RpcClient", "RpcError", "request_line"]

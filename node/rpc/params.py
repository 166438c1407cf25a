"""Helpers that read and check the params of an RPC method; each raises RpcError
(-32602 invalid params, -32001 not found) with a message that says what to fix."""
from __future__ import annotations

from typing import Any

from ..errors import KeystoreError
from .errors import INVALID_PARAMS, NOT_FOUND, RpcError

MAX_LIST = 10_000  # the largest page (limit) of any list method


def get_param(params: dict, name: str, typ, default: Any = ..., *, where: str = "") -> Any:
    if name not in params:
        if default is ...:
            raise RpcError(INVALID_PARAMS, f"missing param {name!r}{where}")
        return default
    v = params[name]
    if typ is int and (not isinstance(v, int) or isinstance(v, bool)):
        raise RpcError(INVALID_PARAMS, f"param {name!r} must be an integer")
    if typ is not int and not isinstance(v, typ):
        tname = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise RpcError(INVALID_PARAMS, f"param {name!r} must be of type {tname}")
    return v


def hex_param(params: dict, name: str, length: int | None = 32) -> bytes:
    v = get_param(params, name, str)
    try:
        b = bytes.fromhex(v)
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"param {name!r} must be a hex string") from None
    if length is not None and len(b) != length:
        raise RpcError(INVALID_PARAMS, f"param {name!r} must be {length} bytes ({2 * length} hex characters)")
    return b


def task_id_param(node, params) -> bytes:
    tid = hex_param(params, "task_id")
    if tid not in node.tasks:
        raise RpcError(NOT_FOUND, f"unknown task {tid.hex()}: not received by this node (check tasks_list)")
    return tid


def page_param(params) -> tuple[int, int]:
    limit = get_param(params, "limit", int, 1000)
    offset = get_param(params, "offset", int, 0)
    if not 0 < limit <= MAX_LIST or offset < 0:
        raise RpcError(INVALID_PARAMS, f"limit must be 1..{MAX_LIST} and offset >= 0")
    return limit, offset


def signing_key_param(node, params):
    name = get_param(params, "account", str)
    if node.keystore is None:
        raise RpcError(NOT_FOUND, "this node has no keystore; submit pre-signed messages with 'raw'")
    try:
        return node.keystore.signing_key(name)
    except KeystoreError as e:
        raise RpcError(NOT_FOUND, str(e)) from None


def account_param(node, params) -> bytes | None:
    """'account' may be a local account name or a 64-hex public key."""
    if "account" not in params:
        return None
    v = get_param(params, "account", str)
    if len(v) == 64:
        try:
            return bytes.fromhex(v)
        except ValueError:
            pass
    if node.keystore is not None:
        try:
            return node.keystore.public_key(v)
        except KeystoreError as e:
            raise RpcError(NOT_FOUND, str(e)) from None
    raise RpcError(NOT_FOUND, f"unknown account {v!r}")

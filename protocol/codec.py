"""Canonical msgpack: the one encoding of every labelmesh value.

How it works: messages are msgpack *arrays* (fixed field order, no maps, no
floats, no extension types). ``pack`` is msgpack's shortest-form encoding with
the bin type for bytes; ``unpack`` refuses anything that would not re-encode to
the very same bytes, so a message has exactly one encoding and its id (a hash of
those bytes) is stable. Size limits are set on the unpacker explicitly so a
length prefix can never make us allocate more than the caller allows.
"""
from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from .errors import DecodeError


def pack(value: Any) -> bytes:
    """Canonical msgpack encoding of ``value`` (ints, bytes, str, lists, None, bool)."""
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes, *, max_bytes: int, max_array: int, max_bin: int, max_str: int) -> Any:
    """Decode canonical msgpack with explicit limits.

    Raises DecodeError if ``data`` is longer than ``max_bytes``, is truncated, has
    trailing bytes, contains maps/floats/ext types, exceeds a length limit, nests
    too deep, or is not in canonical (shortest) form.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("message must be bytes")
    if len(data) > max_bytes:
        raise DecodeError(f"message is {len(data)} bytes; the limit is {max_bytes}")
    if len(data) == 0:
        raise DecodeError("message is empty")
    try:
        value = msgpack.unpackb(
            bytes(data),
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_bin,
            max_str_len=max_str,
            max_array_len=max_array,
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise DecodeError("trailing bytes after the message") from None
    except (ValueError, msgpack.UnpackException, RecursionError) as e:
        raise DecodeError(f"malformed msgpack: {e}") from None
    _check_types(value, 0)
    if pack(value) != bytes(data):
        raise DecodeError("non-canonical encoding (re-encoding gives different bytes)")
    return value


MAX_DEPTH = 8


def _check_types(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise DecodeError(f"nesting deeper than {MAX_DEPTH}")
    if isinstance(value, list):
        for v in value:
            if isinstance(v, list):
                _check_types(v, depth + 1)
            elif isinstance(v, float):
                raise DecodeError("floats are not allowed in labelmesh messages")
    elif isinstance(value, float):
        raise DecodeError("floats are not allowed in labelmesh messages")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()

"""Framing of the request/response protocols (one request and one response per stream)::

    request  = uvarint(len(body)) || body                 (len <= max_request_bytes)
    response = uvarint(1 + len(body)) || status || body   (len(body) <= max_response_bytes)
    status   = 0x00 ok (body = handler result) | 0x01 error (body = short UTF-8 reason)

Both sides read the length prefix first and reset the stream if it announces more than
their limit, before reading the body (py-libp2p's own reader gives up after ~100
partial reads, so this is our own bounded reader).
"""
from __future__ import annotations

import logging

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.utils.varint import encode_uvarint

from .errors import P2PError

logger = logging.getLogger("node.p2p")

STATUS_OK = 0
STATUS_ERROR = 1
MAX_ERROR_REASON_BYTES = 256


class FrameTooLarge(P2PError):
    """A length prefix announced more bytes than allowed (internal to the adapter)."""


async def read_frame(stream: INetStream, limit: int) -> bytes:
    """Read ``uvarint(len) || body`` with ``len <= limit``; reject before reading the body."""
    prefix = b""
    while True:
        byte = await stream.read(1)
        if not byte:
            raise StreamEOF("stream ended in a length prefix")
        prefix += byte
        if byte[0] & 0x80 == 0:
            break
        if len(prefix) >= 10:
            raise FrameTooLarge("length prefix longer than 10 bytes")
    length = 0
    for shift, b in enumerate(prefix):
        length |= (b & 0x7F) << (7 * shift)
    if length > limit:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {limit}")
    body = bytearray()
    while len(body) < length:
        chunk = await stream.read(length - len(body))
        if not chunk:
            raise StreamEOF(f"stream ended after {len(body)} of {length} bytes")
        body += chunk
    return bytes(body)


def encode_frame(body: bytes) -> bytes:
    return encode_uvarint(len(body)) + body


async def reset_quietly(stream: INetStream | None) -> None:
    if stream is None:
        return
    with trio.CancelScope(shield=True):
        with trio.move_on_after(1):
            try:
                await stream.reset()
            except Exception:
                logger.debug("stream reset failed", exc_info=True)


async def close_quietly(stream: INetStream) -> None:
    with trio.CancelScope(shield=True):
        with trio.move_on_after(1):
            try:
                await stream.close()
            except Exception:
                logger.debug("stream close failed", exc_info=True)

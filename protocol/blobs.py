"""Blob transfer frames: fetching content-addressed item payloads in chunks.

How it works
------------
An item of a task may be a *blob*: ``[2, sha256, size, media_type]`` (see
``protocol/messages.py``). The bytes themselves never travel in gossip; a node
that wants them asks a peer over the request/response protocol
``/labelmesh/<network id prefix>/blob/1``, one chunk per request::

    request  = [digest: bin32, offset: uint, length: uint]      1 <= length <= MAX_CHUNK_BYTES
    response = [0, size: uint, data: bin]                       the peer holds the blob
             | [1, reason: str]                                 it does not (no penalty)

``data`` is exactly ``blob[offset : offset + length]`` clipped to the blob's
size, so a puller knows the length of every answer in advance and refuses
anything else. The whole blob is verified against ``digest`` (sha256) once all
chunks are in: a peer that sends wrong bytes is caught there (the puller then
discards everything it got from that peer and asks another one). The declared
``size`` of the task's item is checked against the peer's ``size`` before the
first byte is kept, and against ``Params.max_blob_bytes``.

This module is pure (no I/O): it encodes and decodes frames with explicit
limits and plans the chunks; ``node/services/blobs.py`` moves the bytes and stores them.
"""
from __future__ import annotations

from .codec import pack, unpack
from .errors import DecodeError

MAX_CHUNK_BYTES = 1 << 20          # bytes of blob data in one response (well under p2p's response limit)
MAX_REQUEST_BYTES = 64             # a request frame is ~45 bytes
MAX_REASON_BYTES = 200             # UTF-8 bytes of a "not held" reason
DIGEST_LEN = 32

RESP_DATA = 0
RESP_MISSING = 1


class BlobProtocolError(DecodeError):
    """A blob frame is malformed, over a limit, or does not answer what was asked."""


def encode_blob_request(digest: bytes, offset: int, length: int) -> bytes:
    """Frame asking for ``length`` bytes of blob ``digest`` starting at ``offset``."""
    if len(digest) != DIGEST_LEN or offset < 0 or not 1 <= length <= MAX_CHUNK_BYTES:
        raise ValueError("blob request needs a 32-byte digest, offset >= 0 and 1 <= length <= MAX_CHUNK_BYTES")
    return pack([digest, offset, length])


def decode_blob_request(data: bytes) -> tuple[bytes, int, int]:
    """(digest, offset, length) of a request frame; BlobProtocolError if malformed or over limits."""
    try:
        v = unpack(data, max_bytes=MAX_REQUEST_BYTES, max_array=3, max_bin=DIGEST_LEN, max_str=0)
    except DecodeError as e:
        raise BlobProtocolError(f"blob request: {e}") from None
    if not (type(v) is list and len(v) == 3):
        raise BlobProtocolError("blob request must be [digest, offset, length]")
    digest, offset, length = v
    if type(digest) is not bytes or len(digest) != DIGEST_LEN:
        raise BlobProtocolError("blob request digest must be 32 bytes")
    if type(offset) is not int or offset < 0:
        raise BlobProtocolError("blob request offset must be a non-negative integer")
    if type(length) is not int or not 1 <= length <= MAX_CHUNK_BYTES:
        raise BlobProtocolError(f"blob request length must be 1..{MAX_CHUNK_BYTES}")
    return digest, offset, length


def encode_blob_data(size: int, data: bytes) -> bytes:
    """Response carrying one chunk of a blob of ``size`` bytes."""
    return pack([RESP_DATA, size, bytes(data)])


def encode_blob_missing(reason: str) -> bytes:
    """Response saying this peer does not hold the blob (a normal answer, not an error)."""
    return pack([RESP_MISSING, reason.encode("utf-8")[:MAX_REASON_BYTES].decode("utf-8", "ignore")])


def expected_chunk_len(size: int, offset: int, length: int) -> int:
    """How many bytes an honest answer to (offset, length) carries for a blob of ``size`` bytes."""
    return max(0, min(length, size - offset))


def decode_blob_response(data: bytes, offset: int, length: int, max_size: int) -> tuple[int, bytes] | str:
    """Decode the answer to a request for (offset, length).

    Returns ``(size, chunk)`` when the peer holds the blob, or the peer's reason
    (a str) when it does not. Raises BlobProtocolError when the frame is
    malformed, the size is over ``max_size``, or the chunk is not exactly the
    bytes asked for (clipped to the size).
    """
    try:
        v = unpack(data, max_bytes=MAX_CHUNK_BYTES + 64, max_array=3, max_bin=MAX_CHUNK_BYTES,
                   max_str=MAX_REASON_BYTES)
    except DecodeError as e:
        raise BlobProtocolError(f"blob response: {e}") from None
    if type(v) is not list or not v or type(v[0]) is not int:
        raise BlobProtocolError("blob response must be [status, ...]")
    if v[0] == RESP_MISSING:
        if len(v) != 2 or type(v[1]) is not str:
            raise BlobProtocolError("a 'missing' blob response must be [1, reason]")
        return v[1] or "not held"
    if v[0] != RESP_DATA or len(v) != 3:
        raise BlobProtocolError("a blob data response must be [0, size, data]")
    size, chunk = v[1], v[2]
    if type(size) is not int or size < 0 or size > max_size:
        raise BlobProtocolError(f"blob response announces size {size!r}; the limit is {max_size}")
    if type(chunk) is not bytes or len(chunk) != expected_chunk_len(size, offset, length):
        raise BlobProtocolError("blob response chunk is not the range that was asked for")
    return size, chunk


def plan_chunks(size: int, chunk: int = MAX_CHUNK_BYTES) -> list[tuple[int, int]]:
    """(offset, length) of every request needed for a blob of ``size`` bytes (one for an empty blob)."""
    if size == 0:
        return [(0, 1)]
    return [(o, min(chunk, size - o)) for o in range(0, size, chunk)]

"""The JSON of the RPC wire, both ways: requests are parsed with limits (integers within
64 bits, no NaN/Infinity), replies are encoded as one line -- big ones in slices, so a
worker thread can encode them without holding the GIL for long."""
from __future__ import annotations

import json

#: A reply carrying a string of at least this many characters (task_export's content,
#: a blob) is JSON-encoded in a worker thread, in slices (encode_reply): Label Studio JSON of
#: 100,000 items is a 43 MB line; encoded on the loop it stalled gossip, sync and
#: finality for 0.17-0.26 s (measured), in slices in the thread the loop's longest gap was 7 ms.
THREAD_ENCODE_CHARS = 1 << 20
#: ... and so is a reply carrying a list of at least this many entries (a page of
#: annotations_list or consensus_get), one entry at a time: a page of 10,000 batches of
#: 100 labels took 0.28 s to encode in one go.
THREAD_ENCODE_ITEMS = 1_000


def encode_reply(obj) -> list[bytes]:
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


def is_big(obj) -> bool:
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


def error_reply(id_, code, message, data=None) -> dict:
    e = {"code": code, "message": message}
    if data is not None:
        e["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": e}


def parse_int(text: str) -> int:
    # Every integer of the API fits in 64 bits; bigger ones would overflow the codec later.
    v = int(text)
    if not -(1 << 63) <= v < 1 << 64:
        raise ValueError(f"integer {text[:24]}... is outside the 64-bit range")
    return v


def parse_float(text: str) -> float:
    v = float(text)
    if v in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:24]} is out of range")
    return v


def parse_constant(name: str):
    raise ValueError(f"{name} is not JSON")

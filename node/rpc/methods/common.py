"""What several RPC methods share: ingesting messages with RpcError for what was
refused, the store-full error, fixed-point values for people, items as JSON."""
from __future__ import annotations

import logging

from protocol.errors import DecodeError
from protocol.messages import ITEM_BYTES, ITEM_TEXT, Item, Outcome, SignedMessage, decode_message
from protocol.reputation import ONE  # the fixed-point one (protocol.reputation loads no numpy)

from ...core.keep import GOLD_SURPLUS
from ...core.verdicts import DUPLICATE, KEPT_OVERLAPPING, SURPLUS
from ...storage.errors import StoreFullError
from ..errors import INVALID_PARAMS, REJECTED, STORE_FULL, RpcError

MAX_RAW_PER_CALL = 1000


def raw_messages_param(node, params, kind: int, wrong_kind: str) -> tuple[bool, list[bytes], list[SignedMessage]]:
    """``params["raw"]``: one hex envelope or a list of 1..MAX_RAW_PER_CALL, each decoded and
    of ``kind`` (else -32602 ``wrong_kind``). Returns (one was given, the bytes, the messages);
    a message that does not decode is -32002 with the decoder's reason."""
    raws = params["raw"]
    single = isinstance(raws, str)
    raws = [raws] if single else raws
    if not isinstance(raws, list) or not raws or not all(isinstance(r, str) for r in raws):
        raise RpcError(INVALID_PARAMS, "param 'raw' must be a hex string or a non-empty list of them")
    if len(raws) > MAX_RAW_PER_CALL:
        raise RpcError(INVALID_PARAMS, f"at most {MAX_RAW_PER_CALL} raw messages per call")
    datas, msgs = [], []
    for r in raws:
        try:
            data = bytes.fromhex(r)
        except ValueError:
            raise RpcError(INVALID_PARAMS, "param 'raw' must be hex") from None
        try:
            msg = decode_message(data, node.params)
        except DecodeError as e:
            raise RpcError(REJECTED, f"message rejected: decode: {e}") from None
        if msg.kind != kind:
            raise RpcError(INVALID_PARAMS, wrong_kind)
        datas.append(data)
        msgs.append(msg)
    return single, datas, msgs


def store_full_error(e: Exception) -> RpcError:
    """The error of an RPC write refused because the store is full (logged: the operator
    must free disk space)."""
    logging.getLogger("labelmesh.rpc").error("refused an RPC write, store full: %s", e)
    return RpcError(STORE_FULL, f"store is full: {e}. Free disk space; the node resumes by itself.")


async def ingest_or_raise(node, raw: bytes) -> tuple[bytes, str]:
    return (await ingest_many_or_raise(node, [raw]))[0]


#: The status an RPC client is told for each verdict that is not an error (docs/rpc.md,
#: annotations_submit): what an acknowledgement promises depends on it.
STATUS = {DUPLICATE: "duplicate", KEPT_OVERLAPPING: "accepted_overlapping", SURPLUS: "redundant",
          GOLD_SURPLUS: "redundant"}


async def ingest_many_or_raise(node, raws: list[bytes], decoded=None) -> list[tuple[bytes, str]]:
    """Ingest ``raws`` in ONE pipeline run (one group commit for all of them, not one
    fsync each); (id, status) per message -- "accepted", "accepted_overlapping",
    "duplicate" or "redundant" (valid, not stored: the keep rule) --, or RpcError for the
    first message that was rejected or ignored otherwise (the valid ones are stored all
    the same)."""
    try:
        results = await node.ingest_many(raws, "rpc", publish=True, decoded=decoded)
    except StoreFullError as e:
        raise store_full_error(e) from None
    out = []
    for v, mid in results:
        if v in STATUS:
            out.append((mid, STATUS[v]))
        elif v.ok:
            out.append((mid, "accepted"))
        else:
            raise RpcError(REJECTED, f"message {'rejected' if v.outcome is Outcome.REJECT else 'ignored'}: {v.reason}", {"outcome": v.outcome.value})
    return out


def fx(v: int) -> float:
    return round(v / ONE, 4)




def item_json(it: Item) -> dict:
    """An item as JSON: {text} | {hex, media_type} | {sha256, size, media_type}."""
    if it.item_type == ITEM_TEXT:
        return {"text": it.text}
    if it.item_type == ITEM_BYTES:
        return {"hex": it.payload.hex(), "media_type": it.media_type}
    return {"sha256": it.digest.hex(), "size": it.size, "media_type": it.media_type}

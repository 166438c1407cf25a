"""Gossip payloads: one envelope, or a bundle of envelopes of one kind.

Why bundles: a gossip message costs a py-libp2p node about the same CPU whether it
carries one batch or twenty (protobuf framing, pubsub signature, Noise, yamux, the
seen-cache, one copy per mesh peer). Under load a publisher therefore packs every
envelope waiting in its queue into one pubsub message, so the number of gossip
messages — the thing a 10-node network on 2 cores runs out of — stays bounded
while labels/s grows (PROTOCOL.md 7.2).

Wire form (canonical msgpack)::

    payload = envelope                      # [body: bin, signature: bin]  (section 5.1)
            | [BUNDLE_TAG, [envelope: bin, ...]]

An envelope's first element is a ``bin``; a bundle's is the integer ``BUNDLE_TAG``
(0), so the first two bytes tell them apart (``0x92 0xc4..0xc6`` vs ``0x92 0x00``).
A bundle holds 1..``MAX_BUNDLE_ENVELOPES`` envelopes, each at most
``params.max_message_bytes``, no envelope twice, and the whole payload at most
``MAX_GOSSIP_PAYLOAD_BYTES``. Those are structural rules: breaking one makes the
payload invalid (REJECT). What each envelope means is decided by the usual pipeline.
"""
from __future__ import annotations

from .codec import pack, unpack
from .errors import DecodeError
from .params import Params

BUNDLE_TAG = 0
MAX_BUNDLE_ENVELOPES = 256
# py-libp2p refuses pubsub RPCs over 1 MiB; leave room for the pubsub framing.
MAX_GOSSIP_PAYLOAD_BYTES = 1024 * 1024 - 64 * 1024
# Bytes msgpack adds around the envelopes: array headers, the tag, and a bin header per envelope.
_BUNDLE_HEADER_BYTES = 1 + 1 + 3
_PER_ENVELOPE_BYTES = 5


def is_bundle(payload: bytes) -> bool:
    """Cheap peek: does this payload claim to be a bundle? (Full checks: ``split_payload``.)"""
    return len(payload) >= 2 and payload[0] == 0x92 and payload[1] == BUNDLE_TAG


def encode_bundle(envelopes: list[bytes]) -> bytes:
    """The bundle payload of ``envelopes`` (1..MAX_BUNDLE_ENVELOPES distinct raw envelopes)."""
    if not 1 <= len(envelopes) <= MAX_BUNDLE_ENVELOPES:
        raise ValueError(f"a bundle holds 1..{MAX_BUNDLE_ENVELOPES} envelopes, not {len(envelopes)}")
    if len(set(envelopes)) != len(envelopes):
        raise ValueError("a bundle must not hold the same envelope twice")
    return pack([BUNDLE_TAG, [bytes(e) for e in envelopes]])


def split_payload(payload: bytes, params: Params) -> list[bytes]:
    """The envelopes carried by one gossip payload, in order (one for a plain envelope).

    Raises DecodeError if a bundle breaks a structural rule. A plain envelope is returned
    as is; decoding it is ``decode_message``'s job.
    """
    if not is_bundle(payload):
        return [payload]
    value = unpack(payload, max_bytes=MAX_GOSSIP_PAYLOAD_BYTES, max_array=MAX_BUNDLE_ENVELOPES,
                   max_bin=params.max_message_bytes, max_str=0)
    if type(value) is not list or len(value) != 2 or type(value[0]) is not int or value[0] != BUNDLE_TAG:
        raise DecodeError(f"bundle must be [{BUNDLE_TAG}, [envelope, ...]]")
    envelopes = value[1]
    if type(envelopes) is not list or not envelopes:
        raise DecodeError(f"bundle must hold 1..{MAX_BUNDLE_ENVELOPES} envelopes")
    for e in envelopes:
        if type(e) is not bytes:
            raise DecodeError("each bundled envelope must be bin")
    if len(set(envelopes)) != len(envelopes):
        raise DecodeError("bundle holds the same envelope twice")
    return envelopes


def group_envelopes(envelopes: list[bytes], max_bytes: int) -> list[list[bytes]]:
    """``envelopes`` in order, duplicates dropped (first kept), cut into runs that each fit
    one payload: at most MAX_BUNDLE_ENVELOPES and ``max_bytes`` bytes as a bundle. An
    envelope too big to fit ``max_bytes`` on its own is a run of one (the caller's size
    check reports it)."""
    runs: list[list[bytes]] = []
    run: list[bytes] = []
    size = _BUNDLE_HEADER_BYTES
    seen: set[bytes] = set()
    for e in envelopes:
        if e in seen:
            continue
        seen.add(e)
        cost = len(e) + _PER_ENVELOPE_BYTES
        if run and (len(run) >= MAX_BUNDLE_ENVELOPES or size + cost > max_bytes):
            runs.append(run)
            run, size = [], _BUNDLE_HEADER_BYTES
        run.append(e)
        size += cost
    if run:
        runs.append(run)
    return runs


def payload_of(run: list[bytes]) -> bytes:
    """The gossip payload of one run: a lone envelope travels plain, several as a bundle."""
    return run[0] if len(run) == 1 else encode_bundle(run)

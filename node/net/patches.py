"""What we change in py-libp2p 0.8.1 itself, process-wide and idempotent: its logging
(re-attached to ours, the noise of failed attempts we report ourselves dropped), two
hot paths (signed peer records verified once, yamux window updates batched) and its
``read_exactly``, which gives up after 100 partial reads (``patient_read_exactly``). The
list of every default we override is the package docstring (node/net/__init__.py)."""
from __future__ import annotations

import collections
import logging
import os
from typing import Any

from libp2p.peer.id import ID


class LibraryNoiseFilter(logging.Filter):
    """Drop py-libp2p ERRORs that report one failed attempt we already surface.

    Each of these fires on ordinary network events (a dead bootstrap peer, a
    refused handshake, a disconnect racing a stream open, a protocol the remote
    does not serve) and is reported to our caller as a :class:`P2PError` or by
    the redial loop. Kept, demoted to DEBUG, when the ``libp2p`` logger is
    enabled for DEBUG.
    """

    PREFIXES: dict[str, tuple[str, ...]] = {
        "libp2p.transport.tcp.tcp": ("Failed to open TCP stream",),
        "libp2p.network.swarm": ("failed to upgrade security for peer",),
        "libp2p.host.basic_host": ("Failed to open stream to peer",),
        "libp2p.protocol_muxer.multiselect_client": ("MultiselectClient handshake:",),
    }

    def filter(self, record: logging.LogRecord) -> bool:
        prefixes = self.PREFIXES.get(record.name)
        if not prefixes or not isinstance(record.msg, str) or not record.msg.startswith(prefixes):
            return True
        if logging.getLogger("libp2p").isEnabledFor(logging.DEBUG):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return True
        return False


_logging_configured = False


def configure_libp2p_logging() -> None:
    """Re-attach py-libp2p's logger to ours and quiet its noisy parts (idempotent)."""
    global _logging_configured
    if _logging_configured:
        return
    _logging_configured = True
    if not os.environ.get("LIBP2P_DEBUG"):
        root = logging.getLogger("libp2p")
        root.propagate = True
        if root.level == logging.NOTSET or root.level > logging.WARNING:
            root.setLevel(logging.WARNING)
    # Forced to INFO by the library; logs every auto-connect cycle (we disable it anyway).
    logging.getLogger("libp2p.network.auto_connector").setLevel(logging.WARNING)
    noise_filter = LibraryNoiseFilter()
    for name in LibraryNoiseFilter.PREFIXES:
        logging.getLogger(name).addFilter(noise_filter)


_SIGNED_RECORD_CACHE: collections.OrderedDict = collections.OrderedDict()
_SIGNED_RECORD_TTL_S = 600.0
_SIGNED_RECORD_CACHE_SIZE = 4096


def tune_libp2p_hot_paths() -> None:
    """Two py-libp2p 0.8.1 costs that dominated a 10-node devnet under gossip load
    (profiled with py-spy by ``scripts/bench``; see BENCHMARKS.md). Idempotent.

    1. Every pubsub RPC carries the sender's signed peer record, and py-libp2p verifies
       it (ed25519) twice per RPC (``Pubsub.continuously_read_stream`` and
       ``GossipSub.handle_rpc``) -- with ~D copies of each message per node. A record is
       immutable bytes: the same bytes from the same peer that verified once are
       accepted from memory (per local host, bounded, re-verified after 10 min).
    2. Yamux sent a WINDOW_UPDATE frame after every read (``PY_YAMUX_RELEASE_ON_READ``
       defaults to on), i.e. one more encrypted frame and syscall per gossip RPC;
       with it off, credit is returned in half-window batches as go-yamux does.
    """
    import time

    import libp2p.pubsub.gossipsub as gossipsub_mod
    import libp2p.pubsub.pubsub as pubsub_mod
    import libp2p.pubsub.utils as pubsub_utils

    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    original = pubsub_utils.maybe_consume_signed_record
    if getattr(pubsub_mod.maybe_consume_signed_record, "_labelmesh_cached", False):
        return

    def maybe_consume_signed_record(msg: Any, host: Any, peer_id: ID) -> bool:
        if not msg.HasField("senderRecord"):
            return True
        key = (host.get_id(), peer_id, msg.senderRecord)
        now = time.monotonic()
        seen = _SIGNED_RECORD_CACHE.get(key)
        if seen is not None and now - seen < _SIGNED_RECORD_TTL_S:
            return True
        ok = original(msg, host, peer_id)
        if ok:
            _SIGNED_RECORD_CACHE[key] = now
            _SIGNED_RECORD_CACHE.move_to_end(key)
            while len(_SIGNED_RECORD_CACHE) > _SIGNED_RECORD_CACHE_SIZE:
                _SIGNED_RECORD_CACHE.popitem(last=False)
        return ok

    maybe_consume_signed_record._labelmesh_cached = True  # type: ignore[attr-defined]
    pubsub_mod.maybe_consume_signed_record = maybe_consume_signed_record
    gossipsub_mod.maybe_consume_signed_record = maybe_consume_signed_record


async def patient_read_exactly(reader: Any, n: int, retry_count: int | None = None) -> bytes:
    """``libp2p.io.utils.read_exactly`` without its limit of 100 partial reads.

    py-libp2p 0.8.1's version reads at most 101 times and then raises
    ``IncompleteReadError`` as if the peer had closed the connection. Noise reads each
    encrypted message (up to 65,537 bytes with its length) with it, straight from the
    TCP socket, so a message that arrives in more than 101 pieces -- a slow link, a
    busy receiver, small segments -- kills a healthy connection ("expected 65535 bytes
    but received 30298"). This one reads until it has ``n`` bytes (``n`` is bounded by
    the caller: 65,535 for Noise, a frame length for yamux) and raises the same error,
    with the same fields, only at the end of the stream. ``retry_count`` is accepted
    and ignored (the library's signature).
    """
    from libp2p.io.exceptions import IncompleteReadError

    buffer = bytearray()
    while len(buffer) < n:
        chunk = await reader.read(n - len(buffer))
        if not chunk:
            raise IncompleteReadError(
                f"Connection closed during read operation: expected {n} bytes but received {len(buffer)} bytes",
                expected_bytes=n,
                received_bytes=len(buffer),
            )
        buffer += chunk
    return bytes(buffer)


#: The py-libp2p modules of our stack (TCP + Noise + yamux, multistream-select) that
#: call ``read_exactly``; each imported it by name, so each name is replaced.
READ_EXACTLY_USERS = ("libp2p.io.msgio", "libp2p.stream_muxer.yamux.yamux", "libp2p.utils.varint")


def fix_libp2p_partial_reads() -> None:
    """Replace ``read_exactly`` in :data:`READ_EXACTLY_USERS` with
    :func:`patient_read_exactly` (idempotent)."""
    import importlib

    for name in READ_EXACTLY_USERS:
        module = importlib.import_module(name)
        if getattr(module, "read_exactly", None) is not patient_read_exactly:
            module.read_exactly = patient_read_exactly  # type: ignore[attr-defined]

"""Blob transfer: content-addressed item payloads, stored as files and fetched from peers.

How it works
------------
*Storage.* Blob files, content-addressed and written atomically, are
``node/storage/blobstore.py``.

*Transfer.* ``/labelmesh/<network id prefix>/blob/1`` is a request/response
protocol (frames in ``protocol/blobs.py``): one request per chunk of at most
``MAX_CHUNK_BYTES`` (1 MiB, well under the transport's response limit). To get
a blob, a node asks its connected peers in random order; the first that holds
it serves every chunk, the bytes are hashed as they arrive and the blob is
stored only if the hash matches. A peer that answers out of protocol, announces
a size other than the task's, or sends bytes that do not hash to the digest
collects penalty points (``PENALTY_LIMIT`` points: skipped for ``BAN_S``) and the
next peer is asked. Every node serves the blobs it holds, so a blob spreads
beyond the requester's node.

*When.* Both eagerly and on demand:

* prefetch: when a node learns of a task that is still open (by gossip, sync,
  RPC, or at start-up from its store), it queues the task's blobs it lacks and
  fetches them in the background, ``max_concurrent_fetches`` (2) at a time.
  A blob no peer has yet is retried every ``retry_s`` while its task is open.
  Prefetch is skipped for a task whose blobs total more than
  ``prefetch_max_task_bytes`` (256 MiB), and while the filesystem has less than
  ``prefetch_min_free_bytes`` (512 MiB) free, so a flood of big tasks cannot
  fill the disk that LMDB needs;
* on demand: ``blob_get`` (RPC) / ``labelmesh blob get`` fetch at once, for any
  task, open or closed, joining a prefetch of the same blob already in flight.
  When no connected peer has it: JSON-RPC -32004 (unavailable).

``task_post`` items of the form ``{"file": "/path"}`` are hashed and copied into
the local blob store by ``import_items`` before the task is signed, and the task
carries ``[2, sha256, size, media_type]``.
"""
from __future__ import annotations

import logging
import mimetypes
import os
import random
from dataclasses import dataclass
from pathlib import Path

import trio

from protocol import blobs as bp
from protocol.messages import ITEM_BLOB

from ..policy.penalties import PenaltyPolicy
from ..storage.blobstore import BlobError, BlobInputError, BlobStore, IncomingBlob
from ..storage.errors import StoreFullError

log = logging.getLogger("labelmesh.blobs")

REQUEST_TIMEOUT_S = 15.0     # one chunk request
PENALTY_LIMIT = 3            # points after which a peer is skipped for BAN_S
BAN_S = 300.0
PENALTIES = PenaltyPolicy(PENALTY_LIMIT, BAN_S)  # the node's one penalty policy, without decay


class BlobUnavailableError(BlobError):
    """No connected peer could serve the blob."""


@dataclass
class _PeerState:
    served: int = 0          # chunks we served to it
    fetched: int = 0         # blobs we got from it
    penalty: int = 0         # penalty points (PENALTIES)
    stamp: float = 0.0
    banned_until: float = 0.0


class BlobService:
    """Serves, fetches and prefetches blobs for one Node (see the module docstring)."""

    def __init__(self, node, *, max_concurrent_fetches: int = 2, retry_s: float = 10.0,
                 prefetch: bool = True, prefetch_max_task_bytes: int = 256 << 20,
                 prefetch_min_free_bytes: int = 512 << 20):
        self.node = node
        self.store = BlobStore(Path(node.data_dir) / "blobs")
        self.protocol_id = f"/labelmesh/{node.network_id.hex()[:16]}/blob/1"
        self.retry_s = retry_s
        self.prefetch = prefetch
        self.prefetch_max_task_bytes = prefetch_max_task_bytes
        self.prefetch_min_free_bytes = prefetch_min_free_bytes
        self._limiter = trio.CapacityLimiter(max_concurrent_fetches)
        self._inflight: dict[bytes, trio.Event] = {}
        self._queued: set[bytes] = set()                      # prefetch tasks spawned (waiting or running)
        self._wanted: dict[bytes, tuple[int, bytes]] = {}      # digest -> (declared size, task id)
        self._next_try: dict[bytes, float] = {}
        self._wake = trio.Event()
        self.peers: dict[str, _PeerState] = {}
        self.fetched = 0
        self.failed = 0
        self.served_chunks = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        p2p = self.node.p2p
        if p2p is not None:
            p2p.set_request_handler(self.protocol_id, self.handle)
        for tid, task in list(self.node.tasks.items()):
            self.on_task(tid, task)
        task_status.started()
        if p2p is None:
            return
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                for digest in list(self._wanted):
                    size, tid = self._wanted[digest]
                    if self.store.has(digest) or not self._still_wanted(tid):
                        self._wanted.pop(digest, None)
                        self._next_try.pop(digest, None)
                        continue
                    if digest in self._queued or digest in self._inflight or self._next_try.get(digest, 0) > now:
                        continue
                    if self.store.free_bytes() < self.prefetch_min_free_bytes:
                        log.info("blob prefetch paused: less than %d MiB free", self.prefetch_min_free_bytes >> 20)
                        break
                    self._next_try[digest] = now + self.retry_s
                    self._queued.add(digest)
                    nursery.start_soon(self._prefetch_one, digest, size)
                self._wake = trio.Event()
                with trio.move_on_after(min(self.retry_s, 2.0)):
                    await self._wake.wait()

    def _still_wanted(self, task_id: bytes) -> bool:
        task = self.node.tasks.get(task_id)
        return task is not None and self.node.clock() <= task.deadline

    def on_task(self, task_id: bytes, task) -> None:
        """A task was stored: queue its missing blobs for prefetch (open tasks only)."""
        if not self.prefetch or self.node.clock() > task.deadline:
            return
        blobs = [it for it in task.items if it.item_type == ITEM_BLOB]
        if not blobs:
            return
        total = sum(it.size for it in blobs)
        if total > self.prefetch_max_task_bytes:
            log.info("not prefetching task %s: its blobs total %d MiB (limit %d MiB); they are fetched on demand",
                     task_id.hex()[:16], total >> 20, self.prefetch_max_task_bytes >> 20)
            return
        for it in blobs:
            if not self.store.has(it.digest):
                self._wanted.setdefault(it.digest, (it.size, task_id))
        self._wake.set()

    async def _prefetch_one(self, digest: bytes, size: int) -> None:
        try:
            async with self._limiter:
                self._next_try[digest] = trio.current_time() + self.retry_s  # counted from the attempt
                await self.ensure(digest, size)
                self._wanted.pop(digest, None)
                self._next_try.pop(digest, None)
        except BlobUnavailableError as e:
            log.debug("prefetch of blob %s: %s (retrying in %.0f s)", digest.hex()[:16], e, self.retry_s)
        except Exception as e:  # disk full, a bug: log and retry later, never crash the node
            log.warning("prefetch of blob %s failed: %s", digest.hex()[:16], e)
        finally:
            self._queued.discard(digest)
            self._wake.set()

    # ------------------------------------------------------------------ server

    async def handle(self, peer_id: str, data: bytes) -> bytes:
        """Answer one chunk request (raises BlobProtocolError on a malformed one: the stream is reset)."""
        digest, offset, length = bp.decode_blob_request(data)
        size = self.store.size(digest)
        if size is None:
            return bp.encode_blob_missing("not held")
        chunk = await trio.to_thread.run_sync(self.store.read, digest, offset, length) if offset < size else b""
        self.served_chunks += 1
        self._peer(peer_id).served += 1
        return bp.encode_blob_data(size, chunk)

    # ------------------------------------------------------------------ client

    def _peer(self, peer_id: str) -> _PeerState:
        st = self.peers.get(peer_id)
        if st is None:
            st = self.peers[peer_id] = _PeerState()
        return st

    async def ensure(self, digest: bytes, size: int | None) -> str | None:
        """Make sure the blob is stored locally. Returns None if it already was, else the peer
        id it came from. Joins a fetch of the same blob in flight. Raises
        BlobUnavailableError (no peer has it), StoreFullError (disk full), BlobInputError."""
        max_size = self.node.params.max_blob_bytes
        if size is not None and size > max_size:
            raise BlobInputError(f"blob of {size} bytes exceeds this network's max_blob_bytes ({max_size})")
        while True:
            if self.store.has(digest):
                return None
            ev = self._inflight.get(digest)
            if ev is None:
                break
            await ev.wait()
        ev = self._inflight[digest] = trio.Event()
        try:
            return await self._fetch(digest, size)
        finally:
            del self._inflight[digest]
            ev.set()

    async def _fetch(self, digest: bytes, size: int | None) -> str:
        p2p = self.node.p2p
        peers = [p["peer_id"] for p in p2p.peers()] if p2p is not None else []
        random.shuffle(peers)
        now = trio.current_time()
        asked, reasons = 0, []
        for peer in peers:
            st = self._peer(peer)
            if PENALTIES.is_banned(st, now):
                continue
            asked += 1
            try:
                got = await self._fetch_from(peer, digest, size)
            except bp.BlobProtocolError as e:
                self._penalise(peer, st, f"{e}")
                reasons.append(f"{peer[-8:]}: misbehaved")
                continue
            except StoreFullError:
                raise
            except BlobError as e:  # hash mismatch
                self._penalise(peer, st, str(e))
                reasons.append(f"{peer[-8:]}: sent wrong bytes")
                continue
            except Exception as e:  # transport: timeout, reset, peer gone
                reasons.append(f"{peer[-8:]}: {type(e).__name__}")
                log.debug("blob %s from %s failed: %s", digest.hex()[:16], peer, e)
                continue
            if got:
                st.fetched += 1
                self.fetched += 1
                log.info("fetched blob %s (%d bytes) from %s", digest.hex()[:16], self.store.size(digest) or 0, peer)
                return peer
            reasons.append(f"{peer[-8:]}: not held")
        self.failed += 1
        detail = f" ({'; '.join(reasons[:8])})" if reasons else ""
        raise BlobUnavailableError(
            f"no connected peer has blob {digest.hex()} (asked {asked} of {len(peers)} peers){detail}; "
            "the node that posted the task may be offline -- retry later")

    async def _fetch_from(self, peer: str, digest: bytes, size: int | None) -> bool:
        """Fetch every chunk from one peer. False if it does not hold the blob."""
        max_size = self.node.params.max_blob_bytes if size is None else size
        inc: IncomingBlob | None = None
        try:
            offset, total = 0, None
            while True:
                # the chunks of bp.plan_chunks(size); a blob known only by hash starts with a full chunk
                known = size if total is None else total
                length = bp.MAX_CHUNK_BYTES if known is None else max(1, min(bp.MAX_CHUNK_BYTES, known - offset))
                resp = await self.node.p2p.request(peer, self.protocol_id, bp.encode_blob_request(digest, offset, length),
                                                   timeout=REQUEST_TIMEOUT_S)
                ans = bp.decode_blob_response(resp, offset, length, max_size)
                if isinstance(ans, str):
                    if offset == 0:
                        return False
                    raise bp.BlobProtocolError(f"stopped serving the blob mid-way: {ans}")
                got_size, chunk = ans
                if total is None:
                    if size is not None and got_size != size:
                        raise bp.BlobProtocolError(f"announces {got_size} bytes; the task declares {size}")
                    total = got_size
                    inc = await trio.to_thread.run_sync(self.store.begin)
                elif got_size != total:
                    raise bp.BlobProtocolError("changed the blob size between chunks")
                if chunk:
                    await trio.to_thread.run_sync(inc.write, chunk)
                offset += len(chunk)
                if offset >= total:
                    break
            await trio.to_thread.run_sync(inc.finish, digest)
            inc = None
            return True
        finally:
            if inc is not None:
                inc.abort()

    def _penalise(self, peer: str, st: _PeerState, why: str) -> None:
        banned = PENALTIES.penalise(st, 1, trio.current_time())
        log.warning("blob peer %s misbehaved: %s (penalty %d)", peer, why, st.penalty)
        if banned:
            log.warning("not asking blob peer %s for %.0f s", peer, BAN_S)

    # ------------------------------------------------------------------ local files

    async def import_items(self, items):
        """Replace every ``{"file": path, [media_type]}`` in a task_post item list by
        ``{"sha256", "size", "media_type"}`` after copying the file into the blob store."""
        if not isinstance(items, list):
            return items
        out = []
        for k, it in enumerate(items):
            if isinstance(it, dict) and "file" in it:
                path = it["file"]
                if not isinstance(path, str) or not path:
                    raise BlobInputError(f"item {k}: 'file' must be a path string")
                if not os.path.isabs(path):
                    raise BlobInputError(f"item {k}: 'file' must be an absolute path (the node resolves it, "
                                         f"not your shell): {path!r}")
                digest, size = await trio.to_thread.run_sync(self.store.import_file, path,
                                                             self.node.params.max_blob_bytes)
                mt = it.get("media_type")
                if not isinstance(mt, str) or not mt:
                    mt = mimetypes.guess_type(path)[0] or "application/octet-stream"
                out.append({"sha256": digest.hex(), "size": size, "media_type": mt})
            else:
                out.append(it)
        return out

    def status(self) -> dict:
        return {"protocol": self.protocol_id, "stored": self.store.count, "stored_bytes": self.store.bytes,
                "wanted": len(self._wanted), "fetching": len(self._inflight), "fetched": self.fetched,
                "failed": self.failed, "served_chunks": self.served_chunks}

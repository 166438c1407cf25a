"""RPC methods of blobs: make sure one is stored here (fetched from peers if needed), read it,
import local files."""
from __future__ import annotations

import logging

import trio

from protocol import blobs as bp
from protocol.messages import ITEM_BLOB

from ...services.blobs import BlobUnavailableError
from ...storage.blobstore import BlobError, BlobInputError
from ...storage.errors import StoreFullError
from ..errors import APP_ERROR, INVALID_PARAMS, NOT_FOUND, STORE_FULL, UNAVAILABLE, RpcError
from ..params import get_param, hex_param, task_id_param

log = logging.getLogger("labelmesh.blobs")


def _blob_digest(node, params) -> tuple[bytes, int | None, str]:
    if "task_id" in params:
        tid = task_id_param(node, params)
        item = get_param(params, "item", int)
        task = node.tasks[tid]
        if not 0 <= item < len(task.items):
            raise RpcError(NOT_FOUND, f"item {item} out of range: task has {len(task.items)} items")
        it = task.items[item]
        if it.item_type != ITEM_BLOB:
            raise RpcError(INVALID_PARAMS, f"item {item} is inline, not a blob: task_get shows its payload")
        return it.digest, it.size, it.media_type
    if "sha256" in params:
        return hex_param(params, "sha256"), None, ""
    raise RpcError(INVALID_PARAMS, "give {task_id, item} or {sha256}")


async def blob_get(node, params):
    """Make sure a blob ({task_id, item} or {sha256}) is stored locally, fetching it from peers if needed:
    {sha256, size, media_type, source: local|peer, peer_id}. -32004 when no connected peer has it."""
    digest, size, media_type = _blob_digest(node, params)
    try:
        peer = await node.blobs.ensure(digest, size)
    except BlobUnavailableError as e:
        raise RpcError(UNAVAILABLE, str(e)) from None
    except BlobInputError as e:
        raise RpcError(INVALID_PARAMS, str(e)) from None
    except StoreFullError as e:
        log.error("blob store full: %s", e)
        raise RpcError(STORE_FULL, str(e)) from None
    except BlobError as e:
        raise RpcError(APP_ERROR, str(e)) from None
    return {"sha256": digest.hex(), "size": node.blobs.store.size(digest), "media_type": media_type,
            "source": "local" if peer is None else "peer", "peer_id": peer}


async def blob_read(node, params):
    """Read a locally stored blob: {sha256, [offset], [length] (<= 1 MiB)} -> {size, offset, data (hex)}.
    -32001 if it is not stored here (blob_get fetches it)."""
    digest = hex_param(params, "sha256")
    offset = get_param(params, "offset", int, 0)
    length = get_param(params, "length", int, bp.MAX_CHUNK_BYTES)
    if offset < 0 or not 1 <= length <= bp.MAX_CHUNK_BYTES:
        raise RpcError(INVALID_PARAMS, f"offset must be >= 0 and length 1..{bp.MAX_CHUNK_BYTES}")
    size = node.blobs.store.size(digest)
    if size is None:
        raise RpcError(NOT_FOUND, f"blob {digest.hex()} is not stored on this node; call blob_get first")
    data = await trio.to_thread.run_sync(node.blobs.store.read, digest, offset, length) if offset < size else b""
    return {"sha256": digest.hex(), "size": size, "offset": offset, "data": data.hex()}


#: files per blob_import call
MAX_IMPORT_FILES = 64


async def blob_import(node, params):
    """Copy local files into this node's blob store, as task_post does with {"file": path}
    items: {files: [{"file": "/absolute/path", "media_type"?}, ...] (1..64)} ->
    {blobs: [{sha256, size, media_type}, ...]}, usable as task_post items. `labelmesh task post`
    imports a task's files with it a few at a time, to show progress."""
    files = get_param(params, "files", list)
    if not 0 < len(files) <= MAX_IMPORT_FILES or not all(isinstance(f, dict) and "file" in f for f in files):
        raise RpcError(INVALID_PARAMS, f"param 'files' must be a list of 1..{MAX_IMPORT_FILES} "
                                       "{\"file\": \"/absolute/path\"} objects")
    try:
        return {"blobs": await node.blobs.import_items(files)}
    except BlobInputError as e:
        raise RpcError(INVALID_PARAMS, str(e)) from None
    except StoreFullError as e:
        log.error("cannot store an imported file: %s", e)
        raise RpcError(STORE_FULL, f"{e}. Free disk space; the node resumes by itself.") from None


METHODS = [blob_get, blob_read, blob_import]

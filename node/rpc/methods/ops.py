"""RPC methods of operations: hot backups, stopping the node."""
from __future__ import annotations

import os

import trio

from ...storage.backup import BackupError, create_backup
from ...storage.errors import StoreError
from ..errors import APP_ERROR, INVALID_PARAMS, RpcError
from ..params import get_param


async def backup_create(node, params):
    """Consistent hot backup into 'dest' (an absolute path to a new or empty directory): a
    compacted LMDB copy of the store taken in one read snapshot while the node keeps running,
    plus config, genesis and keys, and a manifest. The copy is a data dir: `labelmesh run`
    starts from it, `labelmesh restore` copies it to a new place."""
    dest = get_param(params, "dest", str)
    if not os.path.isabs(dest):
        raise RpcError(INVALID_PARAMS, "param 'dest' must be an absolute path (the node's working directory is not yours)")
    try:
        return await trio.to_thread.run_sync(create_backup, node, dest)
    except (BackupError, StoreError) as e:
        raise RpcError(APP_ERROR, str(e)) from None
    except OSError as e:
        raise RpcError(APP_ERROR, f"cannot write the backup into {dest}: {e.strerror or e}") from None




async def stop(node, params):
    """Stop the node cleanly, as SIGTERM does: {} -> {stopping: true, pid}. The reply is sent
    first; the node then closes its store and exits (`labelmesh stop` waits for that)."""
    if params:
        raise RpcError(INVALID_PARAMS, f"stop takes no params (got {sorted(params)[:5]})")
    node.request_stop()
    return {"stopping": True, "pid": os.getpid()}


METHODS = [backup_create, stop]

"""File-system helpers of the storage package (and of everything that writes files
durably: the blob store, backups)."""
from __future__ import annotations

import errno
import os

# errno values that mean "no room to write" (ENOSPC: filesystem full, EDQUOT: quota,
# EFBIG: file size limit).  LMDB reports a *short* write as EIO ("filesystem full?"); that
# case is told apart by looking at the free space, see Store._is_out_of_space.
OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def fsync_dir(path: str | os.PathLike, *, must: bool = False) -> None:
    """Make the new entries of directory ``path`` (files created or renamed into it)
    survive power loss.  ``must``: raise OSError if that cannot be done (a blob or a
    backup is not acknowledged until it is durable); else best effort (the LMDB store's
    own files are durable through its fsyncs; only their names depend on this)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        if must:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if must:
            raise
    finally:
        os.close(fd)

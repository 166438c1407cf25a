"""Content-addressed blob files: ``<data-dir>/blobs/<first 2 hex digits>/<sha256 hex>``.

One file per blob, named by its hash (the same bytes are stored once, whoever posted
them). Files are written atomically: bytes go to ``blobs/tmp/*.part`` (hashed while they
are written), the file is fsynced, renamed into place only if its sha256 is the expected
one, and the directory is fsynced. A crash leaves at most a stale ``.part`` file, removed
at the next start; a file under its final name is always complete and verified. Blobs are
files rather than LMDB values because they may be up to ``Params.max_blob_bytes`` (64 MiB
by default) and are read in chunks; LMDB stays the store of messages only. A full disk
raises ``StoreFullError`` like the LMDB store does, and nothing half-written is left
behind. The transfer between peers is ``node/services/blobs.py``.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from ..errors import NodeError
from .errors import StoreFullError
from .fs import OUT_OF_SPACE_ERRNOS, fsync_dir

_COPY_CHUNK = 1 << 20


class BlobError(NodeError):
    """A blob could not be imported, fetched or read; the message says why."""


class BlobInputError(BlobError):
    """The caller asked for something impossible (no such file, too big, not a blob item)."""


def _disk_full(exc: OSError, what: str) -> StoreFullError:
    return StoreFullError(f"cannot {what}: the filesystem is full ({exc.strerror or exc}); "
                          "free disk space and retry -- nothing half-written was kept")


class BlobStore:
    """Content-addressed blob files under ``root`` (see the module docstring). Blocking I/O:
    call from a worker thread (``trio.to_thread.run_sync``) for anything but small reads."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        for p in self.tmp.glob("*.part"):  # left by a crash mid-write: never complete
            p.unlink(missing_ok=True)
        self.count = 0
        self.bytes = 0
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                for f in sub.iterdir():
                    self.count += 1
                    self.bytes += f.stat().st_size

    def path(self, digest: bytes) -> Path:
        h = digest.hex()
        return self.root / h[:2] / h

    def has(self, digest: bytes) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: bytes) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, digest: bytes, offset: int, length: int) -> bytes:
        with open(self.path(digest), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def begin(self) -> "IncomingBlob":
        return IncomingBlob(self)

    def import_file(self, src: str | os.PathLike, max_bytes: int) -> tuple[bytes, int]:
        """Copy a local file into the store; return (sha256, size). Raises BlobInputError if it
        cannot be read or is over ``max_bytes``, StoreFullError if the disk is full."""
        src = Path(src)
        try:
            size = src.stat().st_size
            if not src.is_file():
                raise BlobInputError(f"{src} is not a regular file")
            if size > max_bytes:
                raise BlobInputError(f"{src} is {size} bytes; this network's max_blob_bytes is {max_bytes}")
            inc = self.begin()
            try:
                with open(src, "rb") as f:
                    while True:
                        chunk = f.read(_COPY_CHUNK)
                        if not chunk:
                            break
                        inc.write(chunk)
                        if inc.size > max_bytes:
                            raise BlobInputError(f"{src} grew past max_blob_bytes ({max_bytes}) while being read")
                return inc.finish(None), inc.size
            except BaseException:
                inc.abort()
                raise
        except BlobError:
            raise
        except OSError as e:
            if e.errno in OUT_OF_SPACE_ERRNOS:
                raise _disk_full(e, f"store a copy of {src}") from None
            raise BlobInputError(f"cannot read {src}: {e.strerror or e}") from None


class IncomingBlob:
    """A blob being written: hashed on the fly, renamed into place by ``finish`` only if it
    hashes to the expected digest."""

    def __init__(self, store: BlobStore):
        self.store = store
        self.tmp_path = store.tmp / f"{secrets.token_hex(8)}.part"
        self._f = open(self.tmp_path, "wb")
        self._h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            self.abort()
            if e.errno in OUT_OF_SPACE_ERRNOS:
                raise _disk_full(e, "store a blob") from None
            raise
        self._h.update(data)
        self.size += len(data)

    def finish(self, expected: bytes | None) -> bytes:
        """Verify, fsync and rename into place; return the digest. BlobError on a hash mismatch."""
        digest = self._h.digest()
        if expected is not None and digest != expected:
            self.abort()
            raise BlobError(f"received bytes hash to {digest.hex()[:16]}…, not {expected.hex()[:16]}…")
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            final = self.store.path(digest)
            final.parent.mkdir(mode=0o700, exist_ok=True)
            existed = final.exists()
            os.replace(self.tmp_path, final)
            fsync_dir(final.parent, must=True)
        except OSError as e:
            self.abort()
            if e.errno in OUT_OF_SPACE_ERRNOS:
                raise _disk_full(e, "store a blob") from None
            raise
        if not existed:
            self.store.count += 1
            self.store.bytes += self.size
        return digest

    def abort(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass
        self.tmp_path.unlink(missing_ok=True)

"""Hot backups and restores of a node.

A backup is itself a data dir, plus a manifest::

    DEST/                   mode 0700
      backup.json           manifest: format, time, labelmesh version, network, schema
                            version, messages and last arrival number of the store copy
      store/data.mdb        LMDB copy with compaction, taken in ONE read snapshot
                            (``Store.copy_to``) while the node keeps running and writing
      config.toml           as it was
      genesis.json          the network's genesis (the file named by the config)
      node.key, accounts/   the node identity and the account keys (0600): a backup holds
                            secrets; keep it like the data dir itself
      blobs/                blob files (immutable, content-addressed)

``create_backup`` runs in a worker thread (the RPC method ``backup_create`` calls it
with ``trio.to_thread.run_sync``; ``labelmesh backup`` of a stopped node calls it
directly on the store it opens itself). After copying, it opens the copy as a Store
(which proves it readable) and records its message count in the manifest.

``restore_backup`` copies a backup into a new data dir, checks the manifest, the
genesis and the store (opening it migrates an older schema), and refuses to write
into a directory that is not empty. ``labelmesh run --data-dir DEST`` also starts
straight from a backup (it is a data dir), but then the backup is no longer pristine.

Never run a node restored from a backup while the original still runs on the same
network: both have the same node identity and the same validator account.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from protocol.genesis import genesis_from_json
from protocol.messages import KIND_NAMES

from .. import __version__
from ..config import CONFIG_FILE, load_config
from ..errors import NodeError
from .errors import StoreError
from .fs import fsync_dir
from .layout import SCHEMA_VERSION
from .store import Store

FORMAT = 1
MANIFEST = "backup.json"
_SKIP = {"store", "node.sock", MANIFEST}


class BackupError(NodeError):
    """A backup cannot be made or restored; the message says why and what to do."""


def _empty_target(dest: Path, what: str) -> bool:
    """Make sure ``dest`` is a new or empty directory; create it (0700). True if created."""
    if dest.exists():
        if not dest.is_dir():
            raise BackupError(f"{dest} exists and is not a directory; pick a new directory for the {what}")
        if any(dest.iterdir()):
            raise BackupError(f"{dest} is not empty; pick a new or empty directory for the {what}")
        os.chmod(dest, 0o700)
        return False
    try:
        dest.mkdir(mode=0o700, parents=True)
    except OSError as e:
        raise BackupError(f"cannot create {dest}: {e.strerror}") from None
    os.chmod(dest, 0o700)
    return True


def _copy_file(src: Path, dst: Path, mode: int = 0o600) -> int:
    """Copy one file to a new ``dst`` created with ``mode`` and fsynced; returns its size."""
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    n = 0
    try:
        with open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                os.write(fd, chunk)
                n += len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return n


def _side_files(data_dir: Path) -> list[Path]:
    """Files of a data dir that a backup carries besides the store (relative paths)."""
    out = [Path(CONFIG_FILE)]
    try:
        g = Path(load_config(data_dir).genesis)
    except Exception:
        g = Path("genesis.json")
    if not g.is_absolute() and (data_dir / g).is_file():
        out.append(g)
    if (data_dir / "node.key").is_file():
        out.append(Path("node.key"))
    for sub in ("accounts", "blobs"):
        root = data_dir / sub
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                rel = p.relative_to(data_dir)
                if p.is_file() and not p.is_symlink() and "tmp" not in rel.parts[1:2]:
                    out.append(rel)
    return [p for p in out if (data_dir / p).is_file()]


def create_backup(node, dest: str | os.PathLike) -> dict:
    """Back up ``node`` (anything with ``store``, ``data_dir``, ``genesis``) into ``dest``.
    Blocking: call it from a worker thread while the node runs. Returns the manifest."""
    dest = Path(dest).absolute()
    data_dir = Path(node.data_dir).absolute()
    if dest == data_dir or data_dir in dest.parents:
        raise BackupError(f"{dest} is inside the data dir {data_dir}; put backups outside it (ideally on another disk)")
    created = _empty_target(dest, "backup")
    started = time.monotonic()
    try:
        node.store.copy_to(dest / "store", compact=True)
        os.chmod(dest / "store" / "data.mdb", 0o600)
        with Store(dest / "store") as copy:  # proves the copy opens; counts the snapshot
            messages, last_seq, by_kind = copy.count(), copy.last_seq(), copy.count_by_kind()
        files, size = [], 0
        for rel in _side_files(data_dir):
            size += _copy_file(data_dir / rel, dest / rel, 0o600)
            files.append(str(rel))
        manifest = {
            "format": FORMAT, "created_at_ms": int(time.time() * 1000), "labelmesh_version": __version__,
            "network_name": node.genesis.name, "network_id": node.genesis.network_id.hex(),
            "schema_version": SCHEMA_VERSION, "messages": messages, "last_seq": last_seq,
            "messages_by_kind": {KIND_NAMES.get(k, str(k)): v for k, v in by_kind.items()},
            "store_bytes": os.path.getsize(dest / "store" / "data.mdb"), "files": files, "files_bytes": size,
        }
        tmp = dest / (MANIFEST + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (json.dumps(manifest, indent=1) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest / MANIFEST)
        fsync_dir(dest, must=True)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    return {**manifest, "dest": str(dest), "seconds": round(time.monotonic() - started, 3)}


def read_manifest(src: Path) -> dict:
    try:
        m = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{src} is not a labelmesh backup (no {MANIFEST}); make one with `labelmesh backup DEST`") from None
    except (OSError, ValueError) as e:
        raise BackupError(f"{src / MANIFEST} is unreadable ({e}); the backup is damaged") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BackupError(f"{src / MANIFEST}: unknown backup format {m.get('format') if isinstance(m, dict) else m!r}; "
                          "restore it with the labelmesh version that made it")
    return m


def restore_backup(src: str | os.PathLike, data_dir: str | os.PathLike) -> dict:
    """Copy the backup ``src`` into the new data dir ``data_dir`` and check it. Offline:
    nothing may be running on ``data_dir``. Returns a summary."""
    src, target = Path(src).absolute(), Path(data_dir).absolute()
    manifest = read_manifest(src)
    if not (src / "store" / "data.mdb").is_file():
        raise BackupError(f"{src} has no store/data.mdb; the backup is incomplete")
    if target == src or src in target.parents:
        raise BackupError(f"restore into a directory outside the backup {src}")
    created = _empty_target(target, "restored data dir")
    try:
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src)
            if p.is_dir() or p.is_symlink() or rel.parts[0] in ("node.sock",) or rel.name in ("lock.mdb", "store.lock"):
                continue
            _copy_file(p, target / rel, 0o600)
        for d in [target, *[p for p in target.rglob("*") if p.is_dir()]]:
            os.chmod(d, 0o700)
        cfg = load_config(target)
        genesis = genesis_from_json((target / cfg.genesis).read_text())
        if genesis.network_id.hex() != manifest.get("network_id"):
            raise BackupError(f"the genesis in {src} is not the network the manifest names; the backup is damaged")
        try:
            with Store(target / "store") as st:
                messages, last_seq = st.count(), st.last_seq()
                migrated = st.migrated_from
        except StoreError as e:
            raise BackupError(f"the store in {src} cannot be opened: {e}") from None
        if messages != manifest.get("messages"):
            raise BackupError(f"the store in {src} holds {messages} messages, the manifest says "
                              f"{manifest.get('messages')}; the backup is damaged")
        fsync_dir(target, must=True)
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for p in list(target.iterdir()):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise
    return {"data_dir": str(target), "from": str(src), "network_id": manifest["network_id"],
            "network_name": manifest.get("network_name"), "messages": messages, "last_seq": last_seq,
            "backup_created_at_ms": manifest.get("created_at_ms"), "migrated_from_schema": migrated}

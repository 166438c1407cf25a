"""Account keys of the node's local users, one file per account.

Layout: ``<data-dir>/accounts/<name>.json`` with mode 0600, holding
``{"name", "public_key" (hex), "seed" (hex)}``. Names are short identifiers
(``[A-Za-z0-9_.-]{1,64}``). Keys are never logged; ``public_key`` is safe to show.
The node identity key (libp2p) is separate: ``<data-dir>/node.key``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nacl.signing

from .errors import KeystoreError

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (no window with wider rights)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class Keystore:
    def __init__(self, data_dir: Path):
        self.dir = Path(data_dir) / "accounts"

    def _path(self, name: str) -> Path:
        if not NAME_RE.match(name or ""):
            raise KeystoreError(f"bad account name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
        return self.dir / f"{name}.json"

    def create(self, name: str, seed: bytes | None = None) -> bytes:
        """Create account ``name`` (random key unless ``seed`` given); return its public key."""
        p = self._path(name)
        if p.exists():
            raise KeystoreError(f"account {name!r} already exists")
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        sk = nacl.signing.SigningKey(seed) if seed is not None else nacl.signing.SigningKey.generate()
        pk = bytes(sk.verify_key)
        write_private(p, json.dumps({"name": name, "public_key": pk.hex(), "seed": bytes(sk).hex()}).encode())
        return pk

    def signing_key(self, name: str) -> nacl.signing.SigningKey:
        p = self._path(name)
        try:
            d = json.loads(p.read_text())
            return nacl.signing.SigningKey(bytes.fromhex(d["seed"]))
        except FileNotFoundError:
            raise KeystoreError(f"no account named {name!r}; see `labelmesh account list`") from None
        except (ValueError, KeyError, TypeError):
            raise KeystoreError(f"account file {p} is corrupt") from None

    def public_key(self, name: str) -> bytes:
        return bytes(self.signing_key(name).verify_key)

    def list(self) -> list[dict]:
        if not self.dir.exists():
            return []
        out = []
        for p in sorted(self.dir.glob("*.json")):
            try:
                d = json.loads(p.read_text())
                out.append({"name": d["name"], "public_key": d["public_key"]})
            except (ValueError, KeyError):
                continue
        return out

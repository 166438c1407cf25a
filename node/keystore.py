"""Account keys of the node's local users, one file per account.

Layout: ``<data-dir>/accounts/<name>.json``, mode 0600 from creation (``O_EXCL``,
no window with wider rights), in a directory of mode 0700. Names are short
identifiers (``[A-Za-z0-9_.-]{1,64}``). Two file formats:

* plaintext (no passphrase): ``{"name", "public_key" (hex), "seed" (hex)}``;
* encrypted: ``{"name", "public_key", "encrypted": {"kdf": "argon2id", "opslimit",
  "memlimit", "salt" (hex), "cipher": "xsalsa20poly1305", "box" (hex: nonce ||
  ciphertext || MAC)}}``. The 32-byte secret key is derived from the passphrase
  with libsodium's argon2id (``nacl.pwhash``; cost stored in the file, bounded
  when read) and the seed sealed with ``nacl.secret.SecretBox``. A wrong passphrase
  fails the MAC: KeystoreError, never a wrong key.

Passphrase: the ``passphrase`` argument of a call, else the Keystore's, else the
``LABELMESH_PASSPHRASE`` environment variable (read when needed). ``create``
encrypts when one is set; ``signing_key`` needs one only for encrypted files and
caches the unlocked key in memory (the KDF is deliberately slow). ``public_key``
and ``list`` never need the passphrase.

Keys are never logged and never in an exception message or ``repr``; only
public keys and file paths are. The node identity key (libp2p) is separate:
``<data-dir>/node.key`` (also written with ``write_private``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import stat
from pathlib import Path

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.signing
import nacl.utils

from .errors import KeystoreError

log = logging.getLogger("labelmesh.keystore")

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ENV_PASSPHRASE = "LABELMESH_PASSPHRASE"
KDF = nacl.pwhash.argon2id
# Cost of new encrypted files: libsodium's "moderate" (3 passes, 256 MiB, ~0.5 s).
KDF_OPSLIMIT = KDF.OPSLIMIT_MODERATE
KDF_MEMLIMIT = KDF.MEMLIMIT_MODERATE
# Bounds on the cost a file may ask for (a hostile file must not make us allocate GiBs).
_MIN_OPS, _MAX_OPS = KDF.OPSLIMIT_MIN, KDF.OPSLIMIT_SENSITIVE
_MIN_MEM, _MAX_MEM = KDF.MEMLIMIT_MIN, KDF.MEMLIMIT_SENSITIVE


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (no window with wider rights).
    Raises FileExistsError if it exists (never overwrites, never follows a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_bytes(passphrase: str | bytes) -> bytes:
    return passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)


def _derive(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return KDF.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=opslimit, memlimit=memlimit)


def encrypt_seed(seed: bytes, passphrase: str | bytes, *, opslimit: int = 0, memlimit: int = 0) -> dict:
    """The ``encrypted`` object of a key file for ``seed`` (see the module docstring)."""
    ops, mem = opslimit or KDF_OPSLIMIT, memlimit or KDF_MEMLIMIT
    salt = nacl.utils.random(KDF.SALTBYTES)
    box = nacl.secret.SecretBox(_derive(_as_bytes(passphrase), salt, ops, mem))
    return {"kdf": "argon2id", "opslimit": ops, "memlimit": mem, "salt": salt.hex(),
            "cipher": "xsalsa20poly1305", "box": bytes(box.encrypt(seed)).hex()}


def decrypt_seed(enc: dict, passphrase: str | bytes, where: str) -> bytes:
    """Inverse of ``encrypt_seed``. Raises KeystoreError (wrong passphrase, bad file)."""
    try:
        if enc["kdf"] != "argon2id" or enc["cipher"] != "xsalsa20poly1305":
            raise KeystoreError(f"{where}: unknown key encryption {enc['kdf']}/{enc['cipher']}")
        ops, mem = enc["opslimit"], enc["memlimit"]
        if (type(ops) is not int or type(mem) is not int or not _MIN_OPS <= ops <= _MAX_OPS
                or not _MIN_MEM <= mem <= _MAX_MEM):
            raise KeystoreError(f"{where}: key derivation cost out of range")
        salt, sealed = bytes.fromhex(enc["salt"]), bytes.fromhex(enc["box"])
        if len(salt) != KDF.SALTBYTES:
            raise KeystoreError(f"{where}: bad salt")
    except (KeyError, TypeError, ValueError):
        raise KeystoreError(f"{where}: corrupt encrypted key") from None
    try:
        seed = nacl.secret.SecretBox(_derive(_as_bytes(passphrase), salt, ops, mem)).decrypt(sealed)
    except nacl.exceptions.CryptoError:
        raise KeystoreError(f"{where}: wrong passphrase (or a damaged key file)") from None
    if len(seed) != 32:
        raise KeystoreError(f"{where}: corrupt encrypted key")
    return seed


class Keystore:
    """The accounts of one data dir. ``passphrase``: used to encrypt new accounts and
    unlock encrypted ones (default: ``$LABELMESH_PASSPHRASE`` when needed).

    API: ``create(name, seed=None, passphrase=None) -> public key``,
    ``signing_key(name, passphrase=None) -> nacl SigningKey``, ``public_key(name)``,
    ``list() -> [{"name", "public_key", "encrypted"}]``, ``is_encrypted(name)``.
    All raise KeystoreError with a message that names the fix."""

    def __init__(self, data_dir: Path, passphrase: str | bytes | None = None):
        self.dir = Path(data_dir) / "accounts"
        self._passphrase = passphrase
        self._unlocked: dict[str, nacl.signing.SigningKey] = {}

    def __repr__(self) -> str:  # never shows a passphrase or a key
        return f"Keystore({str(self.dir)!r})"

    def _path(self, name: str) -> Path:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise KeystoreError(f"bad account name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
        return self.dir / f"{name}.json"

    def _passphrase_for(self, passphrase: str | bytes | None) -> str | bytes | None:
        if passphrase is not None:
            return passphrase
        if self._passphrase is not None:
            return self._passphrase
        return os.environ.get(ENV_PASSPHRASE) or None

    def _read(self, name: str) -> tuple[Path, dict]:
        p = self._path(name)
        try:
            st = os.stat(p)
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise KeystoreError(f"no account named {name!r}; see `labelmesh account list`") from None
        except (ValueError, UnicodeDecodeError):
            raise KeystoreError(f"account file {p} is corrupt") from None
        except OSError as e:
            raise KeystoreError(f"cannot read account file {p}: {e.strerror}") from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            log.warning("account file %s is readable by other users (mode %o); run chmod 600 on it",
                        p, stat.S_IMODE(st.st_mode))
        if not isinstance(d, dict):
            raise KeystoreError(f"account file {p} is corrupt")
        return p, d

    def create(self, name: str, seed: bytes | None = None, passphrase: str | bytes | None = None) -> bytes:
        """Create account ``name`` (random key unless ``seed`` given), encrypted if a
        passphrase is set (argument, Keystore or $LABELMESH_PASSPHRASE); return its public key."""
        p = self._path(name)
        if p.exists():
            raise KeystoreError(f"account {name!r} already exists")
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if seed is not None and (not isinstance(seed, (bytes, bytearray)) or len(seed) != 32):
            raise KeystoreError("an account seed is 32 bytes")
        sk = nacl.signing.SigningKey(bytes(seed)) if seed is not None else nacl.signing.SigningKey.generate()
        pk = bytes(sk.verify_key)
        doc: dict = {"name": name, "public_key": pk.hex()}
        pw = self._passphrase_for(passphrase)
        if pw:
            doc["encrypted"] = encrypt_seed(bytes(sk), pw)
        else:
            doc["seed"] = bytes(sk).hex()
        try:
            write_private(p, json.dumps(doc).encode())
        except FileExistsError:
            raise KeystoreError(f"account {name!r} already exists") from None
        self._unlocked[name] = sk
        return pk

    def is_encrypted(self, name: str) -> bool:
        return "encrypted" in self._read(name)[1]

    def signing_key(self, name: str, passphrase: str | bytes | None = None) -> nacl.signing.SigningKey:
        """The account's signing key; an encrypted one needs the passphrase once per Keystore."""
        sk = self._unlocked.get(name)
        if sk is not None and passphrase is None:
            return sk
        p, d = self._read(name)
        try:
            if "encrypted" in d:
                pw = self._passphrase_for(passphrase)
                if not pw:
                    raise KeystoreError(f"account {name!r} is encrypted: set {ENV_PASSPHRASE} "
                                        f"(or pass the passphrase) to unlock it")
                seed = decrypt_seed(d["encrypted"], pw, str(p))
            else:
                seed = bytes.fromhex(d["seed"])
            sk = nacl.signing.SigningKey(seed)
        except KeystoreError:
            raise
        except (ValueError, KeyError, TypeError, nacl.exceptions.CryptoError):
            raise KeystoreError(f"account file {p} is corrupt") from None
        if "public_key" in d and d["public_key"] != bytes(sk.verify_key).hex():
            raise KeystoreError(f"account file {p} is corrupt: its public key does not match its secret key")
        self._unlocked[name] = sk
        return sk

    def public_key(self, name: str) -> bytes:
        """The account's public key (no passphrase needed)."""
        sk = self._unlocked.get(name)
        if sk is not None:
            return bytes(sk.verify_key)
        p, d = self._read(name)
        try:
            if "encrypted" in d:
                pk = bytes.fromhex(d["public_key"])
                if len(pk) != 32:
                    raise ValueError
                return pk
        except (ValueError, KeyError, TypeError):
            raise KeystoreError(f"account file {p} is corrupt") from None
        return bytes(self.signing_key(name).verify_key)

    def list(self) -> list[dict]:
        """Every readable account: ``{"name", "public_key", "encrypted"}`` (sorted by file name)."""
        if not self.dir.exists():
            return []
        out = []
        for p in sorted(self.dir.glob("*.json")):
            try:
                d = json.loads(p.read_text())
                out.append({"name": d["name"], "public_key": d["public_key"], "encrypted": "encrypted" in d})
            except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError):
                continue
        return out

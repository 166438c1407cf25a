"""The ceilings of the building blocks on this machine, one core, measured in the run.

- ``limit_ed25519_verify_per_s``: pynacl ``crypto_sign_open`` (what
  ``protocol.messages.verify_signature`` calls) on ~190-byte signed messages.
- ``limit_lmdb_put_per_s``: py-lmdb puts of 32-byte random keys (content hashes)
  with ~190-byte values, 1,000 per write transaction, ``sync=True`` (durable),
  into a fresh environment that grows to ``n`` records.
- ``limit_msgpack_unpack_per_s``: msgpack ``unpackb`` of a ~190-byte positional array.
- ``limit_unpack_put_per_s``: the single-core pipeline ceiling for storing one
  record = 1 / (1/unpack + 1/put) (both steps on one core, nothing else).

Each is the median of ``repeats`` runs.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

from .common import figure, log, median


def measure_verify(n: int) -> float:
    import nacl.bindings
    import nacl.signing

    sk = nacl.signing.SigningKey(bytes(range(32)))
    pk = bytes(sk.verify_key)
    msgs = [bytes(sk.sign(os.urandom(126))) for _ in range(256)]  # 64 B signature + 126 B body
    open_ = nacl.bindings.crypto_sign_open
    t = time.perf_counter()
    for k in range(n):
        open_(msgs[k & 255], pk)
    return n / (time.perf_counter() - t)


def measure_unpack(n: int) -> float:
    import msgpack

    obj = [2, 1, os.urandom(32), os.urandom(32), 1_800_000_000_000, list(range(40, 80)), os.urandom(64)]
    data = msgpack.packb(obj, use_bin_type=True)
    assert 170 <= len(data) <= 210, len(data)
    unpackb = msgpack.unpackb
    t = time.perf_counter()
    for _ in range(n):
        unpackb(data)
    return n / (time.perf_counter() - t)


def measure_lmdb_put(n: int) -> float:
    import lmdb

    d = tempfile.mkdtemp(prefix="lmb-lmdb-", dir=os.environ.get("TMPDIR", "/tmp"))
    try:
        env = lmdb.open(d, map_size=1 << 32, sync=True, metasync=True, max_dbs=2)
        db = env.open_db(b"msgs")
        val = os.urandom(190)
        keys = [os.urandom(32) for _ in range(n)]
        t = time.perf_counter()
        for s in range(0, n, 1000):
            with env.begin(write=True) as txn:
                put = txn.put
                for k in keys[s:s + 1000]:
                    put(k, val, db=db)
        rate = n / (time.perf_counter() - t)
        env.close()
        return rate
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(quick: bool) -> tuple[list[dict], dict]:
    repeats = 3 if quick else 7
    verify = median([measure_verify(20_000 if quick else 50_000) for _ in range(repeats)])
    unpack = median([measure_unpack(200_000 if quick else 1_000_000) for _ in range(repeats)])
    put = median([measure_lmdb_put(50_000 if quick else 200_000) for _ in range(repeats)])
    pipeline = 1.0 / (1.0 / unpack + 1.0 / put)
    log(f"limits: verify {verify:,.0f}/s  unpack {unpack:,.0f}/s  lmdb put {put:,.0f}/s  "
        f"unpack+put {pipeline:,.0f}/s")
    limits = {"verify": verify, "unpack": unpack, "put": put, "unpack_put": pipeline}
    figs = [
        figure("limit_ed25519_verify_per_s", verify, "verifies/s", note="pynacl crypto_sign_open, one core"),
        figure("limit_msgpack_unpack_per_s", unpack, "unpacks/s", note="~190 B positional array, one core"),
        figure("limit_lmdb_put_per_s", put, "puts/s",
               note=f"random 32 B keys, 190 B values, 1,000 per synced txn, {50_000 if quick else 200_000:,} records"),
        figure("limit_unpack_put_per_s", pipeline, "records/s", note="1/(1/unpack + 1/put): one core stores one record"),
    ]
    return figs, limits

"""A signature-verification helper process (started by ``node/core/verifier.py``; not a CLI).

Run as a script (``python -P verify_worker.py IDLE_S``), so it imports nothing but the
standard library and pynacl: no project code, no trio. It reads requests from stdin
and answers each on stdout, in order:

    request:  u32 count, u32 payload bytes, then per signature
              public key (32 B) | u32 length | signature (64 B) + signed bytes
    answer:   u32 count, then one byte per signature: 1 valid, 0 not

Each check is ``nacl.bindings.crypto_sign_open(signature + signed bytes, public key)``,
exactly what ``protocol.messages.verify_signature`` runs (its public-key point check
is done by the node before sending). The process exits on EOF (the node closed the
pipe, or died -- even by ``kill -9``), after ``IDLE_S`` seconds without a request,
and on any malformed request. SIGINT is ignored: a Ctrl-C in the node's terminal
stops the node, which then closes the pipe.
"""
import os
import select
import signal
import struct
import sys

HEADER = struct.Struct("<II")


def _read_exact(fd: int, n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            return None
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from nacl.bindings import crypto_sign_open

    idle_s = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    rfd, wfd = sys.stdin.fileno(), sys.stdout.fileno()
    while True:
        ready, _, _ = select.select([rfd], [], [], idle_s)
        if not ready:
            return 0  # idle: the node starts a new one when it needs it
        hdr = _read_exact(rfd, HEADER.size)
        if hdr is None:
            return 0
        count, size = HEADER.unpack(hdr)
        payload = _read_exact(rfd, size)
        if payload is None:
            return 0
        out = bytearray(count)
        off = 0
        for k in range(count):
            pk = payload[off:off + 32]
            end = off + 36 + int.from_bytes(payload[off + 32:off + 36], "little")
            if end > size:
                return 2  # malformed request: the node treats the lost answer as a worker failure
            try:
                crypto_sign_open(payload[off + 36:end], pk)
                out[k] = 1
            except Exception:  # noqa: BLE001 - any failure to verify is "not valid"
                pass
            off = end
        try:
            _write_all(wfd, count.to_bytes(4, "little") + bytes(out))
        except BrokenPipeError:
            return 0


if __name__ == "__main__":
    sys.exit(main())

"""Structured logging for the daemon: human text by default, JSON lines with
``log_format = "json"``. libp2p's own loggers are routed through the same
handlers (py-libp2p sets ``propagate=False`` on its root logger; we undo that)
and its noisiest sub-loggers are held at WARNING unless a per-component level
says otherwise (``log_levels = {libp2p = "debug"}`` or ``--log-level
libp2p.pubsub=debug``).

Never log keys or payloads: log ids (hex prefixes) and counts. As a second line
of defence both formatters scrub what they print: a run of 40+ hex digits (a
key, a signature, a raw message in hex) keeps its first 12 digits, a long
``b'...'`` bytes repr is elided, and a message is cut at ``MAX_MESSAGE_CHARS``.
This covers libp2p's records too.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time

from .config import component_logger

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}
NOISY = ["libp2p.pubsub", "libp2p.network", "libp2p.transport", "libp2p.host", "libp2p.stream_muxer",
         "libp2p.security", "libp2p.peer", "libp2p.discovery", "libp2p.identity", "multiaddr", "libp2p.tools"]
MAX_MESSAGE_CHARS = 2000
_HEX_RUN = re.compile(r"(?<![0-9A-Za-z])([0-9a-fA-F]{12})[0-9a-fA-F]{28,}(?![0-9A-Za-z])")
_BYTES_REPR = re.compile(r"""b(?:'(?:[^'\\]|\\.){40,}'|"(?:[^"\\]|\\.){40,}")""")


def scrub(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Remove what must never reach a log: long hex runs (keys, signatures, raw
    messages) are cut to a 12-digit prefix, long bytes reprs are elided, and
    the text is cut at ``limit`` characters."""
    text = _HEX_RUN.sub(r"\1…", text)
    text = _BYTES_REPR.sub("b'…'", text)
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text) - limit} more chars)"
    return text


class TextFormatter(logging.Formatter):
    def format(self, r: logging.LogRecord) -> str:
        extra = {k: v for k, v in r.__dict__.items() if k not in _STD}
        ts = time.strftime("%H:%M:%S", time.localtime(r.created)) + f".{int(r.msecs):03d}"
        s = f"{ts} {r.levelname:<7} {r.name}: {scrub(r.getMessage())}"
        if extra:
            s += " " + " ".join(f"{k}={scrub(str(v), 200)}" for k, v in extra.items())
        if r.exc_info:
            s += "\n" + scrub(self.formatException(r.exc_info), 20_000)
        return s


class JsonFormatter(logging.Formatter):
    def format(self, r: logging.LogRecord) -> str:
        d = {"ts": round(r.created, 3), "level": r.levelname.lower(), "logger": r.name, "msg": scrub(r.getMessage())}
        for k, v in r.__dict__.items():
            if k not in _STD:
                d[k] = v if isinstance(v, (int, float, bool, type(None))) else scrub(str(v), 200)
        if r.exc_info:
            d["exc"] = scrub(self.formatException(r.exc_info), 20_000)
        return json.dumps(d, default=str)


def setup_logging(level: str = "info", fmt: str = "text", stream=None,
                  levels: dict[str, str] | None = None) -> logging.Handler:
    """Send every log record (ours and libp2p's) to one handler on ``stream``
    (stderr). ``levels`` maps components (``sync``, ``libp2p.pubsub``) to
    levels; see ``config.component_logger``. Returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("labelmesh."):
            logging.getLogger(name).setLevel(logging.NOTSET)  # forget a previous setup's levels
    lp = logging.getLogger("libp2p")
    lp.propagate = True
    lp.handlers[:] = []
    for name in NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    overrides = {component_logger(c): lvl.upper() for c, lvl in (levels or {}).items()}
    for name in sorted(overrides, key=len):  # parents first, so a more specific level wins
        logging.getLogger(name).setLevel(overrides[name])
        for noisy in NOISY:
            if noisy.startswith(name + ".") and noisy not in overrides:
                logging.getLogger(noisy).setLevel(logging.NOTSET)  # inherit the component's level
    return handler

"""Structured logging for the daemon: human text by default, JSON lines with
``log_format = "json"``. libp2p's own loggers are routed through the same
handlers (py-libp2p sets ``propagate=False`` on its root logger; we undo that)
and its noisiest sub-loggers are held at WARNING. Never log keys or payloads:
log ids (hex prefixes) and counts.
"""
from __future__ import annotations

import json
import logging
import sys
import time

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}
NOISY = ["libp2p.pubsub", "libp2p.network", "libp2p.transport", "libp2p.host", "libp2p.stream_muxer",
         "libp2p.security", "libp2p.peer", "libp2p.discovery", "libp2p.identity", "multiaddr", "libp2p.tools"]


class TextFormatter(logging.Formatter):
    def format(self, r: logging.LogRecord) -> str:
        extra = {k: v for k, v in r.__dict__.items() if k not in _STD}
        ts = time.strftime("%H:%M:%S", time.localtime(r.created)) + f".{int(r.msecs):03d}"
        s = f"{ts} {r.levelname:<7} {r.name}: {r.getMessage()}"
        if extra:
            s += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        if r.exc_info:
            s += "\n" + self.formatException(r.exc_info)
        return s


class JsonFormatter(logging.Formatter):
    def format(self, r: logging.LogRecord) -> str:
        d = {"ts": round(r.created, 3), "level": r.levelname.lower(), "logger": r.name, "msg": r.getMessage()}
        d.update({k: v for k, v in r.__dict__.items() if k not in _STD})
        if r.exc_info:
            d["exc"] = self.formatException(r.exc_info)
        return json.dumps(d, default=str)


def setup_logging(level: str = "info", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    lp = logging.getLogger("libp2p")
    lp.propagate = True
    lp.handlers[:] = []
    for name in NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))

"""Logging setup: text or JSON lines on stderr; libp2p's chatty loggers tamed to ERROR."""

from __future__ import annotations

import json
import logging
import sys
import time

NOISY_LOGGERS = ("libp2p", "multiaddr", "async_service", "anyio", "amqtt", "transitions")


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(fmt: str = "text", level: str = "info", name: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        prefix = f"[{name}] " if name else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # libp2p logs expected events (a control client without pubsub, a peer gone) as ERROR and sets
    # its own levels, handlers and propagate=False on import: silence the family below CRITICAL
    # (we count what matters ourselves) and route what remains through our (JSON) handler.
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in NOISY_LOGGERS]
    for name in set(names) | set(NOISY_LOGGERS):
        logger = logging.getLogger(name)
        logger.setLevel(logging.CRITICAL if name.startswith("libp2p") else logging.ERROR)
        logger.propagate = True
        logger.handlers[:] = []

"""A labelled set of malformed tick messages, one or more per reject code of
``node.market_events`` (for tests and for ``quantian-sim --malformed``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from node.market_events import encode_payload, format_event_time, topic_for

_DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class MalformedSample:
    code: str  # the reject code validation must give
    topic: str
    payload: bytes
    note: str


def _valid(now_us: int, **changes: Any) -> dict[str, Any]:
    fields = {
        "sensor_id": "sim-bad", "symbol": "BTCUSD", "asset_class": "crypto", "price": 60000.5,
        "volume": 1.25, "source": "quantian-sim-malformed", "event_time": format_event_time(now_us),
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not _DROP}


_DROP = object()
_TOPIC = topic_for("crypto", "BTCUSD")


def malformed_samples(now_us: int) -> list[MalformedSample]:
    """Samples relative to ``now_us`` (the receiver's clock, epoch microseconds)."""
    out: list[MalformedSample] = []

    def add(code: str, note: str, payload: bytes | dict[str, Any], topic: str = _TOPIC) -> None:
        body = payload if isinstance(payload, bytes) else encode_payload(payload)
        out.append(MalformedSample(code, topic, body, note))

    add("too_large", "5 KiB padding field", _valid(now_us, pad="x" * 5000))
    add("bad_topic", "topic with three levels", _valid(now_us), "quantian/market/crypto")
    add("bad_topic", "foreign topic prefix", _valid(now_us), "quantian/other/crypto/BTCUSD")
    add("bad_json", "truncated JSON", b'{"symbol": "BTCUSD", ')
    add("bad_json", "not UTF-8", b"\xff\xfe\x00garbage")
    add("bad_json", "JSON array", b"[1, 2, 3]")
    add("bad_json", "empty payload", b"")
    add("bad_json", "deeply nested", b"[" * 2000 + b"]" * 2000)
    for name in ("sensor_id", "symbol", "asset_class", "price", "volume", "source"):
        add("missing_field", f"no {name}", _valid(now_us, **{name: _DROP}))
    add("bad_type", "price as string", _valid(now_us, price="60000"))
    add("bad_type", "volume as boolean", _valid(now_us, volume=True))
    add("bad_type", "empty sensor_id", _valid(now_us, sensor_id=""))
    add("bad_type", "symbol as number", _valid(now_us, symbol=42))
    add("unknown_asset_class", "payload class bonds", _valid(now_us, asset_class="bonds"))
    add("unknown_asset_class", "topic class bonds", _valid(now_us, asset_class="bonds"), topic_for("bonds", "BTCUSD"))
    add("topic_mismatch", "symbol differs from topic", _valid(now_us, symbol="ETHUSD"))
    add("topic_mismatch", "class differs from topic", _valid(now_us, asset_class="equity"))
    add("bad_price", "zero price", _valid(now_us, price=0))
    add("bad_price", "negative price", _valid(now_us, price=-5.0))
    add("bad_price", "NaN price", _raw(_valid(now_us), price="NaN"))
    add("bad_price", "overflowing price", _raw(_valid(now_us), price="1e400"))
    add("bad_price", "huge integer price", _raw(_valid(now_us), price="9" * 400))
    add("bad_volume", "negative volume", _valid(now_us, volume=-1))
    add("bad_volume", "infinite volume", _raw(_valid(now_us), volume="Infinity"))
    add("bad_timestamp", "not a date", _valid(now_us, event_time="yesterday"))
    add("bad_timestamp", "no time zone", _valid(now_us, event_time="2026-01-01T00:00:00"))
    add("bad_timestamp", "not UTC", _valid(now_us, event_time="2026-01-01T00:00:00+02:00"))
    add("bad_timestamp", "a day in the future", _valid(now_us, event_time=format_event_time(now_us + _DAY_US)))
    add("bad_timestamp", "a year in the past", _valid(now_us, event_time=format_event_time(now_us - 365 * _DAY_US)))
    add("bad_timestamp", "number instead of string", _valid(now_us, event_time=1767225600))
    return out


def _raw(fields: dict[str, Any], **literals: str) -> bytes:
    """JSON with some values spelled literally (NaN, Infinity, 1e400 cannot come from json.dumps)."""
    marks = {name: f"@@{name}@@" for name in literals}
    text = json.dumps({**fields, **marks})
    for name, literal in literals.items():
        text = text.replace(json.dumps(marks[name]), literal)
    return text.encode()

"""The MQTT tick contract: validation, normalisation and de-duplication of market ticks.

Pure functions and small bounded state objects, no I/O. The path of one tick:

    parse(topic, payload, received_at=...)  -> Tick          (or raises RejectedTick with a stable code)
    Normaliser().accept(tick)               -> MarketEvent   (or None when the event ID was seen recently)

Contract (publishers rely on it): topic ``quantian/market/<asset_class>/<symbol>``, QoS 1, one JSON
object per message with ``sensor_id``, ``symbol``, ``asset_class``, ``price``, ``volume``, ``source``
and an optional ``event_time`` (ISO-8601 UTC; defaults to the receive time). Extra fields are
ignored for the event's content but do take part in its identity (e.g. a publisher's ``seq``).

The event ID is derived from the payload's content, never from the receive time, so a QoS 1
redelivery or the same message taken by two bridges gets the same ID.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

TOPIC_PREFIX = "quantian/market"
TOPIC_FILTER = TOPIC_PREFIX + "/#"
ASSET_CLASSES = frozenset({"crypto", "equity", "forex", "commodity"})
REQUIRED_STR_FIELDS = ("sensor_id", "symbol", "asset_class", "source")
REQUIRED_NUM_FIELDS = ("price", "volume")
MAX_PAYLOAD_BYTES = 4096
MAX_FIELD_CHARS = 256
EVENT_ID_DOMAIN = b"quantian/market-event/v1\x00"
WIRE_VERSION = 1

REJECT_CODES = (
    "too_large",
    "bad_topic",
    "bad_json",
    "missing_field",
    "bad_type",
    "unknown_asset_class",
    "topic_mismatch",
    "bad_price",
    "bad_volume",
    "bad_timestamp",
)


class MarketEventError(Exception):
    """Root of this module's errors."""

    code = "market_event_error"


class RejectedTick(MarketEventError):
    """A message that is not a valid tick; ``code`` is one of REJECT_CODES."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class BadWireEvent(MarketEventError):
    """A compact (CBOR-ready) event that cannot be decoded."""

    code = "bad_wire_event"


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_future_s: float = 300.0  # clock skew allowed for event_time ahead of receive time
    max_age_s: float = 7 * 24 * 3600.0  # older ticks are absurd for a live stream


DEFAULT_LIMITS = ValidationLimits()


@dataclass(frozen=True, slots=True)
class Tick:
    """A validated tick, not yet normalised (no derived fields)."""

    event_id: str
    sensor_id: str
    symbol: str
    asset_class: str
    price: float
    volume: float
    source: str
    event_time_us: int  # microseconds since the Unix epoch, UTC
    received_us: int
    event_time_given: bool  # False when event_time defaulted to the receive time


@dataclass(frozen=True, slots=True)
class MarketEvent:
    """A normalised market event, as ingestion, anomaly and risk see it."""

    event_id: str
    symbol: str
    asset_class: str
    price: float
    volume: float
    source: str
    sensor_id: str
    event_time_us: int
    ingest_time_us: int
    price_change: float | None  # price - previous price of the symbol; None for its first event
    price_return: float | None  # price / previous price - 1
    volume_change: float | None  # volume - previous volume of the symbol
    notional: float  # price * volume

    @property
    def event_time(self) -> datetime:
        return datetime.fromtimestamp(self.event_time_us / 1e6, tz=timezone.utc)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MarketEvent:
        try:
            return cls(**data)
        except TypeError as exc:
            raise BadWireEvent(str(exc)) from exc

    def to_wire(self) -> list[Any]:
        """Compact positional form for CBOR: [version, field, ...] in declaration order."""
        return [WIRE_VERSION, *(getattr(self, name) for name in _EVENT_FIELDS)]

    @classmethod
    def from_wire(cls, item: Any) -> MarketEvent:
        if not isinstance(item, (list, tuple)) or len(item) != len(_EVENT_FIELDS) + 1:
            raise BadWireEvent(f"expected a list of {len(_EVENT_FIELDS) + 1} items")
        if item[0] != WIRE_VERSION:
            raise BadWireEvent(f"unsupported wire version {item[0]!r}")
        event = cls(*item[1:])
        for name, kinds in _WIRE_TYPES.items():
            if not isinstance(getattr(event, name), kinds) or isinstance(getattr(event, name), bool):
                raise BadWireEvent(f"field {name} has type {type(getattr(event, name)).__name__}")
        return event


_EVENT_FIELDS = tuple(MarketEvent.__dataclass_fields__)
_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_WIRE_TYPES = {
    "event_id": str, "symbol": str, "asset_class": str, "price": _NUM, "volume": _NUM,
    "source": str, "sensor_id": str, "event_time_us": int, "ingest_time_us": int,
    "price_change": _OPT_NUM, "price_return": _OPT_NUM, "volume_change": _OPT_NUM, "notional": _NUM,
}


def topic_for(asset_class: str, symbol: str) -> str:
    return f"{TOPIC_PREFIX}/{asset_class}/{symbol}"


def encode_payload(fields: dict[str, Any]) -> bytes:
    """Compact JSON bytes of a tick payload, as publishers should send it."""
    return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode()


def format_event_time(epoch_us: int) -> str:
    """ISO-8601 UTC with microseconds and a ``Z`` suffix."""
    seconds, micros = divmod(epoch_us, 1_000_000)
    return f"{_second_text(seconds)}.{micros:06d}Z"


@functools.lru_cache(maxsize=1024)
def _second_text(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def parse_event_time(text: str) -> int:
    """Microseconds since the epoch of an ISO-8601 UTC string; raises ValueError otherwise."""
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None or stamp.utcoffset() != timezone.utc.utcoffset(None):
        raise ValueError("not UTC (needs a Z or +00:00 suffix)")
    delta = stamp - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def event_id_for(fields: dict[str, Any]) -> str:
    """Deterministic ID of a tick payload: a hash of its canonical JSON (key order, spacing and
    int/float spelling of price and volume do not matter; every field, extras included, does)."""
    canon = dict(fields)
    for name in REQUIRED_NUM_FIELDS:
        if isinstance(canon.get(name), (int, float)) and not isinstance(canon[name], bool):
            canon[name] = float(canon[name])
    body = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return hashlib.sha256(EVENT_ID_DOMAIN + body).hexdigest()[:32]


def split_topic(topic: str) -> tuple[str, str]:
    """(asset_class, symbol) of a market topic; raises RejectedTick."""
    parts = topic.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != TOPIC_PREFIX or not parts[3]:
        raise RejectedTick("bad_topic", f"topic {topic[:80]!r} is not {TOPIC_PREFIX}/<class>/<symbol>")
    if parts[2] not in ASSET_CLASSES:
        raise RejectedTick("unknown_asset_class", f"topic asset class {parts[2][:40]!r}")
    return parts[2], parts[3]


def parse(
    topic: str,
    payload: bytes,
    *,
    received_at: float,
    limits: ValidationLimits = DEFAULT_LIMITS,
) -> Tick:
    """Validate one MQTT message (``received_at`` in epoch seconds). Raises only RejectedTick."""
    if len(payload) > limits.max_payload_bytes:
        raise RejectedTick("too_large", f"{len(payload)} bytes > {limits.max_payload_bytes}")
    topic_class, topic_symbol = split_topic(topic)
    fields = _load_object(payload)
    for name in (*REQUIRED_STR_FIELDS, *REQUIRED_NUM_FIELDS):
        if name not in fields:
            raise RejectedTick("missing_field", f"field {name} is missing")
    for name in REQUIRED_STR_FIELDS:
        value = fields[name]
        if not isinstance(value, str) or not value or len(value) > MAX_FIELD_CHARS:
            raise RejectedTick("bad_type", f"field {name} must be a non-empty string")
    for name in REQUIRED_NUM_FIELDS:
        value = fields[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RejectedTick("bad_type", f"field {name} must be a number")
    if fields["asset_class"] not in ASSET_CLASSES:
        raise RejectedTick("unknown_asset_class", f"asset_class {fields['asset_class'][:40]!r}")
    if fields["asset_class"] != topic_class or fields["symbol"] != topic_symbol:
        raise RejectedTick("topic_mismatch", "payload symbol/asset_class differ from the topic's")
    price = _as_float(fields["price"])
    if not (math.isfinite(price) and price > 0):
        raise RejectedTick("bad_price", "price must be finite and > 0")
    volume = _as_float(fields["volume"])
    if not (math.isfinite(volume) and volume >= 0):
        raise RejectedTick("bad_volume", "volume must be finite and >= 0")
    received_us = int(received_at * 1_000_000)
    event_time_us, given = _event_time(fields.get("event_time"), received_us, limits)
    return Tick(
        event_id=event_id_for(fields),
        sensor_id=fields["sensor_id"],
        symbol=fields["symbol"],
        asset_class=fields["asset_class"],
        price=price,
        volume=volume,
        source=fields["source"],
        event_time_us=event_time_us,
        received_us=received_us,
        event_time_given=given,
    )


def _load_object(payload: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RejectedTick("bad_json", f"not JSON: {type(exc).__name__}") from None
    if not isinstance(fields, dict):
        raise RejectedTick("bad_json", f"payload is a JSON {type(fields).__name__}, not an object")
    return fields


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _event_time(value: Any, received_us: int, limits: ValidationLimits) -> tuple[int, bool]:
    if value is None:
        return received_us, False
    if not isinstance(value, str) or len(value) > 64:
        raise RejectedTick("bad_timestamp", "event_time must be an ISO-8601 UTC string")
    try:
        event_us = parse_event_time(value)
    except (ValueError, OverflowError) as exc:
        raise RejectedTick("bad_timestamp", f"event_time {value!r}: {exc}") from None
    if event_us - received_us > limits.max_future_s * 1e6:
        raise RejectedTick("bad_timestamp", f"event_time {value!r} is too far in the future")
    if received_us - event_us > limits.max_age_s * 1e6:
        raise RejectedTick("bad_timestamp", f"event_time {value!r} is too far in the past")
    return event_us, True


class RecentIds:
    """Bounded de-duplication set: the ``capacity`` most recently seen event IDs (LRU)."""

    def __init__(self, capacity: int = 65536) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> bool:
        """Remember ``event_id``; True when it was new, False for a duplicate."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True


class Normaliser:
    """Turns ticks into market events: drops recent duplicates, derives tick-to-tick fields from
    the previous event of the same symbol (bounded to ``max_symbols`` symbols, LRU)."""

    def __init__(self, *, max_symbols: int = 4096, dedup_capacity: int = 65536) -> None:
        self.max_symbols = max_symbols
        self.recent = RecentIds(dedup_capacity)
        self.duplicates = 0
        self._last: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def accept(self, tick: Tick, *, ingest_time_us: int | None = None) -> MarketEvent | None:
        if not self.recent.add(tick.event_id):
            self.duplicates += 1
            return None
        return self.derive(tick, ingest_time_us=ingest_time_us)

    def derive(self, tick: Tick, *, ingest_time_us: int | None = None) -> MarketEvent:
        """Normalise without the duplicate check (for callers that de-duplicate elsewhere)."""
        key = (tick.asset_class, tick.symbol)
        previous = self._last.pop(key, None)
        self._last[key] = (tick.price, tick.volume)
        if len(self._last) > self.max_symbols:
            self._last.popitem(last=False)
        if previous is None:
            change = ret = vol_change = None
        else:
            change = tick.price - previous[0]
            ret = tick.price / previous[0] - 1.0
            vol_change = tick.volume - previous[1]
        return MarketEvent(
            event_id=tick.event_id,
            symbol=tick.symbol,
            asset_class=tick.asset_class,
            price=tick.price,
            volume=tick.volume,
            source=tick.source,
            sensor_id=tick.sensor_id,
            event_time_us=tick.event_time_us,
            ingest_time_us=tick.received_us if ingest_time_us is None else ingest_time_us,
            price_change=change,
            price_return=ret,
            volume_change=vol_change,
            notional=tick.price * tick.volume,
        )


@dataclass
class RejectStats:
    """Counts rejects by code and keeps the latest sample (truncated) of each code."""

    sample_chars: int = 200
    counts: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)

    def record(self, reject: RejectedTick, payload: bytes) -> bool:
        """Count ``reject``; True when it is the first of its code (the caller may log it)."""
        self.counts[reject.code] += 1
        self.samples[reject.code] = f"{reject.detail} | {payload[: self.sample_chars]!r}"
        return self.counts[reject.code] == 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

"""Seeded market generator: a geometric random walk per symbol, anomaly injection, CSV replay.

Deterministic per seed: the same universe, seed, start time, interval and injections give the
same ticks (byte for byte) and the same ground truth. Ticks go round-robin over the universe:
tick ``i`` is for ``universe[i % len(universe)]`` and has event time ``start + i * interval``.
Anomalies draw from their own random stream, so adding them does not change the base walk.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.market_events import ASSET_CLASSES, encode_payload, event_id_for, format_event_time, topic_for

SOURCE = "quantian-sim"
ANOMALY_KINDS = ("spike", "volume", "shift")
DEFAULT_MAGNITUDE = {"spike": 0.08, "volume": 10.0, "shift": 0.05}
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


class SimError(Exception):
    """Bad simulator configuration (universe, injection spec, replay file)."""

    code = "sim_config"


@dataclass(frozen=True)
class Asset:
    symbol: str
    asset_class: str
    start_price: float
    volatility: float  # standard deviation of the per-tick log return
    base_volume: float = 1.0
    drift: float = 0.0  # mean per-tick log return

    def __post_init__(self) -> None:
        if not _SYMBOL_RE.match(self.symbol):
            raise SimError(f"symbol {self.symbol!r} must be 1-32 of A-Z a-z 0-9 . _ -")
        if self.asset_class not in ASSET_CLASSES:
            raise SimError(f"asset class {self.asset_class!r} not one of {sorted(ASSET_CLASSES)}")
        if not (self.start_price > 0 and self.volatility >= 0 and self.base_volume >= 0):
            raise SimError(f"{self.symbol}: need start_price > 0, volatility >= 0, base_volume >= 0")


DEFAULT_UNIVERSE: tuple[Asset, ...] = (
    Asset("BTCUSD", "crypto", 60_000.0, 0.0020, 0.5),
    Asset("ETHUSD", "crypto", 3_000.0, 0.0025, 5.0),
    Asset("AAPL", "equity", 190.0, 0.0006, 300.0),
    Asset("MSFT", "equity", 420.0, 0.0005, 200.0),
)
_CLASS_DEFAULTS = {  # (start price, volatility, base volume) for --symbols entries without them
    "crypto": (100.0, 0.002, 10.0),
    "equity": (100.0, 0.0006, 300.0),
    "forex": (1.0, 0.0001, 100_000.0),
    "commodity": (80.0, 0.0008, 50.0),
}


def parse_asset(spec: str) -> Asset:
    """``SYMBOL:class[:start_price[:volatility[:base_volume]]]``, e.g. ``EURUSD:forex:1.08:0.0001``."""
    parts = spec.split(":")
    if len(parts) < 2 or len(parts) > 5:
        raise SimError(f"asset {spec!r}: expected SYMBOL:class[:price[:volatility[:volume]]]")
    symbol, asset_class = parts[0], parts[1]
    if asset_class not in _CLASS_DEFAULTS:
        raise SimError(f"asset {spec!r}: class must be one of {sorted(_CLASS_DEFAULTS)}")
    values = list(_CLASS_DEFAULTS[asset_class])
    try:
        for i, text in enumerate(parts[2:]):
            values[i] = float(text)
    except ValueError:
        raise SimError(f"asset {spec!r}: price, volatility and volume must be numbers") from None
    return Asset(symbol, asset_class, values[0], values[1], values[2])


def load_universe(path: Path) -> tuple[Asset, ...]:
    """A JSON file: a list of objects with symbol, asset_class, start_price, volatility and
    optionally base_volume and drift."""
    try:
        items = json.loads(Path(path).read_text())
        assets = tuple(Asset(**item) for item in items)
    except (OSError, ValueError, TypeError) as exc:
        raise SimError(f"universe file {path}: {exc}") from None
    if not assets:
        raise SimError(f"universe file {path} lists no assets")
    return assets


@dataclass(frozen=True)
class Injection:
    """An anomaly to inject: at global tick ``at`` (the first tick of ``symbol`` at or after it
    when a symbol is given), or on each tick (of ``symbol``, or any) with ``probability``."""

    kind: str
    magnitude: float
    at: int | None = None
    probability: float = 0.0
    symbol: str | None = None


def parse_injection(spec: str) -> Injection:
    """``KIND@TICK[:SYMBOL][:mag=X]`` or ``KIND:p=PROB[:SYMBOL][:mag=X]``; KIND is spike (price
    jump, fraction), volume (volume burst, multiplier) or shift (lasting level shift, fraction)."""
    head, *rest = spec.split(":")
    kind, _, at_text = head.partition("@")
    if kind not in ANOMALY_KINDS:
        raise SimError(f"injection {spec!r}: kind must be one of {', '.join(ANOMALY_KINDS)}")
    at = probability = None
    symbol = None
    magnitude = DEFAULT_MAGNITUDE[kind]
    try:
        if at_text:
            at = int(at_text)
        for item in rest:
            if item.startswith("p="):
                probability = float(item[2:])
            elif item.startswith("mag="):
                magnitude = float(item[4:])
            elif item:
                symbol = item
    except ValueError:
        raise SimError(f"injection {spec!r}: bad number") from None
    if (at is None) == (probability is None):
        raise SimError(f"injection {spec!r}: give exactly one of @TICK or p=PROB")
    if probability is not None and not 0 < probability <= 1:
        raise SimError(f"injection {spec!r}: probability must be in (0, 1]")
    if at is not None and at < 0:
        raise SimError(f"injection {spec!r}: tick index must be >= 0")
    if not math.isfinite(magnitude) or (kind == "volume" and magnitude <= 0) or magnitude <= -1:
        raise SimError(f"injection {spec!r}: bad magnitude")
    return Injection(kind, magnitude, at, probability or 0.0, symbol)


@dataclass(frozen=True, slots=True)
class SimTick:
    index: int
    symbol: str
    asset_class: str
    price: float
    volume: float
    event_time_us: int
    sensor_id: str
    source: str = SOURCE
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def topic(self) -> str:
        return topic_for(self.asset_class, self.symbol)

    def fields(self) -> dict[str, Any]:
        out = {
            "sensor_id": self.sensor_id,
            "symbol": self.symbol,
            "asset_class": self.asset_class,
            "price": self.price,
            "volume": self.volume,
            "source": self.source,
            "event_time": format_event_time(self.event_time_us),
            "seq": self.index,
        }
        out.update(self.extra)
        return out

    def payload(self) -> bytes:
        """The JSON payload; the same bytes as ``encode_payload(self.fields())``, built faster."""
        if self.extra:
            return encode_payload(self.fields())
        head, source = _payload_parts(self.sensor_id, self.symbol, self.asset_class, self.source)
        return (
            f'{head}{self.price!r},"volume":{self.volume!r},"source":{source},'
            f'"event_time":"{format_event_time(self.event_time_us)}","seq":{self.index}}}'
        ).encode()

    @property
    def event_id(self) -> str:
        return event_id_for(self.fields())


@functools.lru_cache(maxsize=1024)
def _payload_parts(sensor_id: str, symbol: str, asset_class: str, source: str) -> tuple[str, str]:
    head = '{"sensor_id":%s,"symbol":%s,"asset_class":%s,"price":' % (
        json.dumps(sensor_id), json.dumps(symbol), json.dumps(asset_class)
    )
    return head, json.dumps(source)


@dataclass(frozen=True)
class GroundTruth:
    """One injected anomaly, for scoring detection (written as a JSON line)."""

    tick: int
    symbol: str
    asset_class: str
    kind: str
    magnitude: float
    event_time: str
    sensor_id: str
    event_id: str
    price: float
    volume: float

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))


class _Injector:
    """Applies injections to (index, asset, price, volume); collects the ground truth."""

    def __init__(self, injections: Sequence[Injection], seed: int) -> None:
        self.injections = tuple(injections)
        self.rng = random.Random(f"inject:{seed}")
        self.pending_at = {i: inj for i, inj in enumerate(self.injections) if inj.at is not None}
        self.shift: dict[str, float] = {}
        self.truth: list[GroundTruth] = []

    def apply(self, index: int, symbol: str, price: float, volume: float) -> tuple[float, float, list[tuple[str, float]]]:
        if not self.injections:
            return price, volume, []
        hits = []
        for key, inj in list(self.pending_at.items()):
            if index >= inj.at and (inj.symbol is None or inj.symbol == symbol):
                hits.append((inj.kind, inj.magnitude))
                del self.pending_at[key]
        for inj in self.injections:
            if inj.probability and (inj.symbol is None or inj.symbol == symbol) and self.rng.random() < inj.probability:
                sign = -1.0 if inj.kind != "volume" and self.rng.random() < 0.5 else 1.0
                hits.append((inj.kind, sign * inj.magnitude if inj.kind != "volume" else inj.magnitude))
        for kind, magnitude in hits:
            if kind == "shift":
                self.shift[symbol] = self.shift.get(symbol, 1.0) * (1.0 + magnitude)
        price *= self.shift.get(symbol, 1.0)
        for kind, magnitude in hits:
            if kind == "spike":
                price *= 1.0 + magnitude
            elif kind == "volume":
                volume *= magnitude
        return price, volume, hits

    def record(self, tick: SimTick, hits: list[tuple[str, float]]) -> list[GroundTruth]:
        start = len(self.truth)
        for kind, magnitude in hits:
            self.truth.append(GroundTruth(
                tick=tick.index, symbol=tick.symbol, asset_class=tick.asset_class, kind=kind,
                magnitude=magnitude, event_time=format_event_time(tick.event_time_us),
                sensor_id=tick.sensor_id, event_id=tick.event_id, price=tick.price, volume=tick.volume,
            ))
        return self.truth[start:]


@dataclass
class MarketSim:
    """Geometric random walk per asset. Iterate ``ticks(count)``; read ``ground_truth`` after."""

    universe: Sequence[Asset] = DEFAULT_UNIVERSE
    seed: int = 0
    start_time_us: int = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
    interval_us: int = 1_000
    injections: Sequence[Injection] = ()
    sensor_prefix: str = "sim"
    _injector: _Injector | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.universe:
            raise SimError("empty universe")
        symbols = {a.symbol for a in self.universe}
        if len(symbols) != len(self.universe):
            raise SimError("duplicate symbols in the universe")
        for inj in self.injections:
            if inj.symbol is not None and inj.symbol not in symbols:
                raise SimError(f"injection for unknown symbol {inj.symbol}")

    @property
    def ground_truth(self) -> list[GroundTruth]:
        return list(self._injector.truth) if self._injector else []

    def ticks(self, count: int | None) -> Iterator[SimTick]:
        """``count`` ticks (None: endless). Starts over (same seed, same ticks) on every call."""
        rng = random.Random(self.seed)
        self._injector = injector = _Injector(self.injections, self.seed)
        n = len(self.universe)
        log_price = [math.log(a.start_price) for a in self.universe]
        index = 0
        while count is None or index < count:
            slot = index % n
            asset = self.universe[slot]
            log_price[slot] += asset.drift + asset.volatility * rng.gauss(0.0, 1.0)
            volume = asset.base_volume * rng.lognormvariate(0.0, 0.5)
            price, volume, hits = injector.apply(index, asset.symbol, math.exp(log_price[slot]), volume)
            tick = SimTick(
                index=index, symbol=asset.symbol, asset_class=asset.asset_class,
                price=_round_price(price), volume=round(volume, 6),
                event_time_us=self.start_time_us + index * self.interval_us,
                sensor_id=f"{self.sensor_prefix}-{asset.symbol}",
            )
            if hits:
                injector.record(tick, hits)
            yield tick
            index += 1


def _round_price(price: float) -> float:
    """Eight significant digits: compact payloads, still far below any tick size."""
    return float(f"{price:.8g}")


def replay_csv(
    path: Path,
    *,
    asset_class: str = "equity",
    symbols: Sequence[str] | None = None,
    seed: int = 0,
    start_time_us: int = 1_767_225_600_000_000,
    interval_us: int = 1_000,
    injections: Sequence[Injection] = (),
    count: int | None = None,
    ground_truth: list[GroundTruth] | None = None,
    sensor_prefix: str = "replay",
) -> Iterator[SimTick]:
    """Ticks from a CSV of real prices: the first column is the date, every other column a price
    series (its header, or ``symbols``, names the symbol; a ``volume`` column, if any, is used
    for all). Empty or non-positive cells are skipped. Event times follow the simulated clock;
    the row's date travels in the extra field ``as_of``. Injections apply as in MarketSim."""
    if asset_class not in ASSET_CLASSES:
        raise SimError(f"asset class {asset_class!r} not one of {sorted(ASSET_CLASSES)}")
    try:
        handle = open(path, newline="")
    except OSError as exc:
        raise SimError(f"replay file {path}: {exc}") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or len(header) < 2:
            raise SimError(f"replay file {path}: needs a date column and at least one price column")
        columns = [i for i, name in enumerate(header) if i > 0 and name.strip().lower() != "volume"]
        vol_col = next((i for i, name in enumerate(header) if name.strip().lower() == "volume"), None)
        names = list(symbols) if symbols else [_symbol_from(header[i]) for i in columns]
        if len(names) != len(columns):
            raise SimError(f"replay file {path}: {len(columns)} price columns but {len(names)} symbols")
        for name in names:
            Asset(name, asset_class, 1.0, 0.0)  # validates the symbol
        rng = random.Random(seed)
        injector = _Injector(injections, seed)
        index = 0
        for row in reader:
            for col, symbol in zip(columns, names):
                if count is not None and index >= count:
                    return
                try:
                    price = float(row[col])
                    volume = float(row[vol_col]) if vol_col is not None else round(rng.lognormvariate(6.0, 0.5), 2)
                except (IndexError, ValueError):
                    continue
                if not (math.isfinite(price) and price > 0):
                    continue
                price, volume, hits = injector.apply(index, symbol, price, volume)
                tick = SimTick(
                    index=index, symbol=symbol, asset_class=asset_class, price=_round_price(price),
                    volume=volume, event_time_us=start_time_us + index * interval_us,
                    sensor_id=f"{sensor_prefix}-{symbol}", extra=(("as_of", row[0]),),
                )
                if hits:
                    records = injector.record(tick, hits)
                    if ground_truth is not None:
                        ground_truth.extend(records)
                yield tick
                index += 1


def _symbol_from(column: str) -> str:
    symbol = re.sub(r"[^A-Za-z0-9._-]", "_", column.strip()).upper()[:32]
    return symbol or "PRICE"


def spike_tick(
    symbol: str,
    *,
    asset_class: str | None = None,
    price: float | None = None,
    magnitude: float = 0.2,
    volume: float | None = None,
    event_time_us: int,
    index: int = 0,
    sensor_id: str | None = None,
) -> SimTick:
    """One synthetic price-spike tick for ``symbol``: ``price`` (default: the symbol's start price
    in the default universe) times ``1 + magnitude``."""
    known = {a.symbol: a for a in DEFAULT_UNIVERSE}.get(symbol)
    if asset_class is None:
        if known is None:
            raise SimError(f"give asset_class for {symbol} (not in the default universe)")
        asset_class = known.asset_class
    base = price if price is not None else (known.start_price if known else _CLASS_DEFAULTS[asset_class][0])
    Asset(symbol, asset_class, base, 0.0)
    vol = volume if volume is not None else (known.base_volume if known else _CLASS_DEFAULTS[asset_class][2])
    return SimTick(
        index=index, symbol=symbol, asset_class=asset_class, price=_round_price(base * (1.0 + magnitude)),
        volume=vol, event_time_us=event_time_us, sensor_id=sensor_id or f"sim-{symbol}",
        extra=(("injected", "spike"),),
    )


def write_ground_truth(path: Path, records: Iterable[GroundTruth]) -> int:
    n = 0
    with open(path, "w") as out:
        for record in records:
            out.write(record.to_json() + "\n")
            n += 1
    return n

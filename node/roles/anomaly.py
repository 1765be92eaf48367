"""anomaly role: score per-symbol batches of market events and raise alerts.

Ingestion routes each symbol to one anomaly node (rendezvous hashing), so the per-symbol state
lives here: one `MarketDetector` (price + volume, the code and threshold the NAB benchmark
measures) per symbol, at most `max_symbols` of them (least recently used dropped). A batch is
scored symbol by symbol in one call each, in a worker thread so the node keeps serving.

An alert is the detector's first above-threshold tick of an ongoing event. It is kept in a
bounded list and recorded as `anomaly_alert_created` with status `pending_review`; operators
review it with the network-wide `review` command (node/views.py).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict, deque
from typing import Any

import numpy as np
import trio

from node.analytics.detector import DetectorConfig, DetectorError, MarketDetector, Score
from node.errors import ConfigError
from node.market_events import BadWireEvent, MarketEvent, RecentIds, format_event_time
from node.protocols import ticks
from node.roles.base import Role

log = logging.getLogger("quantian.anomaly")

MAX_SYMBOLS = 512
DEDUP_CAPACITY = 65536
MAX_ALERTS = 500
PENDING_REVIEW = "pending_review"
MAX_EVENT_TIME_US = 253_402_300_799_000_000  # 9999-12-31: beyond it a time cannot be written as a date


def alert_id_for(event_id: str) -> str:
    """Deterministic alert id: a redelivered or re-scored event names the same alert."""
    return "al-" + hashlib.sha256(event_id.encode()).hexdigest()[:12]


def decode_batch(batch: ticks.Batch) -> list[MarketEvent]:
    """The batch's market events, checked against their ids; raises BatchRefused on anything odd."""
    events = []
    for index, (item, item_id) in enumerate(zip(batch.items, batch.item_ids)):
        try:
            event = MarketEvent.from_wire(item)
        except (BadWireEvent, TypeError) as exc:
            raise ticks.BatchRefused(f"item {index} is not a market event: {exc}") from None
        if event.event_id != item_id:
            raise ticks.BatchRefused(f"item {index} has event id {event.event_id[:16]!r}, listed as {item_id[:16]!r}")
        if not (math.isfinite(event.price) and event.price > 0 and math.isfinite(event.volume) and event.volume >= 0):
            raise ticks.BatchRefused(f"item {index} has price {event.price!r} / volume {event.volume!r} out of range")
        if not 0 <= event.event_time_us <= MAX_EVENT_TIME_US:
            raise ticks.BatchRefused(f"item {index} has event time {event.event_time_us!r} out of range")
        events.append(event)
    return events


def fresh_by_symbol(events: list[MarketEvent], seen: RecentIds) -> tuple[dict[str, list[MarketEvent]], int]:
    """Events not seen before (nor earlier in the batch), per symbol in event-time order; and the duplicate count."""
    by_symbol: dict[str, list[MarketEvent]] = {}
    ids: set[str] = set()
    duplicates = 0
    for event in events:
        if event.event_id in seen or event.event_id in ids:
            duplicates += 1
            continue
        ids.add(event.event_id)
        by_symbol.setdefault(event.symbol, []).append(event)
    for group in by_symbol.values():
        group.sort(key=lambda e: e.event_time_us)  # stable: arrival order breaks ties
    return by_symbol, duplicates


class AnomalyRole(Role):
    name = "anomaly"
    capabilities = ("detect_anomalies", "submit_review_feedback")

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        settings = dict(ctx.config.extra.get("anomaly", {}))
        sizes = {"max_symbols": MAX_SYMBOLS, "dedup_capacity": DEDUP_CAPACITY, "max_alerts": MAX_ALERTS}
        unknown = sorted(set(settings) - set(sizes) - {"detector"})
        if unknown:
            raise ConfigError(f"[anomaly] unknown setting(s) {', '.join(unknown)}; known: {', '.join(sizes)}, detector")
        for key, value in settings.items():
            if key in sizes and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"[anomaly] {key} must be an integer >= 1, got {value!r}")
        sizes.update((k, v) for k, v in settings.items() if k in sizes)
        try:  # [anomaly.detector] overrides DetectorConfig fields (the benchmarked defaults otherwise)
            self.detector_config = DetectorConfig(**settings.get("detector", {}))
        except (TypeError, DetectorError) as exc:
            raise ConfigError(f"[anomaly.detector] {exc}") from None
        self.max_symbols = sizes["max_symbols"]
        self._seen = RecentIds(sizes["dedup_capacity"])
        self._detectors: OrderedDict[str, MarketDetector] = OrderedDict()
        self.alerts: deque[dict[str, Any]] = deque(maxlen=sizes["max_alerts"])
        self._lock = trio.Lock()  # one batch scored at a time: detectors are stateful
        self.counts = {"batches": 0, "scored": 0, "duplicates": 0, "alerts": 0, "refused": 0,
                       "symbols_evicted": 0}
        ctx.services["batch_handlers"][ticks.KIND_SCORE] = self.on_batch

    async def on_batch(self, sender: str, batch: ticks.Batch) -> dict[str, Any]:
        try:
            events = decode_batch(batch)
        except ticks.BatchRefused as exc:
            self.counts["refused"] += 1
            self.ctx.metrics.inc("anomaly.batches_refused")
            log.warning("refused score batch %s from %s: %s", batch.batch_id, sender, exc)
            raise
        async with self._lock:
            by_symbol, duplicates = fresh_by_symbol(events, self._seen)
            try:
                scored = await trio.to_thread.run_sync(self._score, by_symbol)
            except DetectorError as exc:  # validated above; a detector refusal still must not kill the node
                self.counts["refused"] += 1
                self.ctx.metrics.inc("anomaly.batches_refused")
                raise ticks.BatchRefused(f"detector refused the batch: {exc}") from None
            for group in by_symbol.values():
                for event in group:
                    self._seen.add(event.event_id)
        alerts = [self._raise_alert(event, score) for event, score in scored if score.alert]
        n = sum(len(group) for group in by_symbol.values())
        self.counts["batches"] += 1
        self.counts["scored"] += n
        self.counts["duplicates"] += duplicates
        self.ctx.metrics.inc("anomaly.batches")
        self.ctx.metrics.inc("anomaly.scored", n)
        self.ctx.metrics.inc("anomaly.duplicates", duplicates)
        return {"scored": n, "duplicates": duplicates, "alerts": len(alerts)}

    def _score(self, by_symbol: dict[str, list[MarketEvent]]) -> list[tuple[MarketEvent, Score]]:
        out = []
        for symbol, group in by_symbol.items():
            detector = self._detector(symbol)
            scores = detector.score_batch(np.array([e.price for e in group], dtype=float),
                                          np.array([e.volume for e in group], dtype=float))
            out.extend(zip(group, scores))
        return out

    def _detector(self, symbol: str) -> MarketDetector:
        detector = self._detectors.pop(symbol, None)
        if detector is None:
            detector = MarketDetector(self.detector_config)
        self._detectors[symbol] = detector
        if len(self._detectors) > self.max_symbols:
            self._detectors.popitem(last=False)
            self.counts["symbols_evicted"] += 1
        return detector

    def _raise_alert(self, event: MarketEvent, score: Score) -> dict[str, Any]:
        now = time.time()
        alert = {
            "alert_id": alert_id_for(event.event_id), "event_id": event.event_id, "symbol": event.symbol,
            "asset_class": event.asset_class, "score": round(score.score, 6), "severity": score.severity,
            "reason": score.reason, "price": event.price, "volume": event.volume,
            "parts": {"price": round(score.price, 6), "volume": round(score.volume, 6),
                      "forest": round(score.forest, 6)},
            "threshold": self.detector_config.threshold,
            "event_time": format_event_time(event.event_time_us),
            "created_at": format_event_time(int(now * 1e6)), "created_ms": int(now * 1000),
            "status": PENDING_REVIEW, "detector": self.ctx.identity.peer_id,
        }
        self.alerts.append(alert)
        self.counts["alerts"] += 1
        self.ctx.metrics.inc("anomaly.alerts")
        self.ctx.metrics.inc(f"anomaly.alerts.{score.severity}")
        self.ctx.services["ledger"].record_soon("anomaly_alert_created", alert, self.ctx.identity.peer_id)
        log.info("alert %s %s %s score %.3f: %s", alert["alert_id"], event.symbol, score.severity, score.score,
                 score.reason)
        return alert

    def status(self) -> dict[str, Any]:
        return {**self.counts, "symbols": len(self._detectors), "recent_alerts": len(self.alerts),
                "threshold": self.detector_config.threshold}

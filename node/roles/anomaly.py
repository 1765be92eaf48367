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
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from node.errors import ConfigError
from node.market_events import MarketEvent, RecentIds, format_event_time
from node.protocols import ticks
from node.roles.base import Role
from node.roles.batches import decode_batch, fresh_by_symbol

if TYPE_CHECKING:
    from node.analytics.detector import MarketDetector, Score

log = logging.getLogger("quantian.anomaly")

MAX_SYMBOLS = 512
DEDUP_CAPACITY = 65536
MAX_ALERTS = 500
PENDING_REVIEW = "pending_review"


def alert_id_for(event_id: str) -> str:
    """Deterministic alert id: a redelivered or re-scored event names the same alert."""
    return "al-" + hashlib.sha256(event_id.encode()).hexdigest()[:12]


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
        # Imported here, not at module level: scikit-learn and SciPy cost ~140 MB of RSS, which
        # only a node with this role should pay (measured with bench/pipeline.py).
        from node.analytics import detector as detector_lib

        self._detector_lib = detector_lib
        try:  # [anomaly.detector] overrides DetectorConfig fields (the benchmarked defaults otherwise)
            self.detector_config = detector_lib.DetectorConfig(**settings.get("detector", {}))
        except (TypeError, detector_lib.DetectorError) as exc:
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
            except self._detector_lib.DetectorError as exc:  # validated above; a detector refusal still must not kill the node
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
            detector = self._detector_lib.MarketDetector(self.detector_config)
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

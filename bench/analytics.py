"""Micro-benchmarks of node.analytics and a market-shaped detection benchmark.

    python bench/analytics.py [--seeds 5] [--ticks 20000] [--repeat 3]

1. Synthetic markets (deterministic per seed, no dependency on sim/): a
   log-price random walk with lognormal volumes, into which price spikes
   (1-3 ticks, then revert), volume bursts (5 ticks) and price level shifts
   (a jump that persists) are injected.  The MarketDetector with its default
   config scores each series in batches; an event counts as detected if an
   alert falls within ``TOLERANCE`` ticks of its start.  Reports precision
   (alerts that hit an event), recall per event kind and detection delay.
2. Throughput: rows/s of batch scoring (median of ``--repeat`` runs), the
   tick-by-tick rate, and the risk snapshot.

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

import numpy as np

from node.analytics import risk
from node.analytics.detector import DetectorConfig, MarketDetector, StreamingDetector

TOLERANCE = 20  # ticks after an event's start in which an alert counts
KINDS = ("spike", "burst", "shift")
SIGMA = 1e-3  # per-tick log-return volatility of the synthetic walk


@dataclass(frozen=True)
class Event:
    kind: str
    start: int
    size: float  # in return sigmas (spike, shift) or volume multiple (burst)


def synthetic_market(seed: int, n: int, n_events: int, warmup: int = 1500) -> tuple[np.ndarray, np.ndarray, list[Event]]:
    """Prices, volumes and the injected events, all determined by ``seed``."""
    rng = np.random.default_rng(seed)
    rets = rng.normal(0.0, SIGMA, n)
    vol = rng.lognormal(np.log(1000.0), 0.35, n)
    gap = (n - warmup) // n_events
    events = []
    for k in range(n_events):
        start = warmup + k * gap + int(rng.integers(0, gap // 2))
        kind = KINDS[int(rng.integers(0, len(KINDS)))]
        sign = 1.0 if rng.random() < 0.5 else -1.0
        if kind == "spike":
            size = float(rng.uniform(5, 12))
            width = int(rng.integers(1, 4))
            rets[start] += sign * size * SIGMA
            rets[start + width] -= sign * size * SIGMA
        elif kind == "burst":
            size = float(rng.uniform(4, 12))
            vol[start:start + 5] *= size
        else:
            size = float(rng.uniform(5, 12))
            rets[start] += sign * size * SIGMA
        events.append(Event(kind, start, size))
    prices = 100.0 * np.exp(np.cumsum(rets))
    return prices, vol, events


def score_market(alerts: np.ndarray, events: list[Event]) -> dict[str, object]:
    """Match alerts to events: hits, misses, false alarms and delays."""
    hit_rows = set()
    found: dict[str, list[int]] = {k: [] for k in KINDS}
    total = {k: 0 for k in KINDS}
    alert_rows = np.flatnonzero(alerts)
    for ev in events:
        total[ev.kind] += 1
        inside = alert_rows[(alert_rows >= ev.start) & (alert_rows <= ev.start + TOLERANCE)]
        if len(inside):
            found[ev.kind].append(int(inside[0] - ev.start))
            hit_rows.update(inside.tolist())
    return {"alerts": len(alert_rows), "true_alerts": len(hit_rows), "found": found, "total": total}


def market_benchmark(seeds: int, ticks: int, events_per_series: int) -> dict[str, object]:
    alerts = true_alerts = 0
    found: dict[str, list[int]] = {k: [] for k in KINDS}
    total = {k: 0 for k in KINDS}
    for seed in range(seeds):
        prices, volumes, events = synthetic_market(seed, ticks, events_per_series)
        det = MarketDetector()
        flags = np.concatenate([det.detect(prices[i:i + 1000], volumes[i:i + 1000]).alerts
                                for i in range(0, ticks, 1000)])
        r = score_market(flags, events)
        alerts += r["alerts"]
        true_alerts += r["true_alerts"]
        for k in KINDS:
            found[k] += r["found"][k]
            total[k] += r["total"][k]
    n_found = sum(len(v) for v in found.values())
    all_delays = [d for v in found.values() for d in v]
    out: dict[str, object] = {
        "events": sum(total.values()),
        "precision": true_alerts / alerts if alerts else float("nan"),
        "recall": n_found / sum(total.values()),
        "median_delay_ticks": statistics.median(all_delays) if all_delays else None,
        "false_alerts_per_10k_ticks": 1e4 * (alerts - true_alerts) / (seeds * ticks),
    }
    for k in KINDS:
        out[f"recall_{k}"] = len(found[k]) / total[k] if total[k] else float("nan")
        out[f"median_delay_{k}"] = statistics.median(found[k]) if found[k] else None
    return out


def _median_rate(fn, rows: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return rows / statistics.median(times)


def throughput(repeat: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    n = 100_000
    x = np.cumsum(rng.normal(size=n))
    prices, volumes, _ = synthetic_market(1, n, 50)

    def batch() -> None:
        det = StreamingDetector()
        for i in range(0, n, 1000):
            det.detect(x[i:i + 1000])

    def market() -> None:
        det = MarketDetector()
        for i in range(0, n, 1000):
            det.detect(prices[i:i + 1000], volumes[i:i + 1000])

    def ticks() -> None:
        det = StreamingDetector()
        for v in x[:3000]:
            det.detect(np.array([v]))

    def stats_only() -> None:
        det = StreamingDetector(DetectorConfig(use_forest=False))
        for i in range(0, n, 1000):
            det.detect(x[i:i + 1000])

    sp = np.cumprod(1 + rng.normal(0, 0.01, 5000))
    return {
        "detector_batch_rows_per_s": _median_rate(batch, n, repeat),
        "detector_stats_only_rows_per_s": _median_rate(stats_only, n, repeat),
        "market_batch_rows_per_s": _median_rate(market, n, repeat),
        "detector_tick_by_tick_rows_per_s": _median_rate(ticks, 3000, 1),
        "risk_snapshot_per_s": _median_rate(lambda: risk.snapshot(sp), 1, repeat),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--ticks", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=30, help="events per series")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    m = market_benchmark(a.seeds, a.ticks, a.events)
    print(f"synthetic market: {a.seeds} series x {a.ticks} ticks, {m['events']} events, tolerance {TOLERANCE} ticks")
    print(f"  precision {m['precision']:.3f}  recall {m['recall']:.3f}  median delay {m['median_delay_ticks']} ticks"
          f"  false alerts/10k ticks {m['false_alerts_per_10k_ticks']:.2f}")
    for k in KINDS:
        print(f"  {k:<6} recall {m[f'recall_{k}']:.3f}  median delay {m[f'median_delay_{k}']}")
    t = throughput(a.repeat)
    for k, v in t.items():
        print(f"  {k:<36}{v:>14,.0f}")
    print(json.dumps({**{k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()},
                      **{k: round(v) for k, v in t.items()}}))


if __name__ == "__main__":
    main()

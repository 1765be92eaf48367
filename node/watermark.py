"""Event-time watermark over the bridges feeding an ingestion node: which ticks can go out in order.

Why: iot bridges sharing the MQTT subscription each carry part of every symbol's stream, each part
in order, but their batches interleave at ingestion. Bridge A's batch for 0-100 ms can be forwarded
before bridge B's ticks of the same 100 ms have arrived, and the anomaly detector, which judges a
symbol's ticks as a sequence, then sees the price step back in time (two-bridge bench: ~60 false
alerts per 30,000 ticks, against ~4 with one bridge). The watermark is the oldest of the newest
event times of the bridges heard from recently: a bridge in order has sent everything up to its
newest tick, so every tick at or before the watermark has arrived, and forwarding up to it, sorted,
keeps each symbol in order. With one bridge the watermark is that bridge's newest tick: nothing
waits. A bridge silent for `active_s` stops counting, so a dead or idle one holds nothing back,
and the newest ticks of a burst wait no longer than that: a bridge sends its batch within 100 ms
of that batch's first message (node/roles/iot.py), so one silent for 0.3 s has nothing older on
the way unless it is overloaded. Measured with two bridges (bench/pipeline.py --iot-bridges 2,
30,000-tick bursts): with 1 s the last ticks of each burst waited for the 0.5 s hold bound
instead, p99 publish->scored 315 ms at 1,000/s; with 0.3 s, 209-212 ms.

Pure logic with an injectable clock; the ingestion role bounds how long a tick may wait.
"""

from __future__ import annotations

import time
from typing import Callable

DEFAULT_ACTIVE_S = 0.3


class Watermark:
    """min over active senders of the newest event time each has delivered."""

    def __init__(self, *, active_s: float = DEFAULT_ACTIVE_S, clock: Callable[[], float] = time.monotonic) -> None:
        if active_s <= 0:
            raise ValueError("active_s must be > 0")
        self._active_s = active_s
        self._clock = clock
        self._senders: dict[str, tuple[float, int]] = {}  # sender -> (last heard, newest event time)

    def observe(self, sender: str, newest_event_time_us: int) -> None:
        """A batch from `sender` whose newest tick has this event time."""
        _, newest = self._senders.get(sender, (0.0, newest_event_time_us))
        self._senders[sender] = (self._clock(), max(newest, newest_event_time_us))

    def active(self) -> list[str]:
        """Senders heard from within `active_s` (forgets the others)."""
        cutoff = self._clock() - self._active_s
        for sender in [s for s, (heard, _) in self._senders.items() if heard < cutoff]:
            del self._senders[sender]
        return list(self._senders)

    def value(self) -> int | None:
        """The watermark in event-time µs, or None when no sender is active (nothing to wait for)."""
        self.active()
        return min((newest for _, newest in self._senders.values()), default=None)

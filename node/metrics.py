"""Named counters (drops by reason, refusals, requests). Bounded: names come from code, not peers."""

from __future__ import annotations

from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def inc(self, name: str, amount: int = 1) -> None:
        self._counts[name] += amount

    def get(self, name: str) -> int:
        return self._counts[name]

    def snapshot(self, prefix: str = "") -> dict[str, int]:
        return {k: v for k, v in sorted(self._counts.items()) if k.startswith(prefix)}

"""Checks shared by the roles that receive market-event batches from ingestion (anomaly, risk).

A batch comes from a peer: every item is rebuilt from its wire form and checked against the id
it is listed under, so a role computes only on events that ingestion could have produced.
"""

from __future__ import annotations

import math

from node.market_events import BadWireEvent, MarketEvent, RecentIds
from node.protocols import ticks

MAX_EVENT_TIME_US = 253_402_300_799_000_000  # 9999-12-31: beyond it a time cannot be written as a date


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

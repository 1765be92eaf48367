"""ingestion role: normalise and de-duplicate ticks, store them, route them to anomaly and risk.

A tick batch from an iot bridge is acknowledged only once its events are committed to the
event store; forwarders then move pending events to the owner of each symbol for
`detect_anomalies` and for `compute_risk` (rendezvous hashing over live peers, failing over to
the next-ranked), mark them delivered on ack, and record `batch_routed` — or `routing_failed`
once per outage while the events wait for redelivery. Nothing accepted is dropped.
`market_batch_ingested` and `batch_routed` are rolled up (node/rollup.py): one record per peer
(and kind) per second, not one per batch.

Several iot bridges sharing the MQTT subscription interleave each symbol's ticks, so the
forwarders send events in event-time order up to the bridges' watermark (node/watermark.py): an
event newer than it waits until the lagging bridge's batch arrives, at most REORDER_MAX_HOLD_S.
With one bridge nothing waits.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from typing import Any

import trio

from node.event_store import EventStore
from node.market_events import MarketEvent, Normaliser
from node.protocols import ticks
from node.protocols.control import CommandError
from node.roles.base import Role
from node.rollup import Rollup
from node.watermark import Watermark

log = logging.getLogger("quantian.ingestion")

FORWARD_BATCH = 2000
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
DOWNSTREAM = {"score": "detect_anomalies", "risk": "compute_risk"}
# How long an event may wait for the watermark: bridges gather batches for 100 ms (node/roles/iot.py),
# so a second bridge's ticks of the same moment arrive within ~150 ms; past this bound an event goes
# out anyway, counted in `reorder_hold_releases`: a bridge that keeps sending but lags in event time
# (then the detector may see a step back in time). The newest ticks of a burst go out sooner, once
# the quiet bridge stops counting (node/watermark.py, 0.3 s).
REORDER_MAX_HOLD_S = 0.5


class IngestionRole(Role):
    name = "ingestion"
    capabilities = ("ingest_market_data", "store_market_events", "publish_events")

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.store: EventStore | None = None
        self._normaliser = Normaliser()
        self._lock = trio.Lock()
        self._wake = {kind: trio.Event() for kind in DOWNSTREAM}
        self.counts = {"batches": 0, "received": 0, "ingested": 0, "duplicates": 0,
                       "routed_score": 0, "routed_risk": 0, "routing_failures": 0, "store_failures": 0,
                       "reorder_hold_releases": 0, "held_back": 0}
        self.watermark = Watermark()
        self._arrivals: deque[tuple[float, int]] = deque()  # (monotonic, newest seq) per stored batch
        self._aged_seq = 0  # events up to this seq were stored REORDER_MAX_HOLD_S ago or more
        self._outage: dict[str, bool] = {kind: False for kind in DOWNSTREAM}
        record, me = ctx.services["ledger"].record_soon, ctx.identity.peer_id
        self.ingested_records = Rollup(record, "market_batch_ingested", me)
        self.routed_records = Rollup(record, "batch_routed", me)
        ctx.services["batch_handlers"][ticks.KIND_INGEST] = self.on_batch
        ctx.control.register("ticks recent", self._cmd_recent, "recent market events (args: symbol, limit)")

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.store = await trio.to_thread.run_sync(EventStore, self.ctx.config.data_dir)
        self._aged_seq = self.store.last_seq  # stored before this start: nothing to wait for
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.ingested_records.run)
                await nursery.start(self.routed_records.run)
                for kind in DOWNSTREAM:
                    nursery.start_soon(self._forward, kind)
                task_status.started()
        finally:
            self.store.close()

    # --- inbound -----------------------------------------------------------------------------

    async def on_batch(self, sender: str, batch: ticks.Batch) -> dict[str, Any]:
        if self.store is None:
            raise ticks.BatchRefused("ingestion store is not open yet")
        decoded = [ticks.tick_from_wire(item) for item in batch.items]
        async with self._lock:  # one batch at a time keeps per-symbol derivation in order
            try:
                known = await trio.to_thread.run_sync(self.store.known, [t.event_id for t in decoded])
                fresh: list[MarketEvent] = []
                seen: set[str] = set()
                for tick in decoded:
                    if tick.event_id in known or tick.event_id in seen:
                        continue
                    seen.add(tick.event_id)
                    fresh.append(self._normaliser.derive(tick))
                rows = [(e.event_id, e.symbol, e.event_time_us, e.to_wire()) for e in fresh]
                added = await trio.to_thread.run_sync(self.store.add, rows) if rows else 0
                if added:
                    self._arrivals.append((time.monotonic(), self.store.last_seq))
                if decoded:
                    self.watermark.observe(sender, max(t.event_time_us for t in decoded))
            except sqlite3.Error as exc:  # disk full, I/O error: nothing committed, the sender keeps it
                self.counts["store_failures"] += 1
                self._normaliser = Normaliser()  # derived state may have advanced past what was stored
                log.error("cannot store a batch of %d ticks from %s: %s", len(decoded), sender, exc)
                raise ticks.BatchRefused(f"ingestion cannot store ticks now: {exc}") from None
        duplicates = len(decoded) - added
        self.counts["batches"] += 1
        self.counts["received"] += len(decoded)
        self.counts["ingested"] += added
        self.counts["duplicates"] += duplicates
        self.ctx.metrics.inc("ingestion.ticks", added)
        self.ctx.metrics.inc("ingestion.duplicates", duplicates)
        for event in self._wake.values():
            event.set()
        if added:
            self.ingested_records.add({"from": sender}, [e.event_id for e in fresh],
                                      counts={"duplicates": duplicates})
        return {"accepted": added, "duplicates": duplicates}

    # --- outbound ----------------------------------------------------------------------------

    async def _forward(self, kind: str) -> None:
        backoff = BACKOFF_MIN_S
        store_trouble = False
        while True:
            try:
                backoff = await self._forward_once(kind, backoff)
                if store_trouble:
                    store_trouble = False
                    log.info("%s outbox: the store works again", kind)
            except sqlite3.Error as exc:
                # Disk full (or an I/O error) while marking what was delivered: the rows stay
                # pending and go out again once the store works; downstream drops the repeats.
                self.counts["store_failures"] += 1
                if not store_trouble:  # one line per outage, not per retry
                    store_trouble = True
                    log.error("%s outbox: cannot update the event store (%s); retrying every %.0f s at most",
                              kind, exc, BACKOFF_MAX_S)
                await trio.sleep(backoff)  # waiting for the disk to come back: elapsed time is the point
                backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _forward_once(self, kind: str, backoff: float) -> float:
        """One round of the outbox: send what is pending, mark what was delivered; the next backoff."""
        capability = DOWNSTREAM[kind]
        self._wake[kind] = trio.Event()
        # twice a batch: events held for the watermark at the head must not hide ready ones behind them
        pending = await trio.to_thread.run_sync(self.store.pending, kind, 2 * FORWARD_BATCH)
        if not pending:
            await self._wake[kind].wait()
            return BACKOFF_MIN_S  # everything was delivered: a later outage starts from the minimum
        pending, wait_s = self._in_order(kind, pending)
        if not pending:  # all newer than the watermark: until the next batch or the hold bound
            with trio.move_on_after(wait_s):
                await self._wake[kind].wait()
            return backoff
        result = await self.ctx.services["dispatcher"].deliver_grouped(
            capability, kind, pending, key=lambda r: r[2], wire=lambda r: r[4], item_id=lambda r: r[1])
        for peer, rows, batch in result.delivered:
            await trio.to_thread.run_sync(self.store.mark_delivered, kind, [r[0] for r in rows])
            self.counts[f"routed_{kind}"] += len(rows)
            self.routed_records.add({"to": peer, "kind": kind}, batch.item_ids, symbols={r[2] for r in rows})
        if not result.undelivered:
            if self._outage[kind]:
                self._outage[kind] = False
                log.info("%s routing recovered", kind)
            return BACKOFF_MIN_S
        self.counts["routing_failures"] += 1
        if not self._outage[kind]:  # one record per outage, not per retry
            self._outage[kind] = True
            reason = "; ".join(result.errors)[:500]
            self.ctx.services["ledger"].record_soon(
                "routing_failed", {"kind": kind, "capability": capability, "ticks": len(result.undelivered),
                                   "reason": reason}, self.ctx.identity.peer_id)
            log.warning("cannot route %d %s events yet: %s", len(result.undelivered), kind, reason)
        await trio.sleep(backoff)  # waiting for a peer to (re)appear: elapsed time is the point
        return min(BACKOFF_MAX_S, backoff * 2)

    def _in_order(self, kind: str, pending: list[tuple]) -> tuple[list[tuple], float]:
        """The pending rows that may go out now, in event-time order: at or before the watermark,
        or stored REORDER_MAX_HOLD_S ago; and the seconds until the oldest held row's bound."""
        now = time.monotonic()
        while self._arrivals and self._arrivals[0][0] <= now - REORDER_MAX_HOLD_S:
            self._aged_seq = self._arrivals.popleft()[1]
        mark = self.watermark.value()
        if mark is None:  # no bridge heard from lately: nothing more is coming to wait for
            ready = pending
        else:
            ready = [r for r in pending if r[3] <= mark or r[0] <= self._aged_seq]
        ready.sort(key=lambda r: r[3])  # stable: arrival order breaks ties
        if kind == "score":  # the detector is the consumer that order matters to
            self.counts["held_back"] = len(pending) - len(ready)  # a gauge, at the last look
        del ready[FORWARD_BATCH:]  # the oldest first; a frame holds at most ticks.MAX_BATCH_ITEMS
        if kind == "score" and mark is not None:
            self.counts["reorder_hold_releases"] += sum(1 for r in ready if r[3] > mark)
        wait_s = self._arrivals[0][0] + REORDER_MAX_HOLD_S - now if self._arrivals else REORDER_MAX_HOLD_S
        return ready, max(wait_s, 0.001)

    # --- commands ----------------------------------------------------------------------------

    async def _cmd_recent(self, args: dict, operator: str) -> dict:
        symbol = args.get("symbol")
        limit = args.get("limit", 20)
        if symbol is not None and not isinstance(symbol, str):
            raise CommandError("symbol must be a string")
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise CommandError("limit must be an integer from 1 to 1000")
        wires = await trio.to_thread.run_sync(self.store.recent, symbol, limit)
        return {"ticks": [MarketEvent.from_wire(w).to_dict() for w in wires]}

    def status(self) -> dict[str, Any]:
        out = dict(self.counts)
        out["ledger_records"] = {"market_batch_ingested": self.ingested_records.records,
                                 "batch_routed": self.routed_records.records}
        if self.store is not None:
            out.update(self.store.counts())
        return out

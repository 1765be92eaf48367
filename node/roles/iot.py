"""iot role: the MQTT bridge. paho -> bounded staging queue -> batch -> validate -> ingestion.

MQTT messages are acknowledged (manual PUBACK) only after the ingestion peer acknowledged the
batch holding them, so a tick the broker handed us is never lost: if we die first, the broker's
persistent session delivers it again. Ticks are routed by symbol to the ingestion owner
(rendezvous hashing), so per-symbol derivation happens on one node. Malformed payloads are
counted by reason, a sample of each kind logged, and acknowledged (they can never be delivered).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from node.market_events import RejectedTick, RejectStats, parse
from node.mqtt import Bridge, BridgeConfig, MqttError, RawMessage
from node.protocols import ticks
from node.roles.base import Role

log = logging.getLogger("quantian.iot")

BATCH_MAX = 1000
# How long a batch gathers ticks after its first one. Every hop downstream pays per batch (a stream
# write + ack, a store transaction, a detector call per symbol), so this trades latency for CPU:
# bench/pipeline.py measured 50 ms -> 100 ms as 410 -> 328 network µs per tick at 2,000 ticks/s
# and 684 -> 490 at 1,000/s, with p99 publish->scored 135 -> 184 ms at 1,000/s.
BATCH_WAIT_S = 0.1
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
CAPABILITY_INGEST = "ingest_market_data"
INFLIGHT_MAX = 4000


class IotRole(Role):
    name = "iot"
    capabilities = ("collect_edge_telemetry", "mqtt_bridge", "publish_events")

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.bridge: Bridge | None = None
        self.rejects = RejectStats()
        self.counts = {"valid": 0, "forwarded": 0, "batches": 0, "delivery_retries": 0}
        self.state = "not configured (no --mqtt-url)"
        ctx.control.register("iot stats", self._cmd_stats, "MQTT bridge figures and rejects by reason")

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        url = self.ctx.config.mqtt_url
        if not url:
            log.warning("iot role has no MQTT broker (--mqtt-url / QUANTIAN_MQTT_URL): bridging nothing")
            task_status.started()
            await trio.sleep_forever()
        client_id = f"quantian-iot-{self.ctx.identity.peer_id[-16:]}"
        task_status.started()
        backoff = 1.0
        while True:
            # Staging holds every message the broker may send unacked (ReceiveMaximum), so
            # paho's thread never blocks on backpressure and keeps its keepalive going; a
            # blocked client gets dropped by the broker, which then redelivers everything.
            self.bridge = Bridge(BridgeConfig(url=url, client_id=client_id, channel_size=INFLIGHT_MAX,
                                              receive_maximum=INFLIGHT_MAX))
            self.state = f"connecting to {self.bridge.address.display}"
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.bridge.run)
                    self.state = f"bridging {self.bridge.address.display}"
                    backoff = 1.0
                    await self._pump(self.bridge)
            except MqttError as exc:
                self.state = f"broker unavailable: {exc}"
                log.warning("MQTT bridge: %s; retrying in %.0f s", exc, backoff)
            await trio.sleep(backoff)  # reconnect backoff
            backoff = min(30.0, backoff * 2)

    async def _pump(self, bridge: Bridge) -> None:
        while True:
            messages = await bridge.receive_batch(BATCH_MAX, BATCH_WAIT_S)
            valid: list[tuple[Any, RawMessage]] = []
            rejected: list[RawMessage] = []
            for message in messages:
                try:
                    valid.append((parse(message.topic, message.payload, received_at=message.received_at), message))
                except RejectedTick as reject:
                    rejected.append(message)
                    self.ctx.metrics.inc(f"iot.rejected.{reject.code}")
                    if self.rejects.record(reject, message.payload):
                        log.warning("rejected MQTT payload on %s (%s): %s", message.topic[:100], reject.code,
                                    self.rejects.samples[reject.code])
            if rejected:
                bridge.ack(rejected)
            self.counts["valid"] += len(valid)
            await self._forward(bridge, valid)

    async def _forward(self, bridge: Bridge, valid: list[tuple[Any, RawMessage]]) -> None:
        """Deliver every valid tick to its ingestion owner, acking MQTT per delivered batch; what
        cannot be delivered yet is retried with backoff (MQTT backs up meanwhile, nothing is lost)."""
        dispatcher = self.ctx.services["dispatcher"]
        backoff = BACKOFF_MIN_S
        reported = False
        while valid:
            result = await dispatcher.deliver_grouped(
                CAPABILITY_INGEST, ticks.KIND_INGEST, valid, key=lambda e: e[0].symbol,
                wire=lambda e: ticks.tick_to_wire(e[0]), item_id=lambda e: e[0].event_id)
            for _peer, group, _batch in result.delivered:
                bridge.ack([m for _, m in group])
                self.counts["forwarded"] += len(group)
                self.counts["batches"] += 1
            valid = result.undelivered
            if not valid:
                if reported:
                    log.info("ingestion reachable again")
                return
            self.counts["delivery_retries"] += 1
            if not reported:
                reported = True
                reason = "; ".join(result.errors)[:500]
                log.warning("holding %d ticks: %s", len(valid), reason)
                self.ctx.services["ledger"].record_soon(
                    "routing_failed", {"kind": ticks.KIND_INGEST, "ticks": len(valid), "reason": reason},
                    self.ctx.identity.peer_id)
            await trio.sleep(backoff)  # waiting for an ingestion peer: elapsed time is the point
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _cmd_stats(self, args: dict, operator: str) -> dict:
        return self.status()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, **self.counts,
                               "rejected": dict(self.rejects.counts), "reject_samples": dict(self.rejects.samples)}
        if self.bridge is not None:
            stats = self.bridge.stats
            out["mqtt"] = {"received": stats.received, "acked": stats.acked, "inflight": stats.inflight,
                           "reconnects": stats.reconnects, "connected": stats.connected,
                           "protocol": stats.protocol, "subscription": stats.subscription}
        return out

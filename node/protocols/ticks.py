"""Tick batches between pipeline roles over long-lived, acknowledged direct streams.

The cost of a libp2p stream is per write (LIBP2P-NOTES §4): ~800 frames/s one per write,
~84,000/s a hundred per write. So ticks travel in batches (one frame = up to MAX_BATCH_ITEMS),
over a stream that stays open, and every batch is acknowledged by id. The receiver answers only
once it holds the batch (or refuses it); a sender that gets no ack within the timeout treats
the batch as undelivered and the caller re-routes it. Nothing here decides who receives what:
roles do, with `node.routing`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from chain.merkle import merkle_root
from node.admission import Admission
from node.errors import NodeError, RequestTimeout
from node.host import Host, StreamClosed
from node.metrics import Metrics
from node.protocols.codec import FrameReader, write_frames

PROTOCOL_ID = "/quantian/ticks/1.0.0"
KIND_INGEST = "ingest"  # iot -> ingestion: validated ticks
KIND_SCORE = "score"  # ingestion -> anomaly: market events
KIND_RISK = "risk"  # ingestion -> risk: market events
KINDS = (KIND_INGEST, KIND_SCORE, KIND_RISK)
MAX_BATCH_ITEMS = 2000
MAX_FRAME = 4 * 1024 * 1024
ACK_TIMEOUT_S = 15.0
IDLE_TIMEOUT_S = 3600.0

log = logging.getLogger("quantian.ticks")

_batch_ids = itertools.count(1)


class DeliveryFailed(NodeError):
    """The receiver did not acknowledge a batch: it may or may not hold it; re-route it."""

    code = "delivery_failed"


class BatchRefused(NodeError):
    code = "batch_refused"


@dataclass(frozen=True)
class Batch:
    kind: str
    batch_id: int
    items: list[Any]  # wire forms (lists) of ticks or market events
    item_ids: list[str]  # event ids, in order: the Merkle root and de-duplication use them

    @property
    def merkle_root(self) -> bytes:
        return batch_root(self.item_ids)


def batch_root(item_ids: list[str]) -> bytes:
    """The Merkle root over a batch's event ids, as recorded in `batch_routed` ledger records."""
    return merkle_root([hashlib.sha256(i.encode()).digest() for i in item_ids])


def new_batch(kind: str, items: list[Any], item_ids: list[str]) -> Batch:
    if kind not in KINDS:
        raise ValueError(f"unknown batch kind {kind!r}")
    if len(items) != len(item_ids) or len(items) > MAX_BATCH_ITEMS:
        raise ValueError("a batch needs one id per item and at most MAX_BATCH_ITEMS items")
    return Batch(kind, next(_batch_ids), items, item_ids)


BatchFn = Callable[[str, Batch], Awaitable[dict[str, Any]]]  # (sender peer, batch) -> ack details


class Handler:
    """Reads batches from a long-lived stream, hands each to the role's function, acks it."""

    def __init__(self, admission: Admission, metrics: Metrics, handlers: dict[str, BatchFn]) -> None:
        self._admission = admission
        self._metrics = metrics
        self._handlers = handlers

    async def __call__(self, stream) -> None:
        peer = stream.remote_peer
        reader = FrameReader(stream, MAX_FRAME)
        while True:
            try:
                frame = await reader.read_frame(IDLE_TIMEOUT_S)
            except RequestTimeout:
                return
            except NodeError as exc:  # oversized or malformed frame: drop the stream, the sender re-sends
                self._metrics.inc(f"ticks.bad_frame.{exc.code}")
                log.warning("bad tick frame from %s: %s", peer, exc)
                return
            if not self._admission.is_member(peer):  # e.g. its handshake has not completed yet
                self._metrics.inc("ticks.refused.not_member")
                await write_frames(stream, [{"batch_id": frame.get("batch_id"), "ok": False,
                                             "error": "not an admitted member (yet)"}])
                continue
            await write_frames(stream, [await self._one(peer, frame)])

    async def _one(self, peer: str, frame: dict[str, Any]) -> dict[str, Any]:
        batch_id, kind = frame.get("batch_id"), frame.get("kind")
        items, item_ids = frame.get("items"), frame.get("ids")
        fn = self._handlers.get(kind) if isinstance(kind, str) else None
        if fn is None:
            self._metrics.inc("ticks.refused.unknown_kind")
            return {"batch_id": batch_id, "ok": False, "error": f"this node does not accept {kind!r} batches"}
        if not (isinstance(items, list) and isinstance(item_ids, list) and len(items) == len(item_ids)
                and len(items) <= MAX_BATCH_ITEMS and all(isinstance(i, str) for i in item_ids)):
            self._metrics.inc("ticks.refused.malformed")
            return {"batch_id": batch_id, "ok": False, "error": "malformed batch"}
        try:
            details = await fn(peer, Batch(kind, batch_id if isinstance(batch_id, int) else -1, items, item_ids))
        except BatchRefused as exc:
            self._metrics.inc("ticks.refused.by_role")
            return {"batch_id": batch_id, "ok": False, "error": str(exc)}
        self._metrics.inc(f"ticks.batches_in.{kind}")
        return {"batch_id": batch_id, "ok": True, **details}


class Sender:
    """One long-lived stream to one peer; one batch in flight at a time."""

    def __init__(self, host: Host, peer_id: str) -> None:
        self._host = host
        self.peer_id = peer_id
        self._stream = None
        self._reader: FrameReader | None = None
        self._lock = trio.Lock()

    async def send(self, batch: Batch, timeout: float = ACK_TIMEOUT_S) -> dict[str, Any]:
        async with self._lock:
            try:
                with trio.fail_after(timeout):
                    if self._stream is None:
                        self._stream = await self._host.open_stream(self.peer_id, PROTOCOL_ID)
                        self._reader = FrameReader(self._stream, MAX_FRAME)
                    await write_frames(self._stream, [{"batch_id": batch.batch_id, "kind": batch.kind,
                                                       "items": batch.items, "ids": batch.item_ids}])
                    ack = await self._reader.read_frame(timeout)
            except (trio.TooSlowError, NodeError, StreamClosed) as exc:
                await self.close()
                # A connection that cannot carry a new stream is often half-dead in py-libp2p's
                # swarm; dropping it lets discovery redial a fresh one.
                await self._host.disconnect(self.peer_id)
                raise DeliveryFailed(f"{batch.kind} batch {batch.batch_id} to {self.peer_id}: {str(exc) or 'no ack within ' + str(timeout) + ' s'}") from None
            if ack.get("batch_id") != batch.batch_id:
                await self.close()
                raise DeliveryFailed(f"ack for {ack.get('batch_id')!r}, expected {batch.batch_id}")
            if not ack.get("ok"):
                raise BatchRefused(f"{self.peer_id} refused {batch.kind} batch: {ack.get('error')}")
            return ack

    async def close(self) -> None:
        stream, self._stream, self._reader = self._stream, None, None
        if stream is not None:
            await stream.reset()


class Senders:
    """Sender per peer, created on first use."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._senders: dict[str, Sender] = {}

    def to(self, peer_id: str) -> Sender:
        sender = self._senders.get(peer_id)
        if sender is None:
            sender = self._senders[peer_id] = Sender(self._host, peer_id)
        return sender

    async def forget(self, peer_id: str) -> None:
        sender = self._senders.pop(peer_id, None)
        if sender is not None:
            await sender.close()


# --- wire form of a validated tick (iot -> ingestion) ---------------------------------------------

_TICK_FIELDS = ("event_id", "sensor_id", "symbol", "asset_class", "price", "volume", "source",
                "event_time_us", "received_us", "event_time_given")
_TICK_TYPES = (str, str, str, str, (int, float), (int, float), str, int, int, bool)


def tick_to_wire(tick) -> list[Any]:
    return [getattr(tick, name) for name in _TICK_FIELDS]


def tick_from_wire(item: Any):
    """Rebuild a validated Tick from a peer; raises BatchRefused on anything malformed."""
    from node.market_events import Tick

    if not isinstance(item, list) or len(item) != len(_TICK_FIELDS):
        raise BatchRefused(f"a tick must be a list of {len(_TICK_FIELDS)} fields")
    for value, kinds, name in zip(item, _TICK_TYPES, _TICK_FIELDS):
        if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
            raise BatchRefused(f"tick field {name} has type {type(value).__name__}")
    if not (item[4] > 0 and item[5] >= 0):
        raise BatchRefused("tick price must be > 0 and volume >= 0")
    return Tick(*item)

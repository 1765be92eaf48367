"""Publish ticks to an MQTT broker at a high rate: pipelined QoS 1 over several connections.

Each connection is a minimal MQTT 3.1.1 client (sim.wire) that writes PUBLISH packets a batch at
a time; ``publishers=K`` spreads the stream over K connections, each in its own process (K=1
runs a thread in this process, and so do all K when the caller runs threads). Ticks of one
topic always go to the same connection, so the per-symbol order is kept. Each connection keeps
up to ``window`` messages unacknowledged (no waiting on each publish); the summary counts what
was sent, PUBACKed, and failed.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from node.mqtt import BrokerAddress, MqttError, parse_broker_url
from sim.market import SimTick
from sim.wire import Packets, Publisher, WireError

BATCH = 256
INBOX_BATCHES = 16
_SENT, _ACKED, _FAILED = range(3)
Message = tuple[str, bytes]


class PublishError(Exception):
    """The broker could not be reached, refused us, or a publisher process failed."""

    code = "publish_failed"


@dataclass
class PublishSummary:
    sent: int = 0  # PUBLISH packets handed to the connections (duplicates included)
    acked: int = 0  # PUBACKed by the broker
    failed: int = 0  # rejected by paho or the broker, or unacked when we gave up waiting
    duplicates: int = 0  # re-published on purpose (--duplicate-every)
    elapsed_s: float = 0.0
    publishers: int = 1

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": round(self.rate, 1), "elapsed_s": round(self.elapsed_s, 3)}


def check_reachable(address: BrokerAddress, timeout: float = 5.0) -> None:
    try:
        socket.create_connection((address.host, address.port), timeout=timeout).close()
    except OSError as exc:
        raise PublishError(f"cannot reach MQTT broker {address.display}: {exc.strerror or exc}") from None


def publish_ticks(
    url: str,
    ticks: Iterable[SimTick | Message],
    *,
    rate: float | None = None,
    publishers: int = 1,
    qos: int = 1,
    duplicate_every: int = 0,
    window: int = 2000,
    ca_file: str | None = None,
    client_id_prefix: str | None = None,
    progress: Callable[[PublishSummary], None] | None = None,
    progress_interval: float = 1.0,
    ack_timeout: float = 30.0,
) -> PublishSummary:
    """Publish ``ticks`` (SimTicks or (topic, payload) pairs) at ``rate`` ticks/s (None: as fast
    as possible); every ``duplicate_every``-th tick is published twice. Returns once every
    message is acknowledged (or ``ack_timeout`` passed). Raises PublishError."""
    if publishers < 1 or window < 1 or qos not in (0, 1):
        raise PublishError("publishers and window must be >= 1, qos 0 or 1")
    if rate is not None and rate <= 0:
        raise PublishError("rate must be > 0")
    try:
        address = parse_broker_url(url, ca_file=ca_file)
    except MqttError as exc:
        raise PublishError(str(exc)) from None
    check_reachable(address)
    prefix = client_id_prefix or f"quantian-sim-{os.getpid()}-{secrets.token_hex(3)}"
    lanes = _Lanes(address, prefix, publishers, qos, window, ack_timeout)
    summary = PublishSummary(publishers=publishers)
    start = time.monotonic()
    next_progress = start + progress_interval
    try:
        lanes.wait_connected()
        pending: list[list[Message]] = [[] for _ in range(publishers)]
        lane_of: dict[str, int] = {}
        for i, tick in enumerate(ticks):
            topic, payload = (tick.topic, tick.payload()) if isinstance(tick, SimTick) else tick
            k = lane_of.setdefault(topic, len(lane_of) % publishers)
            pending[k].append((topic, payload))
            if duplicate_every and (i + 1) % duplicate_every == 0:
                pending[k].append((topic, payload))
                summary.duplicates += 1
            if len(pending[k]) >= BATCH:
                lanes.put(k, pending[k])
                pending[k] = []
            now = time.monotonic()
            if rate is not None:
                ahead = start + (i + 1) / rate - now
                if ahead > 0.005:
                    lanes.flush(pending)
                    time.sleep(ahead)  # rate pacing
            if progress and now >= next_progress:
                progress(lanes.snapshot(summary, now - start))
                next_progress = now + progress_interval
        lanes.flush(pending)
        lanes.finish(progress=lambda: progress and progress(lanes.snapshot(summary, time.monotonic() - start)),
                     interval=progress_interval)
    finally:
        lanes.close()
    return lanes.snapshot(summary, time.monotonic() - start)


class _Lanes:
    """K publisher workers and their shared counters: processes when this process has no other
    threads (the quantian-sim CLI: fork is cheap and safe then), threads otherwise (a program
    with threads must not fork, and spawning interpreters takes seconds on a busy machine; the
    wire client's per-message work is small enough for threads to carry thousands of ticks/s)."""

    def __init__(self, address: BrokerAddress, prefix: str, k: int, qos: int, window: int, ack_timeout: float):
        self.k = k
        self.qos = qos
        processes = k > 1 and threading.active_count() == 1
        ctx = multiprocessing.get_context("fork")
        self.counters = ctx.Array("q", 3 * k, lock=False)
        self.results = ctx.Queue() if processes else queue.Queue()
        self.inboxes = [ctx.Queue(INBOX_BATCHES) if processes else queue.Queue(INBOX_BATCHES) for _ in range(k)]
        self.workers: list[Any] = []
        self.done: dict[int, tuple] = {}
        for i in range(k):
            args = (i, address, f"{prefix}-{i}", qos, window, ack_timeout, self.inboxes[i], self.counters, self.results)
            kind = ctx.Process if processes else threading.Thread
            worker = kind(target=_worker, args=args, daemon=True)
            worker.start()
            self.workers.append(worker)

    def _poll_results(self, timeout: float = 0.0) -> None:
        try:
            item = self.results.get(timeout=timeout) if timeout else self.results.get_nowait()
        except queue.Empty:
            return
        kind, index, detail = item
        if kind == "error":
            raise PublishError(f"publisher {index}: {detail}")
        self.done[index] = detail

    def wait_connected(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        ready = 0
        while ready < self.k:
            if time.monotonic() > deadline:
                raise PublishError("publishers did not connect in time")
            try:
                item = self.results.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise PublishError(f"publishers did not connect within {timeout:.0f} s") from None
            if item[0] == "error":
                raise PublishError(f"publisher {item[1]}: {item[2]}")
            ready += 1

    def put(self, k: int, batch: list[Message] | None) -> None:
        packets = None if batch is None else Packets.encode(batch, self.qos)
        while True:
            try:
                self.inboxes[k].put(packets, timeout=0.5)
                return
            except queue.Full:
                self._poll_results()
                if not self.workers[k].is_alive():
                    raise PublishError(f"publisher {k} exited") from None

    def flush(self, pending: list[list[Message]]) -> None:
        for k, batch in enumerate(pending):
            if batch:
                self.put(k, batch)
                pending[k] = []

    def finish(self, *, progress: Callable[[], Any], interval: float) -> None:
        for k in range(self.k):
            self.put(k, None)
        deadline = None
        while len(self.done) < self.k:
            self._poll_results(timeout=interval)
            while len(self.done) < self.k and not self._drained():
                self._poll_results()
            if len(self.done) == self.k:
                break
            progress()
            if not any(w.is_alive() for k, w in enumerate(self.workers) if k not in self.done):
                # every worker has exited: their last results may still be in the pipe
                deadline = deadline or time.monotonic() + 5.0
                if time.monotonic() > deadline:
                    raise PublishError("a publisher exited without a summary")

    def _drained(self) -> bool:
        return self.results.empty()

    def snapshot(self, summary: PublishSummary, elapsed: float) -> PublishSummary:
        c = self.counters
        summary.sent = sum(c[3 * i + _SENT] for i in range(self.k))
        summary.acked = sum(c[3 * i + _ACKED] for i in range(self.k))
        summary.failed = sum(c[3 * i + _FAILED] for i in range(self.k))
        summary.elapsed_s = elapsed
        return summary

    def close(self) -> None:
        for k, worker in enumerate(self.workers):
            if worker.is_alive() and k not in self.done:
                try:
                    self.inboxes[k].put_nowait(None)
                except queue.Full:
                    pass
            worker.join(timeout=2.0)
            if worker.is_alive() and isinstance(worker, multiprocessing.process.BaseProcess):
                worker.terminate()
                worker.join(timeout=2.0)


def _worker(index, address, client_id, qos, window, ack_timeout, inbox, counters, results) -> None:
    """One connection: publish encoded batches from ``inbox`` with at most ``window`` unacked."""
    base = 3 * index
    try:
        conn = Publisher(address, client_id, qos=qos)
    except WireError as exc:
        results.put(("error", index, str(exc)))
        return
    results.put(("ready", index, None))
    sent = 0
    try:
        while True:
            try:
                batch = inbox.get(timeout=0.05)
            except queue.Empty:
                counters[base + _ACKED] = conn.poll()
                continue
            if batch is None:
                break
            i = 0
            while i < len(batch):
                room = window - (sent - conn.acked)
                if room <= 0:
                    counters[base + _ACKED] = conn.poll(timeout=0.05)
                    continue
                stop = min(len(batch), i + room)
                conn.send_packets(batch, i, stop)
                sent += stop - i
                i = stop
                counters[base + _SENT] = sent
                counters[base + _ACKED] = conn.poll()
        deadline = time.monotonic() + ack_timeout
        while conn.acked < sent and time.monotonic() < deadline:
            counters[base + _ACKED] = conn.poll(timeout=0.05)
    except WireError as exc:
        counters[base + _FAILED] = sent - conn.acked
        results.put(("error", index, str(exc)))
        return
    finally:
        conn.close()
    counters[base + _ACKED] = conn.acked
    counters[base + _FAILED] = sent - conn.acked
    results.put(("done", index, (sent, conn.acked, sent - conn.acked)))

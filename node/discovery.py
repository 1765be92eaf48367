"""Finding and keeping peers: handshake every new connection, dial bootstraps and learned peers.

py-libp2p never reconnects by itself and forgets bootstrap peers after 3 failures, so this
service keeps its own dial loop with per-peer exponential backoff (0.5 s -> 5 s: a healed
partition reconnects within seconds; a failed dial costs one SYN). When one unreachable peer
comes back, every other one that failed is redialled at once: a heal reconnects everything
without waiting out each backoff. Peers are learned from hello
peer exchange and from capability adverts. Connections that do not present a valid certificate
within the handshake timeout are dropped and refused for a while.

A member that stops advertising for SILENT_BEATS heartbeats (at least SILENT_MIN_S) has its
connection closed and redialled. A partitioned path is already dropped by the kernel (host.py,
TCP_USER_TIMEOUT_S); this catches what TCP cannot see: a hung peer whose kernel still
acknowledges every byte, or a connection whose gossip stopped flowing.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import trio

from node.admission import Admission
from node.errors import NodeError, NotAuthorised
from node.host import Host, StreamClosed
from node.membership import Certificate, CertificateError
from node.metrics import Metrics
from node.peers import PeerTable
from node.protocols import hello

log = logging.getLogger("quantian.discovery")

EVENT_QUEUE_SIZE = 1024
DIAL_CONCURRENCY = 8
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 5.0
DIAL_TICK_S = 0.5
MAX_LEARNED_FAILURES = 24  # about two minutes of failed dials before a learned peer is forgotten
SILENT_BEATS = 4.0
SILENT_MIN_S = 10.0
HANDSHAKE_ATTEMPTS = 3


@dataclass
class _Target:
    addrs: tuple[str, ...]
    pinned: bool  # bootstraps are redialled forever; learned peers are forgotten after repeated failures
    backoff_s: float = 0.0
    next_attempt: float = 0.0
    failures: int = 0
    dialling: bool = False


def peer_id_of(multiaddr: str) -> str:
    return multiaddr.rsplit("/p2p/", 1)[1].split("/")[0]


class Discovery:
    def __init__(self, host: Host, admission: Admission, own_cert: Certificate, peers: PeerTable,
                 metrics: Metrics, bootstrap: tuple[str, ...] = ()) -> None:
        self._host = host
        self._admission = admission
        self._own_cert = own_cert
        self._peers = peers
        self._metrics = metrics
        self._targets: dict[str, _Target] = {}
        for addr in bootstrap:
            pid = peer_id_of(addr)
            if pid != host.peer_id:
                existing = self._targets.get(pid)
                addrs = (existing.addrs if existing else ()) + (addr,)
                self._targets[pid] = _Target(addrs, pinned=True)
        self._events_send, self._events_recv = trio.open_memory_channel[tuple[str, bool]](EVENT_QUEUE_SIZE)
        self._dial_limit = trio.Semaphore(DIAL_CONCURRENCY)
        self._dropped_silent: dict[str, float] = {}  # peer -> the last_seen it was dropped at
        self._connected_at: dict[str, float] = {}  # peer -> trio time its current connection began
        self._nursery: trio.Nursery | None = None
        host.add_connection_listener(self._on_connection_event)
        host.set_stream_handler(hello.PROTOCOL_ID, hello.Handler(admission, own_cert, self.known_peers))

    # --- inputs ------------------------------------------------------------------------------

    def _on_connection_event(self, peer_id: str, connected: bool) -> None:
        try:
            self._events_send.send_nowait((peer_id, connected))
        except trio.WouldBlock:
            # The grace sweeper still disconnects peers that never complete a handshake.
            self._metrics.inc("discovery.events_dropped")

    def learn(self, peer_id: str, addrs: tuple[str, ...] | list[str]) -> None:
        """A peer we heard of (peer exchange, advert): dial it unless already connected."""
        if peer_id == self._host.peer_id or not addrs:
            return
        target = self._targets.get(peer_id)
        if target is None:
            self._targets[peer_id] = _Target(tuple(addrs), pinned=False)
        elif not target.pinned:
            target.addrs = tuple(addrs)
            target.failures = 0

    def known_peers(self) -> list[hello.KnownPeer]:
        """Admitted member peers and their addresses, for peer exchange."""
        out = []
        for entry in self._peers.online():
            if entry.addrs:
                out.append(hello.KnownPeer(entry.peer_id, entry.addrs))
        return out

    # --- service -----------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._event_loop)
            nursery.start_soon(self._dial_loop)
            nursery.start_soon(self._sweep_loop)
            task_status.started()

    async def _event_loop(self) -> None:
        assert self._nursery is not None
        async for peer_id, connected in self._events_recv:
            if not connected:
                self._admission.on_disconnected(peer_id)
                self._connected_at.pop(peer_id, None)
                continue
            self._connected_at[peer_id] = trio.current_time()
            if not self._admission.on_connected(peer_id):
                self._nursery.start_soon(self._host.disconnect, peer_id)
                continue
            target = self._targets.get(peer_id)
            if target is not None and target.failures and not target.dialling:  # it dialled us
                self._path_recovered(peer_id)
            self._nursery.start_soon(self._handshake, peer_id)

    def _path_recovered(self, peer_id: str) -> None:
        """A peer we could not reach is back: the network probably healed, so every other peer
        that failed is redialled now rather than at the end of its backoff (up to BACKOFF_MAX_S).
        Bounded: only targets that already failed, once per recovery, DIAL_CONCURRENCY at a time."""
        now = trio.current_time()
        woken = 0
        for other, target in self._targets.items():
            if other != peer_id and target.failures and target.next_attempt > now:
                target.next_attempt = now
                woken += 1
        if woken:
            self._metrics.inc("discovery.redial_on_recovery", woken)
            log.info("%s reachable again: redialling %d other unreachable peers now", peer_id, woken)

    async def _handshake(self, peer_id: str) -> None:
        """Hello towards a new connection; retried while the peer is connected and not yet admitted
        (a loaded peer may be slow to negotiate; the grace sweeper bounds the whole affair)."""
        for attempt in range(HANDSHAKE_ATTEMPTS):
            if attempt:
                await trio.sleep(0.5 * attempt)  # brief pause before retrying a failed negotiation
                if self._admission.certificate(peer_id) is not None or not self._host.is_connected(peer_id):
                    return
            if await self._handshake_once(peer_id):
                return

    async def _handshake_once(self, peer_id: str) -> bool:
        """True when done (admitted or definitively refused), False when worth retrying."""
        try:
            result = await hello.exchange(self._host, peer_id, self._own_cert, self._admission)
        except CertificateError as exc:
            log.warning("peer %s presented a bad certificate: %s", peer_id, exc)
            await self._host.disconnect(peer_id)
            return True
        except NotAuthorised as exc:
            self._metrics.inc("discovery.handshake.refused_by_remote")
            log.warning("%s", exc)
            await self._host.disconnect(peer_id)
            return True
        except (NodeError, StreamClosed) as exc:
            # The remote's own handshake towards us may still succeed; the sweeper decides.
            self._metrics.inc("discovery.handshake.failed")
            log.debug("hello to %s failed: %s", peer_id, exc)
            return False
        self._metrics.inc("discovery.handshake.ok")
        for known in result.peers:
            self.learn(known.peer_id, known.addrs)
        return True

    async def _sweep_loop(self) -> None:
        while True:
            for peer_id in self._admission.overdue():
                await self._host.disconnect(peer_id)
            for peer_id in self.silent_peers():
                self._metrics.inc("discovery.disconnected_silent")
                log.info("closing the connection to %s: no advert for %.0f s (redialled)", peer_id,
                         self._peers.silence_s(self._peers.get(peer_id)))
                await self._host.disconnect(peer_id)
            await trio.sleep(0.5)

    def silent_peers(self) -> list[str]:
        """Connected members whose adverts stopped (partitioned or hung), each once per silence."""
        silent = []
        for peer_id in self._host.connected_peers():
            entry = self._peers.get(peer_id)
            if entry is None or self._dropped_silent.get(peer_id) == entry.last_seen:
                continue
            # measured from the connection's start too: a peer that just came back from a
            # partition has an old last advert, and its new connection deserves the same window
            # (closing it at once tore down the heads exchange of the heal)
            age = trio.current_time() - self._connected_at.get(peer_id, float("-inf"))
            if min(self._peers.silence_s(entry), age) > max(SILENT_MIN_S, SILENT_BEATS * entry.heartbeat_s):
                self._dropped_silent[peer_id] = entry.last_seen
                silent.append(peer_id)
        return silent

    async def _dial_loop(self) -> None:
        assert self._nursery is not None
        while True:
            now = trio.current_time()
            for peer_id, target in list(self._targets.items()):
                if target.dialling or now < target.next_attempt:
                    continue
                if self._host.is_connected(peer_id) or self._admission.is_banned(peer_id):
                    target.backoff_s = 0.0
                    continue
                target.dialling = True
                self._nursery.start_soon(self._dial, peer_id, target)
            await trio.sleep(DIAL_TICK_S)

    async def _dial(self, peer_id: str, target: _Target) -> None:
        try:
            async with self._dial_limit:
                for addr in target.addrs:
                    full = addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id}"
                    try:
                        await self._host.connect(full)
                    except NodeError as exc:
                        log.debug("dial %s failed: %s", full, exc)
                        continue
                    self._metrics.inc("discovery.dial.ok")
                    if target.failures:
                        self._path_recovered(peer_id)
                    target.backoff_s = 0.0
                    target.failures = 0
                    return
            self._metrics.inc("discovery.dial.failed")
            target.failures += 1
            target.backoff_s = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, target.backoff_s * 2))
            target.next_attempt = trio.current_time() + target.backoff_s * random.uniform(0.8, 1.2)
            if not target.pinned and target.failures >= MAX_LEARNED_FAILURES:
                self._targets.pop(peer_id, None)
        finally:
            target.dialling = False

    def status(self) -> dict[str, Any]:
        return {
            "targets": len(self._targets),
            "bootstraps": sum(1 for t in self._targets.values() if t.pinned),
            "connected": len(self._host.connected_peers()),
        }

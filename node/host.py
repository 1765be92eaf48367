"""The only module that imports libp2p: a small Host interface over py-libp2p 0.8.1.

It pins Noise + Yamux (no plaintext, no SECIO), enlarges pubsub's 32-deep queues (they drop
silently), runs GossipSub with a 1 s heartbeat and no spam/eclipse protection (a small closed,
single-IP network relies on certificates and validators instead), and clears libp2p's 60 s
negative dial cache before each of our own dials (see LIBP2P-NOTES.md §2-3).
Everything above this module sees peer IDs and multiaddrs as plain strings.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

import trio
from multiaddr import Multiaddr

import libp2p.pubsub.pubsub as _pubsub_module
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as _x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIP_V10
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11 as GOSSIP_V11
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from node.errors import NodeError, PeerUnreachable, StreamClosed
from node.identity import Identity

log = logging.getLogger("quantian.host")

PUBSUB_QUEUE_SIZE = 4096
DIAL_TIMEOUT_S = 10.0
STREAM_OPEN_TIMEOUT_S = 10.0
# Dead-path detection on every connection. Behind a partition a sender's unacknowledged data is
# retransmitted with exponential backoff, so without a bound the connection stays "up" and comes
# back only at the next retransmission, up to a minute after the heal (measured: streams opened
# just after a heal hung 10 s). The kernel drops a connection whose data stays unacknowledged for
# TCP_USER_TIMEOUT_S; discovery then redials, and a fresh dial gets through as soon as the path
# does. Keepalive probes give idle connections unacknowledged data to time out on.
TCP_USER_TIMEOUT_S = 8.0
TCP_KEEPALIVE = (3, 1, 5)  # idle seconds before probing, seconds between probes, probes
_SOCKET_PATH = ("muxed_conn", "secured_conn", "conn", "stream", "socket")

# py-libp2p's yamux sends a WINDOW_UPDATE on almost every read (9,250 for 600 RPCs, LIBP2P-NOTES §3);
# off, credit is released go-yamux style once half the window is consumed. Read at call time.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")

# The defaults (32) turn a short backlog into silent loss; read at call time, so set them here.
_pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = PUBSUB_QUEUE_SIZE
_pubsub_module.RpcQueue = functools.partial(RpcQueue, max_size=PUBSUB_QUEUE_SIZE)  # type: ignore[misc]


class Stream:
    """A bidirectional byte stream to one remote peer; hides libp2p's exception types."""

    def __init__(self, raw, remote_peer: str, protocol: str) -> None:
        self._raw = raw
        self.remote_peer = remote_peer
        self.protocol = protocol

    async def read(self, max_bytes: int) -> bytes:
        try:
            data = await self._raw.read(max_bytes)
        except StreamError as exc:
            raise StreamClosed(str(exc) or type(exc).__name__) from None
        if not data:
            raise StreamClosed("EOF")
        return data

    async def write(self, data: bytes) -> None:
        try:
            await self._raw.write(data)
        except StreamError as exc:
            raise StreamClosed(str(exc) or type(exc).__name__) from None
        except Exception as exc:  # yamux raises MuxedStreamError on window timeouts
            raise StreamClosed(f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self._raw.close()
            except Exception:  # closing a broken stream: nothing left to save
                log.debug("stream close failed", exc_info=True)

    async def reset(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self._raw.reset()
            except Exception:
                log.debug("stream reset failed", exc_info=True)


@dataclass(frozen=True)
class GossipMessage:
    topic: str
    data: bytes
    origin: str  # peer that published it (pubsub-signed)


StreamHandler = Callable[[Stream], Awaitable[None]]
ConnectionListener = Callable[[str, bool], None]  # (peer_id, connected)
TopicValidator = Callable[[str, GossipMessage], bool]  # (forwarder, message)


def _to_libp2p_keypair(identity: Identity) -> KeyPair:
    private = Ed25519PrivateKey.new(identity.seed)
    return KeyPair(private, private.get_public_key())


def _tcp_socket(conn) -> socket.socket | None:
    """The TCP socket under a swarm connection (py-libp2p 0.8.1: SwarmConn -> Yamux -> SecureSession
    -> Noise reader -> RawConnection -> TrioTCPStream -> trio.SocketStream -> socket)."""
    obj = conn
    for _ in range(12):
        if isinstance(obj, trio.socket.SocketType):
            return obj
        obj = next((child for name in _SOCKET_PATH if (child := getattr(obj, name, None)) is not None), None)
        if obj is None:
            return None
    return None


def bound_dead_paths(conn) -> bool:
    """Set TCP_USER_TIMEOUT and keepalive on the connection's socket (Linux; elsewhere a no-op)."""
    sock = _tcp_socket(conn)
    if sock is None or not hasattr(socket, "TCP_USER_TIMEOUT"):
        return False
    idle, interval, probes = TCP_KEEPALIVE
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(TCP_USER_TIMEOUT_S * 1000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)
    except OSError as exc:  # a closed socket, or options this kernel lacks
        log.debug("cannot bound dead paths on a connection: %s", exc)
        return False
    return True


class _ConnectionNotifee(INotifee):
    def __init__(self, listener: ConnectionListener) -> None:
        self._listener = listener

    async def opened_stream(self, network, stream) -> None:
        return None

    async def closed_stream(self, network, stream) -> None:
        return None

    async def connected(self, network, conn) -> None:
        if not bound_dead_paths(conn):
            log.debug("no TCP dead-path bound on the connection to %s", conn.muxed_conn.peer_id)
        self._listener(conn.muxed_conn.peer_id.to_base58(), True)

    async def disconnected(self, network, conn) -> None:
        self._listener(conn.muxed_conn.peer_id.to_base58(), False)

    async def listen(self, network, multiaddr) -> None:
        return None

    async def listen_close(self, network, multiaddr) -> None:
        return None


def _disable_auto_connector(host) -> None:
    """py-libp2p 0.8.1 dials everything in the peerstore towards (low+high watermark)/2 connections
    whatever the config says (stale operator clients included); discovery.py owns dialling."""

    async def _no_dials(*args, **kwargs) -> None:
        return None

    auto = getattr(host.get_network(), "auto_connector", None)
    if auto is not None:
        auto.start = _no_dials
        auto.maybe_connect = _no_dials


class _GuardedPubsub(Pubsub):
    """Pubsub whose per-peer read loop cannot take the node down.

    py-libp2p 0.8.1's `stream_handler` catches stream and varint errors but not protobuf's
    DecodeError, so one malformed RPC (a hostile peer, or a frame cut by a peer killed mid-write)
    escaped through the connection's nursery and ended the whole host (seen in the fault suite:
    a restarted ingestion node died 1 s after rejoining). Any exception from one peer's stream
    now ends that stream and that peer's pubsub session, is counted, and the connection is closed
    (discovery redials an honest peer, and the new connection starts a fresh session)."""

    def __init__(self, *args, on_bad_stream: Callable[[str, Exception], Awaitable[None]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._on_bad_stream = on_bad_stream

    async def stream_handler(self, stream) -> None:
        peer_id = stream.muxed_conn.peer_id
        try:
            await super().stream_handler(stream)
        except Exception as exc:  # noqa: BLE001 - the boundary of one remote peer's input
            try:
                await stream.reset()
            except Exception:  # noqa: BLE001 - already broken: nothing left to tell the peer
                pass
            self._handle_dead_peer(peer_id)
            await self._on_bad_stream(peer_id.to_base58(), exc)


class Host:
    """One libp2p host (+ optional GossipSub) for one identity."""

    def __init__(self, identity: Identity, *, enable_pubsub: bool = True, gossip_heartbeat_s: float = 1.0,
                 announce: list[str] | None = None) -> None:
        self.identity = identity
        self.peer_id = identity.peer_id
        key_pair = _to_libp2p_keypair(identity)
        self._host = new_host(
            key_pair=key_pair,
            connection_config=ConnectionConfig(min_connections=0, low_watermark=0),
            # identify must tell peers the announced (public / NAT) address, not a 0.0.0.0 listen
            announce_addrs=[Multiaddr(a.split("/p2p/")[0]) for a in announce] if announce else None,
            sec_opt={TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(key_pair, noise_privkey=_x25519_key_pair().private_key)},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        )
        _disable_auto_connector(self._host)
        self._listeners: list[ConnectionListener] = []
        self.handler_errors: Counter[str] = Counter()
        self._host.get_network().register_notifee(_ConnectionNotifee(self._dispatch_connection_event))
        self._pubsub: Pubsub | None = None
        self._gossipsub: GossipSub | None = None
        if enable_pubsub:
            # Measured (bench/pipeline.py + py-spy): gossip is most of an idle node's CPU, paid per
            # message per peer. v1.2's IDONTWANT adds a control message per message and D=6 floods
            # a small net; v1.1 with D=3 keeps every node reachable at a fraction of the cost.
            self._gossipsub = GossipSub(
                protocols=[GOSSIP_V11, GOSSIP_V10],
                degree=3,
                degree_low=2,
                degree_high=4,
                heartbeat_interval=max(1, int(gossip_heartbeat_s)),
                spam_protection_enabled=False,
                eclipse_protection_enabled=False,
            )
            self._pubsub = _GuardedPubsub(self._host, self._gossipsub, strict_signing=True,
                                          on_bad_stream=self._bad_gossip_stream)

    async def _bad_gossip_stream(self, peer_id: str, exc: Exception) -> None:
        key = "malformed_rpc" if type(exc).__name__ == "DecodeError" else "bug"
        self.handler_errors[f"gossipsub:{key}"] += 1
        if key == "bug":
            log.error("gossipsub stream from %s failed: %r; disconnecting", peer_id, exc, exc_info=exc)
        else:
            log.warning("gossipsub stream from %s sent a malformed RPC (%s); disconnecting", peer_id, exc)
        await self.disconnect(peer_id)

    # --- lifecycle ---------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self, listen: list[str]) -> AsyncIterator["Host"]:
        """Listen on `listen` (start pubsub before any dial, so it sees every connection)."""
        async with self._host.run([Multiaddr(a) for a in listen]):
            if listen and not self._host.get_addrs():  # py-libp2p logs a failed bind and carries on
                raise OSError(f"could not listen on {' '.join(listen)} (address in use or not available here)")
            if self._pubsub is None:
                yield self
                return
            async with background_trio_service(self._pubsub), background_trio_service(self._gossipsub):
                await self._pubsub.wait_until_ready()
                yield self

    def listen_addrs(self) -> list[str]:
        """Full multiaddrs (with /p2p/PEER_ID) this host is reachable at."""
        return [str(a) for a in self._host.get_addrs()]

    # --- connections -------------------------------------------------------------------------

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """`listener(peer_id, connected)` is called synchronously; it must not block."""
        self._listeners.append(listener)

    def _dispatch_connection_event(self, peer_id: str, connected: bool) -> None:
        for listener in self._listeners:
            listener(peer_id, connected)

    async def connect(self, multiaddr: str, timeout: float = DIAL_TIMEOUT_S) -> str:
        """Dial a full multiaddr (with /p2p/); returns the peer ID. Raises PeerUnreachable."""
        try:
            info = info_from_p2p_addr(Multiaddr(multiaddr))
        except Exception as exc:  # multiaddr parsing raises many types
            raise PeerUnreachable(f"bad multiaddr {multiaddr!r}: {exc}") from None
        # libp2p keeps a peer in a 60 s negative cache after one failed dial; we do our own backoff.
        self._host.get_network().unblock_peer(info.peer_id)
        try:
            with trio.fail_after(timeout):
                await self._host.connect(info)
        except trio.TooSlowError:
            raise PeerUnreachable(f"dial {multiaddr} timed out after {timeout:.0f} s") from None
        except Exception as exc:  # the swarm raises SwarmException / OpenConnectionError / OSError
            raise PeerUnreachable(f"dial {multiaddr} failed: {exc}") from None
        return info.peer_id.to_base58()

    def add_peer_addrs(self, peer_id: str, addrs: list[str], ttl_s: int = 600) -> None:
        pid = ID.from_base58(peer_id)
        parsed = []
        for a in addrs:
            try:
                parsed.append(Multiaddr(a.split("/p2p/")[0]))
            except Exception:
                log.debug("ignoring bad address %r for %s", a, peer_id)
        if parsed:
            self._host.get_peerstore().add_addrs(pid, parsed, ttl_s)

    async def disconnect(self, peer_id: str) -> None:
        with trio.move_on_after(5):
            try:
                await self._host.disconnect(ID.from_base58(peer_id))
            except Exception:
                log.debug("disconnect %s failed", peer_id, exc_info=True)

    def connected_peers(self) -> list[str]:
        return [p.to_base58() for p in self._host.get_connected_peers()]

    def is_connected(self, peer_id: str) -> bool:
        try:
            pid = ID.from_base58(peer_id)
        except Exception:
            return False
        return bool(self._host.get_network().connections.get(pid))

    # --- streams -----------------------------------------------------------------------------

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """Serve `protocol_id`. This is the boundary of one stream: whatever goes wrong in a
        handler (a peer that stalls mid-frame, sends garbage, or a bug) ends that stream only and
        is counted in `handler_errors`; an exception escaping here would take down the whole node."""

        async def _handle(raw) -> None:
            stream = Stream(raw, raw.muxed_conn.peer_id.to_base58(), protocol_id)
            try:
                await handler(stream)
            except StreamClosed as exc:
                log.debug("%s stream from %s closed: %s", protocol_id, stream.remote_peer, exc)
            except NodeError as exc:
                self.handler_errors[f"{protocol_id}:{exc.code}"] += 1
                log.warning("%s stream from %s dropped: %s", protocol_id, stream.remote_peer, exc)
                await stream.reset()
            except Exception:  # a bug: log it loudly, keep the node running
                self.handler_errors[f"{protocol_id}:bug"] += 1
                log.exception("%s handler failed on a stream from %s", protocol_id, stream.remote_peer)
                await stream.reset()
            finally:
                await stream.close()

        self._host.set_stream_handler(TProtocol(protocol_id), _handle)

    async def open_stream(self, peer_id: str, protocol_id: str, timeout: float = STREAM_OPEN_TIMEOUT_S) -> Stream:
        try:
            with trio.fail_after(timeout):
                raw = await self._host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol_id)])
        except trio.TooSlowError:
            raise PeerUnreachable(f"opening {protocol_id} to {peer_id} timed out") from None
        except Exception as exc:
            raise PeerUnreachable(f"opening {protocol_id} to {peer_id} failed: {exc}") from None
        return Stream(raw, peer_id, protocol_id)

    # --- gossip ------------------------------------------------------------------------------

    def _require_pubsub(self) -> Pubsub:
        if self._pubsub is None:
            raise RuntimeError("this host was created without pubsub")
        return self._pubsub

    async def subscribe(self, topic: str) -> AsyncIterator[GossipMessage]:
        """Messages on `topic` that passed validation, including our own publishes."""
        sub = await self._require_pubsub().subscribe(topic)

        async def _iterate() -> AsyncIterator[GossipMessage]:
            while True:
                msg = await sub.get()
                yield GossipMessage(topic, bytes(msg.data), ID(msg.from_id).to_base58())

        return _iterate()

    async def publish(self, topic: str, data: bytes) -> None:
        await self._require_pubsub().publish(topic, data)

    def set_topic_validator(self, topic: str, validator: TopicValidator) -> None:
        """Drop (and do not forward) messages for which `validator(forwarder, msg)` is False."""

        def _validate(forwarder: ID, msg) -> bool:
            try:
                origin = ID(msg.from_id).to_base58()
            except Exception:
                return False
            return validator(forwarder.to_base58(), GossipMessage(topic, bytes(msg.data), origin))

        self._require_pubsub().set_topic_validator(topic, _validate, False)

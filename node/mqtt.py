"""paho-mqtt <-> trio bridge with manual acknowledgements (used by the iot role).

paho's network thread appends every message to one bounded staging queue; the trio consumer
takes them in batches (``Bridge.receive_batch``), so the thread wakes trio once per batch, not
once per message. When the queue is full that thread blocks (backpressure, nothing is dropped;
a consumer stalled for longer than 1.5 keepalives gets the connection dropped by the broker, and
the unacked messages come back after the reconnect).
Messages are acknowledged to the broker only when the consumer calls ``Bridge.ack`` after
downstream has taken them (one write for a batch's PUBACKs), and the session is persistent
(stable client id, MQTT 5 ``clean_start=False`` + SessionExpiryInterval, or 3.1.1
``clean_session=False``), so ticks
published while the bridge is away, and ticks received but not acked, are delivered again when
it returns (QoS 1 redelivery: downstream de-duplicates by event ID).

MQTT 5 is probed first (with a separate client id); a broker that answers "unsupported protocol
version" (amqtt) is spoken to in 3.1.1. On MQTT 5 the bridge subscribes
``$share/<group>/quantian/market/#`` so several bridges split the stream; on 3.1.1 it subscribes
``quantian/market/#`` and every bridge gets everything.

Known broker limits (measured): Mosquitto 2.0.11 does not restore shared subscriptions from its
persistence file, so ticks published between a broker restart and the bridge's resubscribe are
lost unless ``share_group=None``; amqtt 0.12.1 keeps nothing for anonymous persistent sessions
and does not redeliver unacked messages on reconnect.
"""
from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from node.market_events import TOPIC_FILTER
from node.mqtt_client import BufferedClient

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
USERNAME_ENV = "QUANTIAN_MQTT_USERNAME"
PASSWORD_ENV = "QUANTIAN_MQTT_PASSWORD"
UNSUPPORTED_PROTOCOL = 132  # CONNACK reason "Unsupported protocol version" (3.1.1 return code 1)
Protocol = Literal["auto", "v5", "v311"]
T = TypeVar("T")


class MqttError(Exception):
    """Root of the bridge's errors."""

    code = "mqtt_error"


class BadBrokerUrl(MqttError):
    code = "bad_broker_url"


class BrokerUnreachable(MqttError):
    code = "broker_unreachable"


class ConnectRefused(MqttError):
    """The broker answered CONNECT or SUBSCRIBE with a failure (credentials, protocol, ACL)."""

    code = "connect_refused"


@dataclass(frozen=True)
class BrokerAddress:
    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __repr__(self) -> str:
        return f"BrokerAddress({self.display!r})"

    @property
    def display(self) -> str:
        """The URL without the password, for logs and errors."""
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"


def parse_broker_url(
    url: str, *, ca_file: str | None = None, environ: Mapping[str, str] | None = None
) -> BrokerAddress:
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` (TLS, port 8883 by default).
    Credentials missing from the URL come from QUANTIAN_MQTT_USERNAME / QUANTIAN_MQTT_PASSWORD."""
    env = os.environ if environ is None else environ
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadBrokerUrl(f"bad broker URL: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise BadBrokerUrl(f"broker URL must start with mqtt:// or mqtts://, got {parts.scheme or 'no'} scheme")
    if not parts.hostname:
        raise BadBrokerUrl("broker URL has no host")
    if parts.path not in ("", "/") or parts.query:
        raise BadBrokerUrl("broker URL must not have a path or query")
    username = unquote(parts.username) if parts.username else env.get(USERNAME_ENV) or None
    password = unquote(parts.password) if parts.password else env.get(PASSWORD_ENV) or None
    return BrokerAddress(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[parts.scheme],
        username=username,
        password=password,
        ca_file=ca_file,
    )


def make_client(
    address: BrokerAddress, *, client_id: str, protocol: int, manual_ack: bool = False, persistent: bool = False
) -> mqtt.Client:
    """A paho client (callback API v2) with TLS (verification on) and credentials configured."""
    clean_session = None if protocol == mqtt.MQTTv5 else not persistent
    client = BufferedClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=clean_session,
        manual_ack=manual_ack,
    )
    if address.tls:
        context = ssl.create_default_context(cafile=address.ca_file)
        client.tls_set_context(context)
    if address.username:
        client.username_pw_set(address.username, address.password)
    return client


def connect_properties(*, receive_maximum: int, session_expiry_s: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = receive_maximum
    props.SessionExpiryInterval = session_expiry_s
    return props


def probe_mqtt5(address: BrokerAddress, *, client_id: str, timeout: float = 10.0) -> bool:
    """Blocking: True when the broker accepts an MQTT 5 CONNECT, False when it answers
    "unsupported protocol version" (amqtt). Uses its own clean client id, never the bridge's
    session (amqtt misreads an MQTT 5 CONNECT that carries properties and never answers)."""
    client = make_client(address, client_id=client_id, protocol=mqtt.MQTTv5)
    answers: list = []
    client.on_connect = lambda _c, _u, _f, reason_code, _p: answers.append(reason_code)
    client.connect(address.host, address.port, keepalive=10)
    try:
        end = time.monotonic() + timeout
        while not answers and time.monotonic() < end:
            if client.loop(timeout=0.1) not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                break
    finally:
        client.disconnect()
    if not answers:
        raise BrokerUnreachable(f"no CONNACK from {address.display} within {timeout} s")
    if answers[0].value == UNSUPPORTED_PROTOCOL:
        return False
    if answers[0].is_failure:
        raise ConnectRefused(f"MQTT broker {address.display} refused: {answers[0]}")
    return True


@dataclass(frozen=True)
class BridgeConfig:
    url: str
    client_id: str  # stable per node: the broker keeps this session while the bridge is away
    share_group: str | None = "quantian"
    topic_filter: str = TOPIC_FILTER
    protocol: Protocol = "auto"
    channel_size: int = 2048
    receive_maximum: int = 10_000  # unacked messages the broker may send (MQTT 5)
    session_expiry_s: int = 86_400
    keepalive_s: int = 30
    connect_timeout_s: float = 30.0  # for the first connection; later reconnects retry forever
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class RawMessage:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at: float  # epoch seconds
    dup: bool
    connection: int  # which connection delivered it; acks for older connections are void
    seq: int = 0  # this bridge's receive counter: tells a reused packet id from an old message


@dataclass(frozen=True)
class BridgeStats:
    received: int
    acked: int
    inflight: int  # received on the current connection, not acked yet
    reconnects: int
    stale_acks: int  # acks for messages of an earlier connection (the broker redelivers those)
    connected: bool
    protocol: str
    subscription: str


class _OneByOne:
    """``Bridge.messages``: the staged messages one at a time (holds none itself, so a consumer
    that stops iterating leaves the rest staged for the next one)."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    def __aiter__(self) -> _OneByOne:
        return self

    async def __anext__(self) -> RawMessage:
        try:
            return (await self._bridge.receive_batch(1))[0]
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class Bridge:
    """One MQTT subscription bridged into trio. Use::

        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            while True:
                batch = await bridge.receive_batch(1000, wait_s=0.1); ...; bridge.ack(batch)

    or ``async for msg in bridge.messages`` one at a time.
    """

    def __init__(self, config: BridgeConfig) -> None:
        if config.channel_size < 1:
            raise ValueError("channel_size must be >= 1")
        self.config = config
        self.address = parse_broker_url(config.url, ca_file=config.ca_file)
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}  # mid -> seq of the unacked message holding it
        self._connection = 0
        self._received = self._acked = self._stale = self._reconnects = 0
        self._connected = False
        self._stopping = False
        self._subscribed_on = 0  # connection number whose SUBACK arrived
        self._failure: str | None = None
        self._protocol = ""
        self._subscription = ""
        self._client: mqtt.Client | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._changed = trio.Event()
        # hand-off from paho's thread: a bounded staging deque the consumer takes batches from.
        # paho's thread waits on `_room` while it is full and wakes trio only when the waiting
        # consumer asked for `_want` messages and they are there.
        self._staged: deque[RawMessage] = deque()
        self._room = threading.Condition(self._lock)
        self._want = 0
        self._arrived = trio.Event()
        self._closed = False

    @property
    def stats(self) -> BridgeStats:
        with self._lock:
            return BridgeStats(
                received=self._received, acked=self._acked, inflight=len(self._pending),
                reconnects=self._reconnects, stale_acks=self._stale, connected=self._connected,
                protocol=self._protocol, subscription=self._subscription,
            )

    @property
    def messages(self) -> AsyncIterator[RawMessage]:
        """The messages one at a time (``receive_batch(1)``); ends when the bridge stops."""
        return _OneByOne(self)

    async def receive_batch(self, max_items: int, wait_s: float = 0.0) -> list[RawMessage]:
        """Up to ``max_items`` messages in arrival order: waits for the first, then up to
        ``wait_s`` more seconds until ``max_items`` are there (micro-batching). Raises
        trio.EndOfChannel once the bridge has stopped (what it still held was never acked:
        the broker delivers it again)."""
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        await self._wait_staged(1)
        if wait_s > 0 and max_items > 1:
            with trio.move_on_after(wait_s):
                await self._wait_staged(max_items)
        with self._lock:
            if self._closed:
                raise trio.EndOfChannel
            batch = [self._staged.popleft() for _ in range(min(max_items, len(self._staged)))]
            self._room.notify()
        return batch

    async def _wait_staged(self, count: int) -> None:
        """Until ``count`` messages are staged or the bridge stopped."""
        need = min(count, self.config.channel_size)
        while True:
            with self._lock:
                if self._closed or len(self._staged) >= need:
                    return
                self._want, self._arrived = need, trio.Event()
                arrived = self._arrived
            try:
                await arrived.wait()
            finally:
                with self._lock:
                    if self._arrived is arrived:
                        self._want = 0

    def ack(self, messages: Iterable[RawMessage]) -> int:
        """PUBACK ``messages`` (call once downstream holds them). Returns how many were acked;
        messages from an earlier connection are skipped: the broker will deliver them again."""
        to_ack = []
        with self._lock:
            for msg in messages:
                if msg.qos == 0:
                    continue
                if msg.connection == self._connection and self._pending.get(msg.mid) == msg.seq:
                    del self._pending[msg.mid]
                    to_ack.append(msg)
                else:
                    self._stale += 1
        client = self._client
        done = 0
        # the subscription is QoS 1, so the broker delivers at QoS 1 at most: PUBACK for all
        if client is not None and to_ack and client.ack_many([m.mid for m in to_ack]) == mqtt.MQTT_ERR_SUCCESS:
            done = len(to_ack)
        with self._lock:
            self._acked += done
            self._stale += len(to_ack) - done
        return done

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, subscribe, report started, then relay messages until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        deadline = trio.current_time() + self.config.connect_timeout_s
        try:
            if self.config.protocol == "auto":
                probe_id = f"{self.config.client_id}-probe"
                v5 = await self._retry_connect(
                    lambda: probe_mqtt5(self.address, client_id=probe_id, timeout=self.config.connect_timeout_s),
                    deadline,
                )
                if not v5:
                    log.info("mqtt %s: MQTT 5 not supported, using 3.1.1", self.address.display)
            else:
                v5 = self.config.protocol == "v5"
            await self._start_client(mqtt.MQTTv5 if v5 else mqtt.MQTTv311, deadline)
            task_status.started()
            await trio.sleep_forever()  # paho's thread does the work until we are cancelled
        finally:
            with self._lock:
                self._closed = True  # paho's thread stops waiting for room, consumers stop
                self._staged.clear()  # never acked: the broker delivers these again
                self._room.notify_all()
                self._arrived.set()
            with trio.CancelScope(shield=True):
                await self._stop_client()

    async def _retry_connect(self, connect: Callable[[], T], deadline: float) -> T:
        """Run the blocking ``connect`` in a thread, retrying refused TCP connections until
        ``deadline``; TLS failures are final."""
        delay = 0.1
        while True:
            try:
                return await trio.to_thread.run_sync(connect)
            except ssl.SSLError as exc:
                raise BrokerUnreachable(f"TLS to {self.address.display} failed: {exc}") from None
            except OSError as exc:
                if trio.current_time() + delay > deadline:
                    raise BrokerUnreachable(f"cannot connect to MQTT broker {self.address.display}: {exc}") from None
                await trio.sleep(delay)  # retry back-off, not ordering
                delay = min(delay * 2, 2.0)

    async def _start_client(self, protocol: int, deadline: float) -> None:
        cfg = self.config
        v5 = protocol == mqtt.MQTTv5
        client = make_client(self.address, client_id=cfg.client_id, protocol=protocol, manual_ack=True, persistent=True)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._protocol = "5" if v5 else "3.1.1"
        self._failure = None
        self._client = client
        kwargs: dict = {}
        if v5:
            kwargs = {
                "clean_start": False,
                "properties": connect_properties(
                    receive_maximum=cfg.receive_maximum, session_expiry_s=cfg.session_expiry_s
                ),
            }
        await self._retry_connect(
            lambda: client.connect(self.address.host, self.address.port, cfg.keepalive_s, **kwargs), deadline
        )
        client.loop_start()
        with trio.move_on_at(deadline):
            while True:
                self._changed = trio.Event()
                if self._failure is not None:
                    raise ConnectRefused(f"MQTT broker {self.address.display} refused: {self._failure}")
                if self._subscribed_on and self._subscribed_on == self._connection:
                    log.info(
                        "mqtt %s: connected (MQTT %s) as %s, subscribed %s",
                        self.address.display, self._protocol, cfg.client_id, self._subscription,
                    )
                    return
                await self._changed.wait()
        raise BrokerUnreachable(f"no CONNACK/SUBACK from {self.address.display} within {cfg.connect_timeout_s} s")

    async def _stop_client(self) -> None:
        client = self._client
        if client is None:
            return

        self._stopping = True

        def stop() -> None:
            client.disconnect()
            client.loop_stop()

        await trio.to_thread.run_sync(stop)
        with self._lock:
            self._connected = False

    def _notify(self) -> None:
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(self._changed.set)
        except trio.RunFinishedError:
            pass

    # ---- paho network thread ----

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._failure = str(reason_code)
            log.warning("mqtt %s: connect refused: %s", self.address.display, reason_code)
            self._notify()
            return
        with self._lock:
            self._connection += 1
            self._pending.clear()  # mids of the previous connection mean nothing now
            if self._connected or self._subscribed_on:
                self._reconnects += 1
            self._connected = True
        shared = (
            self._protocol == "5"
            and self.config.share_group
            and getattr(properties, "SharedSubscriptionAvailable", 1) != 0
        )
        topic = f"$share/{self.config.share_group}/{self.config.topic_filter}" if shared else self.config.topic_filter
        self._subscription = topic
        if self._protocol == "5":
            client.subscribe(topic, options=SubscribeOptions(qos=1))
        else:
            client.subscribe(topic, qos=1)
        if self._reconnects:
            log.info("mqtt %s: reconnected (session present: %s)", self.address.display, flags.session_present)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            self._failure = f"subscription {self._subscription} refused: {failed[0]}"
        else:
            self._subscribed_on = self._connection
        self._notify()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
        if was and not self._stopping:
            log.warning("mqtt %s: disconnected (%s), reconnecting", self.address.display, reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        topic, payload, received_at = message.topic, message.payload, time.time()
        with self._lock:
            while len(self._staged) >= self.config.channel_size and not self._closed:
                self._room.wait(0.5)  # staging full: block paho's thread (backpressure)
            if self._closed:
                return  # shutting down: not acked, so the broker delivers it again
            self._received += 1
            seq = self._received
            if message.qos > 0:
                self._pending[message.mid] = seq
            self._staged.append(RawMessage(
                topic=topic, payload=payload, mid=message.mid, qos=message.qos, received_at=received_at,
                dup=bool(message.dup), connection=self._connection, seq=seq,
            ))
            wake = 0 < self._want <= len(self._staged)
            if wake:
                self._want = 0
                arrived = self._arrived
        if wake:
            try:
                self._token.run_sync_soon(arrived.set)
            except trio.RunFinishedError:
                pass

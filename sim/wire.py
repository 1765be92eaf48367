"""A minimal MQTT 3.1.1 publishing client for load generation: pipelined QoS 1 PUBLISH packets
written a batch at a time, PUBACKs counted as they come back.

paho spends ~100 us of Python per QoS 1 publish (one wake-up of its network loop per packet);
building the packets here costs a few microseconds, so one connection can carry several thousand
ticks/s. Only what a publisher needs: CONNECT (clean session, optional user/password, TLS with
verification), PUBLISH QoS 0/1, PUBACK, PINGREQ, DISCONNECT.
"""

from __future__ import annotations

import select
from array import array
from dataclasses import dataclass
import socket
import ssl
import struct
import time

from node.mqtt import BrokerAddress

CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
KEEPALIVE_S = 60


class WireError(Exception):
    """The connection failed or the broker refused it."""

    code = "mqtt_wire_error"


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive: int) -> bytes:
    flags = 0x02 | (0x80 if username else 0) | (0x40 if username and password else 0)
    body = _text("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _text(client_id)
    if username:
        body += _text(username)
        if password:
            body += _text(password)
    return b"\x10" + _length(len(body)) + body


@dataclass(frozen=True)
class Packets:
    """A batch of PUBLISH packets encoded once (cheap to pass between processes): packet i is
    ``data[starts[i]:starts[i + 1]]``; its 2-byte packet ID (QoS 1) goes at ``mid_at[i]``."""

    data: bytes
    starts: array
    mid_at: array

    def __len__(self) -> int:
        return len(self.starts) - 1

    @classmethod
    def encode(cls, messages: list[tuple[str, bytes]], qos: int = 1) -> Packets:
        out = bytearray()
        starts = array("I")
        mid_at = array("I")
        header = b"\x32" if qos == 1 else b"\x30"
        id_len = 2 if qos == 1 else 0
        for topic, payload in messages:
            topic_bytes = _text(topic)
            starts.append(len(out))
            out += header + _length(len(topic_bytes) + id_len + len(payload)) + topic_bytes
            mid_at.append(len(out))
            if qos == 1:
                out += b"\x00\x00"
            out += payload
        starts.append(len(out))
        return cls(bytes(out), starts, mid_at)


class Publisher:
    """One MQTT 3.1.1 connection. ``send`` pipelines PUBLISH packets; ``poll`` reads PUBACKs."""

    def __init__(self, address: BrokerAddress, client_id: str, *, qos: int = 1, timeout: float = 10.0) -> None:
        self.qos = qos
        self.acked = 0
        self._next_mid = 1
        self._buffer = bytearray()
        self._last_send = time.monotonic()
        try:
            sock = socket.create_connection((address.host, address.port), timeout=timeout)
            if address.tls:
                context = ssl.create_default_context(cafile=address.ca_file)
                sock = context.wrap_socket(sock, server_hostname=address.host)
        except OSError as exc:
            raise WireError(f"cannot connect to {address.display}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        sock.sendall(connect_packet(client_id, address.username, address.password, KEEPALIVE_S))
        deadline = time.monotonic() + timeout
        while len(self._buffer) < 4:
            if time.monotonic() > deadline or not self._read(timeout=max(0.0, deadline - time.monotonic())):
                self.close()
                raise WireError(f"no CONNACK from {address.display}")
        if self._buffer[0] != 0x20:
            self.close()
            raise WireError(f"{address.display} answered CONNECT with packet type {self._buffer[0] >> 4}")
        code = self._buffer[3]
        del self._buffer[:4]
        if code:
            self.close()
            raise WireError(f"{address.display} refused the connection: {CONNACK_CODES.get(code, code)}")

    def send(self, messages: list[tuple[str, bytes]]) -> None:
        """Write PUBLISH packets for ``messages`` in one go."""
        self.send_packets(Packets.encode(messages, self.qos))

    def send_packets(self, packets: Packets, start: int = 0, stop: int | None = None) -> None:
        """Write packets ``start:stop`` of an encoded batch, giving each QoS 1 packet its ID."""
        stop = len(packets) if stop is None else stop
        if start >= stop:
            return
        data = bytearray(packets.data[packets.starts[start] : packets.starts[stop]])
        if self.qos == 1:
            base = packets.starts[start]
            mid = self._next_mid
            for i in range(start, stop):
                struct.pack_into("!H", data, packets.mid_at[i] - base, mid)
                mid = mid + 1 if mid < 65535 else 1
            self._next_mid = mid
        self._sendall(data)
        if self.qos == 0:
            self.acked += stop - start

    def poll(self, timeout: float = 0.0) -> int:
        """Read what the broker sent within ``timeout`` s; count PUBACKs. Returns self.acked."""
        if self._read(timeout):
            self._parse()
        if time.monotonic() - self._last_send > KEEPALIVE_S / 2:
            self._sendall(b"\xc0\x00")  # PINGREQ
        return self.acked

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError:
            pass
        self.sock.close()

    def _sendall(self, data: bytes | bytearray) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise WireError(f"connection lost: {exc}") from None
        self._last_send = time.monotonic()

    def _read(self, timeout: float) -> bool:
        pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
        if not pending and not select.select([self.sock], [], [], timeout)[0]:
            return False
        try:
            data = self.sock.recv(65536)
        except ssl.SSLWantReadError:
            return False
        except OSError as exc:
            raise WireError(f"connection lost: {exc}") from None
        if not data:
            raise WireError("the broker closed the connection")
        self._buffer += data
        return True

    def _parse(self) -> None:
        buf = self._buffer
        pos = 0
        while len(buf) - pos >= 2:
            length, shift, i = 0, 0, pos + 1
            while i < len(buf):
                length |= (buf[i] & 0x7F) << shift
                shift += 7
                i += 1
                if not buf[i - 1] & 0x80:
                    break
            else:
                break
            if len(buf) - i < length:
                break
            if buf[pos] >> 4 == 4:  # PUBACK
                self.acked += 1
            pos = i + length
        del buf[:pos]

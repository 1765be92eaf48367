"""A paho-mqtt client tuned for a subscriber that receives thousands of messages per second.

paho reads each packet with several 1-byte recv calls, handles one packet per turn of its
network loop (a select per message), builds an MQTT 5 ``Properties`` object for every PUBLISH
(even an empty one) and matches every topic against its filter tree. py-spy put ~12 % of the
iot node's GIL time in ``Properties`` and ~5 % in the topic matcher at 2,000 messages/s.

``BufferedClient`` reads the socket in 64 KiB chunks and handles every packet already received
in the same turn. The complete PUBLISH packets at the head of that buffer that carry nothing
unusual (QoS 0 or 1, a topic name, no MQTT 5 properties) it decodes itself and hands straight
to ``on_message`` (when no per-topic callbacks are registered): the same ``MQTTMessage`` fields
paho would set, ``properties`` left ``None``. Anything else (other packet types, QoS 2,
properties, a topic alias, a packet cut off at the end of the buffer, a malformed length) goes
through paho's own code, which also keeps its keepalive and error handling. Paho internals used:
``_in_packet`` (to act only between packets), ``_in_callback_mutex``, ``_last_bytes_received``;
when one is missing (another paho version) the fast path switches itself off.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt

_PUBACK = struct.Struct("!BBH")  # fixed header (PUBACK, remaining length 2) + packet id
_PUBLISH = 0x30
_PAHO_INTERNALS = ("_in_packet", "_in_callback_mutex", "_last_bytes_received", "_msgtime_mutex", "_easy_log",
                   "_manual_ack", "_protocol")


class BufferedClient(mqtt.Client):
    """paho's client with chunked reads and a lean path for plain PUBLISH packets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()
        self._topic_callbacks = False  # message_callback_add was used: paho must match topics
        self.fast_path = all(hasattr(self, name) for name in _PAHO_INTERNALS)
        self.fast_published = 0  # messages handled by the lean path (for tests and benchmarks)

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self._rbuf:
            data = super()._sock_recv(65536)
            if not data:
                return data
            self._rbuf += data
        out = bytes(self._rbuf[:bufsize])
        del self._rbuf[:bufsize]
        return out

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTT_ERR_SUCCESS and self._rbuf:
            if self._handle_plain_publishes():
                continue
            left = len(self._rbuf)
            rc = super().loop_read(1)
            if len(self._rbuf) == left:
                break
        return rc

    def reconnect(self) -> mqtt.MQTTErrorCode:
        self._rbuf.clear()  # bytes of the previous connection
        return super().reconnect()

    def message_callback_add(self, sub: str, callback: Any) -> None:
        self._topic_callbacks = True
        super().message_callback_add(sub, callback)

    def ack_many(self, mids: Sequence[int]) -> mqtt.MQTTErrorCode:
        """PUBACK every QoS 1 message in ``mids`` with one queued write. paho's ``ack`` queues a
        packet, writes a wake-up byte and makes a send() per message; these are the same bytes
        (a PUBACK without reason code means success, in 3.1.1 and 5), sent as one packet."""
        if not mids:
            return mqtt.MQTT_ERR_SUCCESS
        packet = b"".join([_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids])
        return self._packet_queue(mqtt.PUBACK, packet, 0, 1)

    def _handle_plain_publishes(self) -> int:
        """Deliver the plain PUBLISH packets complete at the head of the buffer; how many."""
        on_message = self.on_message
        if (not self.fast_path or self._topic_callbacks or on_message is None
                or self._in_packet["command"] != 0):  # paho is inside a packet: let it finish
            return 0
        buf = self._rbuf
        v5 = self._protocol == mqtt.MQTTv5
        handled = 0
        while buf:
            message, size = parse_plain_publish(buf, v5=v5, manual_ack=self._manual_ack)
            if message is None:
                break
            del buf[:size]  # consumed before the callback runs, as paho does
            message.timestamp = time.monotonic()
            handled += 1
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise
        if handled:
            self.fast_published += handled
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()
        return handled


def parse_plain_publish(buf: bytes | bytearray, *, v5: bool, manual_ack: bool) -> tuple[mqtt.MQTTMessage | None, int]:
    """(message, packet size) for a complete plain PUBLISH at the start of ``buf``, else (None, 0).

    Plain: QoS 0, or QoS 1 under manual acks (paho would otherwise send the PUBACK itself), a
    non-empty topic, and (MQTT 5) an empty property list. Everything else is left to paho."""
    end = len(buf)
    if end < 2:
        return None, 0
    header = buf[0]
    qos = (header >> 1) & 3
    if header & 0xF0 != _PUBLISH or qos > 1 or (qos == 1 and not manual_ack):
        return None, 0
    length, shift, pos = 0, 0, 1
    while True:  # remaining length: a variable byte integer of at most 4 bytes
        if pos >= end or pos > 4:
            return None, 0
        byte = buf[pos]
        length |= (byte & 0x7F) << shift
        shift += 7
        pos += 1
        if not byte & 0x80:
            break
    size = pos + length
    if size > end or length < 2:
        return None, 0
    topic_end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if topic_end == pos + 2 or topic_end > size:
        return None, 0
    cursor = topic_end
    mid = 0
    if qos:
        if cursor + 2 > size:
            return None, 0
        mid = (buf[cursor] << 8) | buf[cursor + 1]
        cursor += 2
    if v5:
        if cursor >= size or buf[cursor] != 0:  # properties (a topic alias among them): paho's job
            return None, 0
        cursor += 1
    message = mqtt.MQTTMessage(mid=mid, topic=bytes(buf[pos + 2:topic_end]))
    message.dup = bool(header & 0x08)
    message.qos = qos
    message.retain = bool(header & 0x01)
    message.payload = bytes(buf[cursor:size])
    return message, size

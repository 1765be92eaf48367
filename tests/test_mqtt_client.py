"""node.mqtt_client.BufferedClient delivers exactly what paho delivers, packet for packet.

The same bytes go over a real socket pair into paho's own client and into ours; the messages
each hands to on_message must match field for field, whatever mix of packets the lean path
takes or leaves to paho (properties, QoS 2, packets cut across reads, 3-byte lengths).
"""

from __future__ import annotations

import socket
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from node.mqtt_client import BufferedClient, parse_plain_publish


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, *, qos: int = 1, mid: int = 1, v5: bool = True,
                   properties: bytes = b"", dup: bool = False, retain: bool = False) -> bytes:
    body = len(topic.encode()).to_bytes(2, "big") + topic.encode()
    if qos:
        body += mid.to_bytes(2, "big")
    if v5:
        body += varint(len(properties)) + properties
    body += payload
    header = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    return bytes([header]) + varint(len(body)) + body


def mixed_stream(v5: bool) -> list[bytes]:
    """Packets in the order sent: mostly plain PUBLISHes, with every case paho must handle."""
    packets = [publish_packet(f"quantian/market/equity/S{i % 7}", b'{"n": %d}' % i, mid=i + 1, v5=v5)
               for i in range(300)]
    packets.insert(10, publish_packet("quantian/market/forex/EURUSD", b"qos0", qos=0, v5=v5, retain=True))
    packets.insert(20, publish_packet("quantian/market/equity/AAPL", b"dup", mid=4000, v5=v5, dup=True))
    packets.insert(30, publish_packet("quantian/market/equity/BIG", b"x" * 200_000, mid=4001, v5=v5))
    packets.insert(40, publish_packet("quantian/market/equity/Q2", b"qos2", qos=2, mid=4002, v5=v5))
    packets.insert(41, b"\x62\x02" + (4002).to_bytes(2, "big"))  # PUBREL: paho delivers the QoS 2 message
    if v5:  # a payload-format-indicator property: paho must parse it
        packets.insert(50, publish_packet("quantian/market/equity/P", b"props", mid=4003, properties=b"\x01\x01"))
    return packets


def receive_all(client: mqtt.Client, packets: list[bytes], chunk_sizes: list[int],
                expected: int | None = None) -> list[tuple]:
    """Send `packets` over a socket pair in odd-sized writes; what `client` hands to on_message
    (waiting for `expected` messages, by default one per PUBLISH)."""
    got: list[tuple] = []
    client.on_message = lambda _c, _u, m: got.append(
        (m.topic, m.payload, m.qos, m.mid, m.dup, m.retain))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours  # what paho reads from once connected
    data = b"".join(packets)
    if expected is None:
        expected = sum(1 for p in packets if p[0] & 0xF0 == 0x30)
    deadline = time.monotonic() + 30
    try:
        sent, turn = 0, 0
        while len(got) < expected and time.monotonic() < deadline:
            if sent < len(data):
                size = chunk_sizes[turn % len(chunk_sizes)]
                theirs.sendall(data[sent:sent + size])
                sent += size
                turn += 1
            assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
    finally:
        client._sock = None
        ours.close()
        theirs.close()
    return got


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
@pytest.mark.parametrize("chunks", [[1 << 20], [7, 1000, 3], [65536, 65535, 100_001]], ids=["whole", "small", "large"])
def test_buffered_client_delivers_the_same_messages_as_paho(v5, chunks):
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    packets = mixed_stream(v5)
    reference = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ref", protocol=protocol, manual_ack=True)
    ours = BufferedClient(CallbackAPIVersion.VERSION2, client_id="ours", protocol=protocol, manual_ack=True)
    expected = receive_all(reference, packets, chunks)
    got = receive_all(ours, packets, chunks)
    assert len(expected) == sum(1 for p in packets if p[0] & 0xF0 == 0x30)
    assert got == expected
    assert ours.fast_path
    # most packets take the lean path; QoS 2, properties and paho's first packet per read do not
    assert len(packets) // 2 < ours.fast_published < len(packets)


def test_per_topic_callbacks_keep_paho_matching():
    ours = BufferedClient(CallbackAPIVersion.VERSION2, client_id="cb", protocol=mqtt.MQTTv5, manual_ack=True)
    matched: list[str] = []
    ours.message_callback_add("quantian/market/forex/#", lambda _c, _u, m: matched.append(m.topic))
    packets = [publish_packet("quantian/market/forex/EURUSD", b"a", mid=1),
               publish_packet("quantian/market/equity/AAPL", b"b", mid=2)]
    got = receive_all(ours, packets * 3, [1 << 20], expected=3)
    assert matched == ["quantian/market/forex/EURUSD"] * 3
    assert [m[0] for m in got] == ["quantian/market/equity/AAPL"] * 3
    assert ours.fast_published == 0


def test_auto_acking_client_leaves_qos1_to_paho_so_it_sends_the_puback():
    """Without manual acks paho PUBACKs a QoS 1 message itself: the lean path must not take it."""
    message, size = parse_plain_publish(publish_packet("a/b", b"x"), v5=True, manual_ack=False)
    assert (message, size) == (None, 0)
    message, size = parse_plain_publish(publish_packet("a/b", b"x", qos=0), v5=True, manual_ack=False)
    assert message is not None and message.payload == b"x" and size == len(publish_packet("a/b", b"x", qos=0))


@pytest.mark.parametrize("case, data", [
    ("empty", b""),
    ("header only", b"\x32"),
    ("cut off", publish_packet("a/b", b"payload")[:-1]),
    ("length never ends", b"\x32\xff\xff\xff\xff\x01" + b"\0" * 8),
    ("length 1", b"\x32\x01\x00"),
    ("topic longer than packet", b"\x32\x04\x00\x09ab"),
    ("empty topic (alias)", publish_packet("", b"x")),
    ("qos 2", publish_packet("a/b", b"x", qos=2)),
    ("qos 3", bytes([0x36]) + publish_packet("a/b", b"x")[1:]),
    ("properties", publish_packet("a/b", b"x", properties=b"\x23\x00\x01")),
    ("no property length", b"\x32\x07\x00\x03a/b\x00\x01"),
    ("not a publish", b"\xd0\x00"),
])
def test_anything_unusual_is_left_to_paho(case, data):
    assert parse_plain_publish(data, v5=True, manual_ack=True) == (None, 0), case


def test_parse_plain_publish_reads_every_field():
    data = publish_packet("quantian/market/equity/AAPL", b"\xffpay", qos=1, mid=65535, dup=True, retain=True)
    message, size = parse_plain_publish(data + b"\x30", v5=True, manual_ack=True)
    assert size == len(data)
    assert (message.topic, message.payload, message.qos, message.mid, message.dup, message.retain) == (
        "quantian/market/equity/AAPL", b"\xffpay", 1, 65535, True, True)
    message, size = parse_plain_publish(publish_packet("t", b"", qos=0, v5=False), v5=False, manual_ack=True)
    assert (message.topic, message.payload, message.mid, size) == ("t", b"", 0, 5)

"""sim.wire: PUBLISH encoding and PUBACK parsing of the load-generating MQTT client."""

from __future__ import annotations

import struct

from sim.wire import Packets, Publisher, connect_packet


def decode(packet: bytes, qos: int) -> tuple[int, str, int | None, bytes]:
    length, shift, i = 0, 0, 1
    while True:
        length |= (packet[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not packet[i - 1] & 0x80:
            break
    assert len(packet) == i + length
    (topic_len,) = struct.unpack_from("!H", packet, i)
    topic = packet[i + 2 : i + 2 + topic_len].decode()
    pos = i + 2 + topic_len
    mid = None
    if qos == 1:
        (mid,) = struct.unpack_from("!H", packet, pos)
        pos += 2
    return packet[0], topic, mid, packet[pos:]


def test_packets_encode_publish_with_qos_and_long_lengths():
    messages = [("quantian/market/crypto/BTCUSD", b"x" * 10), ("quantian/market/equity/AAPL", b"y" * 300)]
    for qos, header in ((1, 0x32), (0, 0x30)):
        packets = Packets.encode(messages, qos)
        assert len(packets) == 2
        for i, (topic, payload) in enumerate(messages):
            raw = packets.data[packets.starts[i] : packets.starts[i + 1]]
            assert decode(raw, qos) == (header, topic, 0 if qos else None, payload)


def test_publisher_counts_pubacks_split_across_reads():
    pub = Publisher.__new__(Publisher)
    pub.acked = 0
    pub._buffer = bytearray(b"\x40\x02\x00")
    pub._parse()
    assert pub.acked == 0 and len(pub._buffer) == 3
    pub._buffer += b"\x01\x40\x02\x00\x02\x90\x03\x00\x01\x00\xd0"
    pub._parse()
    assert pub.acked == 2 and pub._buffer == bytearray(b"\xd0")


def test_connect_packet_carries_credentials():
    packet = connect_packet("c1", "alice", "pw", 60)
    assert packet[0] == 0x10 and packet[-10:] == b"\x00\x05alice\x00\x02pw"[-10:]
    assert packet[9] == 0x02 | 0x80 | 0x40  # clean session, user name, password

"""Hostile bytes at every decoder boundary: each answers with its own error type, never a crash.

Wire frames of each protocol, heads announcements, tick and market-event wire forms,
certificates and adverts (see test_node_units.py), MQTT payloads (test_market_events*.py),
ledger blocks and records (test_chain_*.py).
"""

from __future__ import annotations

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from node.errors import NodeError
from node.market_events import BadWireEvent, MarketEvent
from node.protocols import ticks
from node.protocols.codec import FrameReader, decode_body
from node.protocols.control import CommandRegistry, Handler as ControlHandler
from node.protocols.ledger_sync import AnnouncementRejected, HeadsAnnouncement
from node.admission import Admission
from node.metrics import Metrics

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=30,
)


@given(st.binary(max_size=500))
@settings(max_examples=150, deadline=None)
def test_frame_body_decoder(data):
    try:
        decode_body(data)
    except NodeError:
        pass


@given(st.binary(max_size=2000) | cbor_values.map(cbor2.dumps))
@settings(max_examples=150, deadline=None)
def test_heads_announcement_decoder(data):
    try:
        HeadsAnnouncement.decode(data)
    except AnnouncementRejected:
        pass


@given(cbor_values)
@settings(max_examples=150, deadline=None)
def test_tick_wire_decoder(item):
    try:
        ticks.tick_from_wire(item)
    except ticks.BatchRefused:
        pass


@given(cbor_values)
@settings(max_examples=150, deadline=None)
def test_market_event_wire_decoder(item):
    try:
        MarketEvent.from_wire(item)
    except BadWireEvent:
        pass


class _Stream:
    def __init__(self, data: bytes, peer: str) -> None:
        self._data = data
        self.remote_peer = peer
        self.written = b""

    async def read(self, n: int) -> bytes:
        from node.host import StreamClosed

        if not self._data:
            raise StreamClosed("EOF")
        out, self._data = self._data[:n], self._data[n:]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data


class _OperatorAdmission(Admission):
    def is_operator(self, peer_id: str) -> bool:
        return True

    def is_member(self, peer_id: str) -> bool:
        return True


async def _ok(args, peer):
    return {"ok": True}


@given(st.binary(max_size=300) | cbor_values.map(lambda v: len(cbor2.dumps(v)).to_bytes(4, "big") + cbor2.dumps(v)))
@settings(max_examples=60, deadline=None)
def test_control_and_ticks_handlers_answer_garbage_without_crashing(data):
    import trio

    registry = CommandRegistry()
    registry.register("status", _ok)
    admission = _OperatorAdmission(b"\x00" * 32, Metrics())

    from node.host import StreamClosed

    async def run():
        control_stream = _Stream(data, "p")
        try:
            await ControlHandler(admission, registry, Metrics())(control_stream)
        except StreamClosed:  # truncated input: the host wrapper closes the stream; nothing else may escape
            pass
        else:
            assert control_stream.written, "a complete frame always gets an answer"
            assert "ok" in decode_body(control_stream.written[4:])
        try:
            await ticks.Handler(admission, Metrics(), {"ingest": lambda s, b: _ok({}, s)})(_Stream(data, "p"))
        except StreamClosed:
            pass

    trio.run(run)


async def test_frame_reader_refuses_oversized_length_prefix_before_reading_it():
    reader = FrameReader(_Stream((2**31).to_bytes(4, "big"), "p"), max_frame=1024)
    try:
        await reader.read_frame(1)
    except NodeError as exc:
        assert exc.code == "frame_too_large"
    else:
        raise AssertionError("oversized frame accepted")

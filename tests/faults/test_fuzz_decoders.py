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
from node.identity import Identity
from node.membership import issue_certificate
from node.protocols import hello, ledger_sync, ticks
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


class _EmptyLedger:
    """What the ledger-sync handler reads, for a node that holds nothing (the parse path is under test)."""

    author = "me"

    async def get_blocks(self, author, start, max_count, max_bytes):
        return []

    async def heads(self):
        return []

    async def signed_head(self, author):
        return None

    async def fork_proofs(self):
        return []


frames = st.binary(max_size=300) | cbor_values.map(lambda v: len(cbor2.dumps(v)).to_bytes(4, "big") + cbor2.dumps(v))
requests = st.dictionaries(st.sampled_from(["cmd", "args", "author", "start", "max_count", "heads", "cert"]),
                           cbor_values, max_size=4).map(lambda d: len(cbor2.dumps(d)).to_bytes(4, "big") + cbor2.dumps(d))


@given(frames | requests)
@settings(max_examples=80, deadline=None)
def test_every_stream_handler_answers_garbage_without_crashing(data):
    """Control, ticks, ledger-sync and hello: a complete frame gets an answer; a truncated one ends
    in StreamClosed and a malformed one in a NodeError (both counted by the host wrapper)."""
    import trio

    registry = CommandRegistry()
    registry.register("status", _ok)
    admission = _OperatorAdmission(b"\x00" * 32, Metrics())
    own_cert = issue_certificate(Identity.generate(), Identity.generate().peer_id, ["bootstrap"], 60)

    from node.host import StreamClosed

    handlers = {
        "control": ControlHandler(admission, registry, Metrics()),
        "ticks": ticks.Handler(admission, Metrics(), {"ingest": lambda s, b: _ok({}, s)}),
        "ledger_sync": ledger_sync.Handler(_EmptyLedger(), admission, Metrics()),
        "hello": hello.Handler(admission, own_cert, list),
    }

    async def run():
        for name, handler in handlers.items():
            stream = _Stream(data, "p")
            try:
                await handler(stream)
            except StreamClosed:  # truncated input: the host wrapper closes the stream
                continue
            except NodeError as exc:  # counted by the host wrapper under its code
                assert name != "control", f"control answers errors in-band, raised {exc!r}"
                continue
            if name != "ticks":
                assert stream.written, f"{name}: a complete frame always gets an answer"
                assert "ok" in decode_body(stream.written[4:]), name

    trio.run(run)


async def test_frame_reader_refuses_oversized_length_prefix_before_reading_it():
    reader = FrameReader(_Stream((2**31).to_bytes(4, "big"), "p"), max_frame=1024)
    try:
        await reader.read_frame(1)
    except NodeError as exc:
        assert exc.code == "frame_too_large"
    else:
        raise AssertionError("oversized frame accepted")

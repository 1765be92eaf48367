"""Length-prefixed CBOR frames over a stream: every read has a size cap and a timeout.

Frame = 4-byte big-endian length + one CBOR map. Several frames may share one write (batching:
the cost of a libp2p stream is per write, not per byte).
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

import cbor2
import trio

from node.errors import FrameDecodeError, FrameTooLarge, RequestTimeout

DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB
DEFAULT_READ_TIMEOUT_S = 20.0
_HEADER = struct.Struct(">I")


class ByteStream(Protocol):
    remote_peer: str

    async def read(self, max_bytes: int) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


def encode_frame(message: dict[str, Any]) -> bytes:
    body = cbor2.dumps(message)
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        value = cbor2.loads(body)
    except Exception as exc:  # cbor2 raises several types for hostile input
        raise FrameDecodeError(f"bad CBOR: {exc}") from None
    if not isinstance(value, dict):
        raise FrameDecodeError(f"frame is a {type(value).__name__}, expected a map")
    return value


class FrameReader:
    """Buffers a stream and yields whole frames, never more than `max_frame` bytes each."""

    def __init__(self, stream: ByteStream, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._stream = stream
        self._max_frame = max_frame
        self._buffer = bytearray()

    async def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            chunk = await self._stream.read(max(65536, size - len(self._buffer)))
            self._buffer.extend(chunk)

    async def read_frame(self, timeout: float = DEFAULT_READ_TIMEOUT_S) -> dict[str, Any]:
        try:
            with trio.fail_after(timeout):
                await self._fill(_HEADER.size)
                (length,) = _HEADER.unpack_from(self._buffer)
                if length > self._max_frame:
                    raise FrameTooLarge(f"frame of {length} bytes exceeds the {self._max_frame}-byte cap")
                await self._fill(_HEADER.size + length)
        except trio.TooSlowError:
            raise RequestTimeout(f"no complete frame from {self._stream.remote_peer} within {timeout:.0f} s") from None
        body = bytes(self._buffer[_HEADER.size : _HEADER.size + length])
        del self._buffer[: _HEADER.size + length]
        return decode_body(body)


async def write_frames(stream: ByteStream, messages: list[dict[str, Any]]) -> None:
    await stream.write(b"".join(encode_frame(m) for m in messages))


async def request(stream: ByteStream, message: dict[str, Any], *, timeout: float = DEFAULT_READ_TIMEOUT_S,
                  max_frame: int = DEFAULT_MAX_FRAME) -> dict[str, Any]:
    """Send one frame and read one reply frame on a fresh stream."""
    await write_frames(stream, [message])
    return await FrameReader(stream, max_frame).read_frame(timeout)

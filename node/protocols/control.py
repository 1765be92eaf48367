"""Control: request/response commands for operators (ctl, the shell, the testnet, the bench).

Served by every node, only to peers whose certificate carries the operator role. A request is
{id, command, args}; the reply echoes the id with either {ok: true, result} or
{ok: false, error: {code, message}}. Results are JSON-serialisable dicts.

A stream carries requests one after another (the next request only after the reply), until the
client closes it or sends nothing for IDLE_TIMEOUT_S. Why: opening a libp2p stream costs a
multistream-select exchange and several yamux/noise frames each way: a `status` cost the node
~3.2 ms of CPU on a new stream and ~1.4 ms on a reused one (a 10 Hz poll: 30-37 -> ~13 ms of CPU
per second); :class:`Client` keeps streams open and reuses them. A client that sends one request and closes (`call`) still works.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from node.admission import Admission
from node.errors import FrameDecodeError, NodeError, RemoteError, RequestTimeout, StreamClosed
from node.metrics import Metrics
from node.protocols.codec import FrameReader, write_frames

PROTOCOL_ID = "/quantian/control/1.0.0"
MAX_FRAME = 4 * 1024 * 1024
READ_TIMEOUT_S = 10.0  # the first request of a stream
#: A stream that sends no further request for this long is closed by the node.
IDLE_TIMEOUT_S = 120.0
#: A client reuses a stream only if it was last used within this (well inside IDLE_TIMEOUT_S, so
#: the node does not close it under a request in flight).
REUSE_WITHIN_S = 60.0
#: Idle streams a client keeps per node; a request finding none free opens another.
MAX_IDLE_PER_PEER = 2

log = logging.getLogger("quantian.control")

CommandFn = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]  # (args, operator peer) -> result


class CommandError(NodeError):
    """A command refused its arguments or could not run; the message is shown to the operator."""

    code = "bad_request"

    def __init__(self, message: str, code: str = "bad_request") -> None:
        self.code = code
        super().__init__(message)


class CommandRegistry:
    def __init__(self) -> None:
        self._commands: dict[str, tuple[CommandFn, str]] = {}

    def register(self, name: str, fn: CommandFn, help_text: str = "") -> None:
        if name in self._commands:
            raise ValueError(f"control command {name!r} registered twice")
        self._commands[name] = (fn, help_text)

    def names(self) -> list[str]:
        return sorted(self._commands)

    def describe(self) -> dict[str, str]:
        return {name: text for name, (_, text) in sorted(self._commands.items())}

    def get(self, name: str) -> CommandFn | None:
        entry = self._commands.get(name)
        return entry[0] if entry else None


class Handler:
    def __init__(self, admission: Admission, registry: CommandRegistry, metrics: Metrics) -> None:
        self._admission = admission
        self._registry = registry
        self._metrics = metrics

    async def __call__(self, stream) -> None:
        peer = stream.remote_peer
        if not self._admission.is_operator(peer):
            self._metrics.inc("control.refused.not_operator")
            await write_frames(stream, [{"id": None, "ok": False,
                                         "error": {"code": "not_authorised",
                                                   "message": "this peer holds no operator certificate"}}])
            return
        reader = FrameReader(stream, MAX_FRAME)
        served = 0
        while True:
            try:
                frame = await reader.read_frame(IDLE_TIMEOUT_S if served else READ_TIMEOUT_S)
            except StreamClosed:
                if served:
                    return  # the client is done with this stream
                raise
            except RequestTimeout:
                if served:
                    self._metrics.inc("control.idle_closed")
                    return
                self._metrics.inc("control.bad_frame.request_timeout")
                await self._refuse(stream, RequestTimeout(f"no request from {peer} within {READ_TIMEOUT_S:.0f} s"))
                return
            except (FrameDecodeError, NodeError) as exc:
                self._metrics.inc(f"control.bad_frame.{exc.code}")
                await self._refuse(stream, exc)
                return
            await write_frames(stream, [await self._dispatch(frame, peer)])
            served += 1

    @staticmethod
    async def _refuse(stream, exc: NodeError) -> None:
        await write_frames(stream, [{"id": None, "ok": False, "error": {"code": exc.code, "message": str(exc)}}])

    async def _dispatch(self, frame: dict[str, Any], peer: str) -> dict[str, Any]:
        request_id = frame.get("id")
        command = frame.get("command")
        args = frame.get("args") or {}
        fn = self._registry.get(command) if isinstance(command, str) else None
        if fn is None or not isinstance(args, dict):
            self._metrics.inc("control.unknown_command")
            return {"id": request_id, "ok": False, "error": {
                "code": "unknown_command",
                "message": f"unknown command {command!r}; available: {', '.join(self._registry.names())}"}}
        self._metrics.inc("control.requests")
        try:
            result = await fn(args, peer)
        except CommandError as exc:
            return {"id": request_id, "ok": False, "error": {"code": exc.code, "message": str(exc)}}
        except NodeError as exc:
            log.warning("control command %s failed: %s", command, exc)
            return {"id": request_id, "ok": False, "error": {"code": exc.code, "message": str(exc)}}
        return {"id": request_id, "ok": True, "result": result}


_request_ids = itertools.count(1)


async def _exchange(stream, reader: FrameReader, command: str, args: dict[str, Any] | None,
                    timeout: float) -> dict[str, Any]:
    """One request on `stream` and its reply frame (raw: ok or error)."""
    request_id = next(_request_ids)
    await write_frames(stream, [{"id": request_id, "command": command, "args": args or {}}])
    reply = await reader.read_frame(timeout)
    replied_to = reply.get("id")
    if replied_to != request_id and (replied_to is not None or reply.get("ok")):  # None: a refusal
        raise RemoteError("bad_reply", f"reply id {replied_to!r} does not match request {request_id}")
    return reply


def _result(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        error = reply.get("error") or {}
        raise RemoteError(str(error.get("code", "error")), str(error.get("message", "no message")))
    result = reply.get("result")
    return result if isinstance(result, dict) else {"value": result}


def _closed(peer_id: str, command: str, exc: Exception) -> RemoteError:
    return RemoteError("stream_closed", f"{peer_id} closed the stream before answering {command!r}: {exc}")


async def call(host, peer_id: str, command: str, args: dict[str, Any] | None = None,
               timeout: float = 20.0) -> dict[str, Any]:
    """Run one control command on `peer_id` on a stream of its own; raises RemoteError with the
    node's code on failure. For many requests, :class:`Client` reuses streams."""
    stream = await host.open_stream(peer_id, PROTOCOL_ID)
    try:
        reply = await _exchange(stream, FrameReader(stream, MAX_FRAME), command, args, timeout)
    except StreamClosed as exc:
        raise _closed(peer_id, command, exc) from None
    finally:
        await stream.close()
    return _result(reply)


class Client:
    """Control requests over reused streams: each stream carries one request at a time, and up to
    MAX_IDLE_PER_PEER idle streams per node wait for the next request (concurrent requests to one
    node each get a stream of their own)."""

    def __init__(self, host, *, clock: Callable[[], float] = trio.current_time) -> None:
        self._host = host
        self._clock = clock
        self._idle: dict[str, list[tuple[Any, FrameReader, float]]] = {}
        self.streams_opened = 0

    async def call(self, peer_id: str, command: str, args: dict[str, Any] | None = None,
                   timeout: float = 20.0) -> dict[str, Any]:
        """Like :func:`call`. A request is sent again, once, on a new stream only when a reused
        stream turns out closed: the node closes a stream only after IDLE_TIMEOUT_S without a
        request, or with its connection (and then the new stream fails too), and streams are
        reused only within REUSE_WITHIN_S, so a reused stream found closed had not served the
        request (short of a bug that killed the node's handler mid-command)."""
        reused = await self._take(peer_id)
        if reused is not None:
            stream, reader = reused
            try:
                return _result(await self._run(stream, reader, peer_id, command, args, timeout))
            except StreamClosed:
                pass  # gone while idle (the connection died or the node restarted): a new stream
        stream = await self._host.open_stream(peer_id, PROTOCOL_ID)
        self.streams_opened += 1
        try:
            reply = await self._run(stream, FrameReader(stream, MAX_FRAME), peer_id, command, args, timeout)
        except StreamClosed as exc:
            raise _closed(peer_id, command, exc) from None
        return _result(reply)

    async def _run(self, stream, reader: FrameReader, peer_id: str, command: str,
                   args: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        """The exchange; the stream goes back to the pool only after a clean reply to this request
        (after a timeout, a cancellation or a bad frame its state is unknown: it is closed)."""
        try:
            reply = await _exchange(stream, reader, command, args, timeout)
        except BaseException:
            await stream.close()
            raise
        if reply.get("id") is None:  # the node refused the stream itself (auth, a bad frame): it closes it
            await stream.close()
        else:
            await self._give_back(peer_id, stream, reader)
        return reply

    async def _take(self, peer_id: str) -> tuple[Any, FrameReader] | None:
        pool = self._idle.get(peer_id, [])
        while pool:
            stream, reader, used = pool.pop()
            if self._clock() - used < REUSE_WITHIN_S:
                return stream, reader
            await stream.close()  # idle too long: the node may be about to close it
        return None

    async def _give_back(self, peer_id: str, stream, reader: FrameReader) -> None:
        pool = self._idle.setdefault(peer_id, [])
        if len(pool) >= MAX_IDLE_PER_PEER:
            await stream.close()
            return
        pool.append((stream, reader, self._clock()))

    async def aclose(self) -> None:
        """Close every idle stream (the host's shutdown closes them anyway)."""
        pools, self._idle = self._idle, {}
        for pool in pools.values():
            for stream, _, _ in pool:
                await stream.close()

"""Control: request/response commands for operators (ctl, the shell), one request per stream.

Served by every node, only to peers whose certificate carries the operator role. A request is
{id, command, args}; the reply echoes the id with either {ok: true, result} or
{ok: false, error: {code, message}}. Results are JSON-serialisable dicts.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from node.admission import Admission
from node.errors import FrameDecodeError, NodeError, RemoteError, RequestTimeout
from node.metrics import Metrics
from node.protocols.codec import FrameReader, request, write_frames

PROTOCOL_ID = "/quantian/control/1.0.0"
MAX_FRAME = 4 * 1024 * 1024
READ_TIMEOUT_S = 10.0

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
        try:
            frame = await FrameReader(stream, MAX_FRAME).read_frame(READ_TIMEOUT_S)
        except (FrameDecodeError, RequestTimeout, NodeError) as exc:
            self._metrics.inc(f"control.bad_frame.{exc.code}")
            await write_frames(stream, [{"id": None, "ok": False, "error": {"code": exc.code, "message": str(exc)}}])
            return
        await write_frames(stream, [await self._dispatch(frame, peer)])

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


async def call(host, peer_id: str, command: str, args: dict[str, Any] | None = None,
               timeout: float = 20.0) -> dict[str, Any]:
    """Run one control command on `peer_id`; raises RemoteError with the node's code on failure."""
    from node.host import StreamClosed

    request_id = next(_request_ids)
    stream = await host.open_stream(peer_id, PROTOCOL_ID)
    try:
        reply = await request(stream, {"id": request_id, "command": command, "args": args or {}},
                              timeout=timeout, max_frame=MAX_FRAME)
    except StreamClosed as exc:
        raise RemoteError("stream_closed", f"{peer_id} closed the stream before answering {command!r}: {exc}") from None
    finally:
        await stream.close()
    if not reply.get("ok"):
        error = reply.get("error") or {}
        raise RemoteError(str(error.get("code", "error")), str(error.get("message", "no message")))
    if reply.get("id") != request_id:
        raise RemoteError("bad_reply", f"reply id {reply.get('id')!r} does not match request {request_id}")
    result = reply.get("result")
    return result if isinstance(result, dict) else {"value": result}

"""Error root of the node package. Each leaf has a stable `code` that logs and counters use."""

from __future__ import annotations


class NodeError(Exception):
    code = "node_error"


class ConfigError(NodeError):
    code = "config_invalid"


class FrameTooLarge(NodeError):
    code = "frame_too_large"


class FrameDecodeError(NodeError):
    code = "frame_malformed"


class RequestTimeout(NodeError):
    code = "request_timeout"


class PeerUnreachable(NodeError):
    code = "peer_unreachable"


class NotAuthorised(NodeError):
    code = "not_authorised"


class RemoteError(NodeError):
    """The remote side answered a request with an error."""

    code = "remote_error"

    def __init__(self, remote_code: str, message: str) -> None:
        self.remote_code = remote_code
        super().__init__(f"{remote_code}: {message}")


class StreamClosed(Exception):
    """The remote closed or reset the stream (libp2p's StreamEOF/StreamReset). Not a NodeError:
    a peer closing a stream is how conversations end, not a fault of ours."""

    code = "stream_closed"

"""Hello: the certificate handshake every new connection runs, plus peer exchange.

Both sides open a hello stream when a connection appears. The requester sends its certificate;
the responder verifies it (the Noise session already authenticates the peer ID), then answers
with its own certificate and, for member nodes, the peers it knows (peer exchange: how a node
that only dialled a bootstrap discovers the rest). Until this succeeds no other protocol of ours
serves the peer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from node.admission import Admission
from node.errors import NodeError, NotAuthorised
from node.membership import Certificate, CertificateError
from node.protocols.codec import FrameReader, request, write_frames

PROTOCOL_ID = "/quantian/hello/1.0.0"
MAX_FRAME = 256 * 1024
TIMEOUT_S = 10.0
MAX_EXCHANGED_PEERS = 200

log = logging.getLogger("quantian.hello")


@dataclass(frozen=True)
class KnownPeer:
    peer_id: str
    addrs: tuple[str, ...]

    def to_wire(self) -> dict:
        return {"peer_id": self.peer_id, "addrs": list(self.addrs)}

    @classmethod
    def from_wire(cls, raw: object) -> "KnownPeer":
        if not isinstance(raw, dict) or not isinstance(raw.get("peer_id"), str):
            raise NodeError("malformed peer entry")
        addrs = raw.get("addrs", [])
        if not isinstance(addrs, list):
            raise NodeError("malformed peer addrs")
        return cls(raw["peer_id"], tuple(str(a) for a in addrs[:8]))


@dataclass(frozen=True)
class HelloResult:
    certificate: Certificate
    peers: tuple[KnownPeer, ...]


class Handler:
    """Serves hello: verify the requester's certificate, answer with ours and known peers."""

    def __init__(self, admission: Admission, own_cert: Certificate, known_peers: Callable[[], list[KnownPeer]]) -> None:
        self._admission = admission
        self._own_cert = own_cert
        self._known_peers = known_peers

    async def __call__(self, stream) -> None:
        frame = await FrameReader(stream, MAX_FRAME).read_frame(TIMEOUT_S)
        cert_bytes = frame.get("cert")
        if not isinstance(cert_bytes, bytes):
            self._admission.refuse(stream.remote_peer, "malformed")
            await write_frames(stream, [{"ok": False, "error": "malformed: no certificate"}])
            return
        try:
            self._admission.admit(stream.remote_peer, cert_bytes)
        except CertificateError as exc:
            await write_frames(stream, [{"ok": False, "error": str(exc)}])
            return
        peers = self._known_peers()
        await write_frames(stream, [{
            "ok": True,
            "cert": self._own_cert.encode(),
            "peers": [p.to_wire() for p in peers[:MAX_EXCHANGED_PEERS] if p.peer_id != stream.remote_peer],
        }])


async def exchange(host, peer_id: str, own_cert: Certificate, admission: Admission) -> HelloResult:
    """Run the handshake towards `peer_id`. Raises NotAuthorised / CertificateError / NodeError."""
    stream = await host.open_stream(peer_id, PROTOCOL_ID)
    try:
        reply = await request(stream, {"cert": own_cert.encode()}, timeout=TIMEOUT_S, max_frame=MAX_FRAME)
    finally:
        await stream.close()
    if not reply.get("ok"):
        raise NotAuthorised(f"{peer_id} refused our certificate: {reply.get('error', 'no reason given')}")
    cert_bytes = reply.get("cert")
    if not isinstance(cert_bytes, bytes):
        admission.refuse(peer_id, "malformed")
        raise CertificateError("malformed", f"{peer_id} sent no certificate")
    cert = admission.admit(peer_id, cert_bytes)
    raw_peers = reply.get("peers", [])
    peers: list[KnownPeer] = []
    if isinstance(raw_peers, list):
        for raw in raw_peers[:MAX_EXCHANGED_PEERS]:
            try:
                peers.append(KnownPeer.from_wire(raw))
            except NodeError:
                log.debug("ignoring malformed peer entry from %s", peer_id)
    return HelloResult(cert, tuple(peers))

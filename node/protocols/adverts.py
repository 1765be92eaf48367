"""Capability adverts: each node's signed "who I am and what I can do", gossiped every heartbeat.

An advert carries the author's membership certificate, so any receiver can check it even without
a direct connection to the author. Receivers check, in order: CBOR shape, the author's Ed25519
signature, origin = author, certificate (authority, expiry, peer), roles allowed by it,
freshness and a strictly increasing sequence number. Invalid adverts are dropped (not forwarded)
and counted per reason.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import cbor2

from node.admission import Admission
from node.config import MAX_HEARTBEAT_S
from node.identity import Identity, public_key_from_peer_id, tagged, verify_signature, IdentityError
from node.membership import Certificate, CertificateError, verify_certificate
from node.metrics import Metrics
from node.peers import PeerTable

TOPIC = "quantian/adverts/1.0.0"
SIGN_DOMAIN = "advert/v1"
MAX_ADVERT_BYTES = 16 * 1024
MAX_CLOCK_SKEW_S = 60.0

log = logging.getLogger("quantian.adverts")


class AdvertRejected(Exception):
    code = "advert_rejected"

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Advert:
    peer_id: str
    name: str
    roles: tuple[str, ...]
    capabilities: tuple[str, ...]
    addrs: tuple[str, ...]
    version: str
    seq: int
    ts: float
    heartbeat_s: float
    load: dict
    cert: bytes

    def body(self) -> bytes:
        fields = asdict(self)
        fields["roles"] = list(self.roles)
        fields["capabilities"] = list(self.capabilities)
        fields["addrs"] = list(self.addrs)
        return cbor2.dumps(fields, canonical=True)


def encode(advert: Advert, identity: Identity) -> bytes:
    body = advert.body()
    return cbor2.dumps({"body": body, "sig": identity.sign(tagged(SIGN_DOMAIN, body))})


def decode(data: bytes) -> tuple[Advert, bytes, bytes]:
    """Parse an advert without trusting it. Returns (advert, signed body, signature)."""
    if len(data) > MAX_ADVERT_BYTES:
        raise AdvertRejected("too_large", f"{len(data)} bytes")
    try:
        outer = cbor2.loads(data)
        body, sig = outer["body"], outer["sig"]
        raw = cbor2.loads(body)
        advert = Advert(
            peer_id=str(raw["peer_id"]), name=str(raw["name"]),
            roles=tuple(str(r) for r in raw["roles"]),
            capabilities=tuple(str(c) for c in raw["capabilities"]),
            addrs=tuple(str(a) for a in raw["addrs"]), version=str(raw["version"]),
            seq=int(raw["seq"]), ts=float(raw["ts"]), heartbeat_s=float(raw["heartbeat_s"]),
            load=dict(raw["load"]), cert=bytes(raw["cert"]),
        )
        if not isinstance(body, bytes) or not isinstance(sig, bytes):
            raise TypeError("body and sig must be bytes")
        if not (math.isfinite(advert.heartbeat_s) and 0 < advert.heartbeat_s <= MAX_HEARTBEAT_S):
            raise AdvertRejected("bad_heartbeat", f"heartbeat_s={advert.heartbeat_s} not in (0, {MAX_HEARTBEAT_S:.0f}]")
    except AdvertRejected:
        raise
    except Exception as exc:  # hostile bytes: cbor2 and the conversions raise many types
        raise AdvertRejected("bad_cbor", f"{type(exc).__name__}: {exc}") from None
    return advert, body, sig


class Validator:
    """The gossip validator for TOPIC; counts every drop as `adverts.dropped.<reason>`."""

    def __init__(self, own_peer_id: str, admission: Admission, table: PeerTable, metrics: Metrics,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._own_peer_id = own_peer_id
        self._admission = admission
        self._table = table
        self._metrics = metrics
        self._wall_clock = wall_clock

    def check(self, forwarder: str, origin: str, data: bytes) -> Advert:
        """Return the verified advert or raise AdvertRejected."""
        if forwarder != self._own_peer_id and not self._admission.is_member(forwarder):
            raise AdvertRejected("forwarder_not_admitted", forwarder)
        advert, body, sig = decode(data)
        try:
            public_key = public_key_from_peer_id(advert.peer_id)
        except IdentityError as exc:
            raise AdvertRejected("bad_peer_id", str(exc)) from None
        if not verify_signature(public_key, tagged(SIGN_DOMAIN, body), sig):
            raise AdvertRejected("bad_signature", advert.peer_id)
        if origin != advert.peer_id:
            raise AdvertRejected("origin_mismatch", f"advert for {advert.peer_id} published by {origin}")
        try:
            cert = Certificate.decode(advert.cert)
            verify_certificate(cert, self._admission.authority_key, advert.peer_id, now=self._wall_clock())
        except CertificateError as exc:
            raise AdvertRejected(f"certificate_{exc.reason}", advert.peer_id) from None
        disallowed = [r for r in advert.roles if not cert.allows(r)]
        if disallowed or "operator" in advert.roles:
            raise AdvertRejected("role_not_allowed", f"{advert.peer_id} claims {', '.join(disallowed or ['operator'])}")
        if abs(self._wall_clock() - advert.ts) > MAX_CLOCK_SKEW_S:
            raise AdvertRejected("stale", f"timestamp off by {self._wall_clock() - advert.ts:.0f} s")
        if advert.peer_id != self._own_peer_id and advert.seq <= self._table.last_seq(advert.peer_id):
            raise AdvertRejected("replayed", f"seq {advert.seq} <= {self._table.last_seq(advert.peer_id)}")
        return advert

    def __call__(self, forwarder: str, message) -> bool:
        try:
            self.check(forwarder, message.origin, message.data)
        except AdvertRejected as exc:
            self._metrics.inc(f"adverts.dropped.{exc.reason}")
            log.debug("dropped advert from %s: %s", forwarder, exc)
            return False
        return True


class SequenceClock:
    """Strictly increasing advert sequence numbers that also survive restarts (ms since epoch)."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self._last = 0
        self._wall_clock = wall_clock

    def next(self) -> int:
        self._last = max(self._last + 1, int(self._wall_clock() * 1000))
        return self._last

"""Who may talk to us: peers whose membership certificate we verified, and for how long others wait.

A connected peer has `handshake_timeout_s` to present a valid certificate over the hello
protocol; after that (or on a bad certificate) it is disconnected and refused for `ban_s`.
Every refusal is counted by reason. Pure state: the node drives it from connection events.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from node.membership import OPERATOR_ROLE, Certificate, CertificateError, verify_certificate
from node.metrics import Metrics

log = logging.getLogger("quantian.admission")


class Admission:
    def __init__(self, authority_key: bytes, metrics: Metrics, *, handshake_timeout_s: float = 5.0,
                 ban_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.authority_key = authority_key
        self._metrics = metrics
        self._handshake_timeout_s = handshake_timeout_s
        self._ban_s = ban_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._pending: dict[str, float] = {}
        self._admitted: dict[str, Certificate] = {}
        self._banned_until: dict[str, float] = {}
        self._admit_listeners: list[Callable[[str], None]] = []

    # --- connection events -----------------------------------------------------------------

    def on_connected(self, peer_id: str) -> bool:
        """False when the peer is banned (the caller disconnects it at once)."""
        if self.is_banned(peer_id):
            self._metrics.inc("admission.refused.banned")
            return False
        if peer_id not in self._admitted:
            self._pending.setdefault(peer_id, self._clock())
        return True

    def on_disconnected(self, peer_id: str) -> None:
        self._pending.pop(peer_id, None)

    def overdue(self) -> list[str]:
        """Peers that did not present a certificate in time; they are banned and counted."""
        now = self._clock()
        late = [p for p, since in self._pending.items() if now - since > self._handshake_timeout_s]
        for peer_id in late:
            # Possibly just a slow (loaded) peer rather than an outsider: refuse it only briefly.
            self.refuse(peer_id, "no_certificate", ban_s=min(self._ban_s, self._handshake_timeout_s))
        return late

    # --- verification ----------------------------------------------------------------------

    def admit(self, peer_id: str, cert_bytes: bytes) -> Certificate:
        """Verify `cert_bytes` for `peer_id`; raise CertificateError (counted, peer banned) if invalid."""
        try:
            cert = Certificate.decode(cert_bytes)
            verify_certificate(cert, self.authority_key, peer_id, now=self._wall_clock())
        except CertificateError as exc:
            self.refuse(peer_id, exc.reason)
            raise
        self._admitted[peer_id] = cert
        self._pending.pop(peer_id, None)
        for listener in self._admit_listeners:
            listener(peer_id)
        return cert

    def add_admit_listener(self, listener: Callable[[str], None]) -> None:
        """`listener(peer_id)` after every successful admission (each hello, so each reconnection)."""
        self._admit_listeners.append(listener)

    def refuse(self, peer_id: str, reason: str, *, ban_s: float | None = None) -> None:
        ban_s = self._ban_s if ban_s is None else ban_s
        self._metrics.inc(f"admission.refused.{reason}")
        self._pending.pop(peer_id, None)
        self._admitted.pop(peer_id, None)
        self._banned_until[peer_id] = self._clock() + ban_s
        log.warning("refused peer %s: %s (banned for %.0f s)", peer_id, reason, ban_s)

    def is_banned(self, peer_id: str) -> bool:
        until = self._banned_until.get(peer_id)
        if until is None:
            return False
        if self._clock() >= until:
            del self._banned_until[peer_id]
            return False
        return True

    def certificate(self, peer_id: str) -> Certificate | None:
        cert = self._admitted.get(peer_id)
        if cert is None:
            return None
        if cert.expires <= self._wall_clock():
            self.refuse(peer_id, "expired")
            return None
        return cert

    def is_member(self, peer_id: str) -> bool:
        """An admitted network node (any node role)."""
        cert = self.certificate(peer_id)
        return cert is not None and any(r != OPERATOR_ROLE for r in cert.roles)

    def is_operator(self, peer_id: str) -> bool:
        cert = self.certificate(peer_id)
        return cert is not None and cert.allows(OPERATOR_ROLE)

    def counts(self) -> dict[str, int]:
        return {"admitted": len(self._admitted), "pending": len(self._pending),
                "banned": sum(1 for p in list(self._banned_until) if self.is_banned(p))}

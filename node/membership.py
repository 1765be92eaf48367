"""Membership certificates: a network authority admits peers by signing {peer ID, roles, validity}.

A node serves our protocols only to peers whose certificate verifies against the authority key it
was started with, and accepts capability claims only for roles the certificate allows. The
operator role admits control clients (ctl, shell). No libp2p import here: the testnet and the
CLI issue certificates without paying the libp2p import cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cbor2

from node.errors import NodeError
from node.identity import (
    Identity,
    IdentityError,
    load_identity,
    load_or_create_identity,
    public_key_from_peer_id,
    save_identity,
    tagged,
    verify_signature,
)

CERT_DOMAIN = "membership-cert/v1"
OPERATOR_ROLE = "operator"
NODE_ROLES = ("bootstrap", "iot", "ingestion", "anomaly", "risk")
ALL_ROLES = NODE_ROLES + (OPERATOR_ROLE,)
MAX_CERT_BYTES = 2048
CLOCK_SKEW_S = 300.0

AUTHORITY_KEY_FILE = "authority.key"
AUTHORITY_PUB_FILE = "authority.pub"
NODE_CERT_FILE = "node.cert"
OPERATOR_CERT_FILE = "operator.cert"


class CertificateError(NodeError):
    """A certificate is missing, malformed, forged, expired or does not fit its holder."""

    code = "certificate_invalid"

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Certificate:
    peer_id: str
    roles: tuple[str, ...]
    issued: float
    expires: float
    authority: bytes  # raw Ed25519 public key of the signer
    signature: bytes

    def body(self) -> bytes:
        return cbor2.dumps(
            {
                "peer_id": self.peer_id,
                "roles": list(self.roles),
                "issued": self.issued,
                "expires": self.expires,
                "authority": self.authority,
            },
            canonical=True,
        )

    def encode(self) -> bytes:
        return cbor2.dumps(
            {
                "peer_id": self.peer_id,
                "roles": list(self.roles),
                "issued": self.issued,
                "expires": self.expires,
                "authority": self.authority,
                "sig": self.signature,
            },
            canonical=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> "Certificate":
        if len(data) > MAX_CERT_BYTES:
            raise CertificateError("too_large", f"{len(data)} bytes")
        try:
            raw = cbor2.loads(data)
            cert = cls(
                peer_id=str(raw["peer_id"]),
                roles=tuple(str(r) for r in raw["roles"]),
                issued=float(raw["issued"]),
                expires=float(raw["expires"]),
                authority=bytes(raw["authority"]),
                signature=bytes(raw["sig"]),
            )
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CertificateError("malformed", str(exc)) from None
        return cert

    def allows(self, role: str) -> bool:
        return role in self.roles

    def to_json(self) -> dict:
        return {
            "peer_id": self.peer_id,
            "roles": list(self.roles),
            "issued": self.issued,
            "expires": self.expires,
            "authority": self.authority.hex(),
        }


def issue_certificate(
    authority: Identity, peer_id: str, roles: list[str] | tuple[str, ...], valid_for_s: float, *, now: float | None = None
) -> Certificate:
    unknown = sorted(set(roles) - set(ALL_ROLES))
    if unknown:
        raise CertificateError("unknown_role", f"{', '.join(unknown)} (known: {', '.join(ALL_ROLES)})")
    if not roles:
        raise CertificateError("no_roles", "a certificate must allow at least one role")
    try:
        public_key_from_peer_id(peer_id)
    except IdentityError as exc:
        raise CertificateError("bad_peer_id", str(exc)) from None
    issued = time.time() if now is None else now
    unsigned = Certificate(peer_id, tuple(sorted(set(roles))), issued, issued + valid_for_s, authority.public_key, b"")
    return Certificate(
        unsigned.peer_id,
        unsigned.roles,
        unsigned.issued,
        unsigned.expires,
        unsigned.authority,
        authority.sign(tagged(CERT_DOMAIN, unsigned.body())),
    )


def verify_certificate(cert: Certificate, authority_key: bytes, peer_id: str, *, now: float | None = None) -> None:
    """Raise CertificateError unless `cert` was signed by `authority_key` for `peer_id` and is valid now."""
    now = time.time() if now is None else now
    if cert.authority != authority_key:
        raise CertificateError("wrong_authority", "signed by a different network authority")
    if not verify_signature(authority_key, tagged(CERT_DOMAIN, cert.body()), cert.signature):
        raise CertificateError("bad_signature", f"certificate for {cert.peer_id}")
    if cert.peer_id != peer_id:
        raise CertificateError("wrong_peer", f"certificate is for {cert.peer_id}, presented by {peer_id}")
    if cert.issued > now + CLOCK_SKEW_S:
        raise CertificateError("not_yet_valid", f"issued in the future ({cert.issued:.0f})")
    if cert.expires <= now:
        raise CertificateError("expired", f"expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(cert.expires))}")


# --- files -----------------------------------------------------------------------------------


def create_authority(directory: Path) -> Identity:
    """Create DIR/authority.key (0600) and DIR/authority.pub (hex); refuse to overwrite a key."""
    directory = Path(directory)
    key_path = directory / AUTHORITY_KEY_FILE
    if key_path.exists():
        raise CertificateError("authority_exists", f"{key_path} already exists; refusing to overwrite it")
    authority = Identity.generate()
    save_identity(authority, key_path)
    (directory / AUTHORITY_PUB_FILE).write_text(authority.public_key.hex() + "\n")
    return authority


def load_authority(directory: Path) -> Identity:
    return load_identity(Path(directory) / AUTHORITY_KEY_FILE)


def parse_authority_public_key(value: str) -> bytes:
    """An authority public key given as 64 hex characters or as a path to a file holding them."""
    text = value.strip()
    path = Path(text)
    if path.is_file():  # a file path of exactly 64 characters is still a path
        text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise CertificateError("bad_authority_key", f"{value!r} is neither 64 hex characters nor a file holding them") from None
    if len(key) != 32:
        raise CertificateError("bad_authority_key", f"expected 32 bytes, got {len(key)}")
    return key


def write_certificate(cert: Certificate, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(cert.encode())
    tmp.replace(path)


def read_certificate(path: Path) -> Certificate:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateError("missing", f"no certificate file at {path}") from None
    return Certificate.decode(data)


def install_credentials(
    data_dir: Path, authority: Identity, roles: list[str] | tuple[str, ...], valid_for_s: float, cert_file: str = NODE_CERT_FILE
) -> str:
    """Give DATA_DIR a key (created if absent), a certificate for `roles` and the authority's public key.

    Returns the peer ID. Used by the testnet for nodes (node.cert) and the operator (operator.cert).
    """
    data_dir = Path(data_dir)
    identity = load_or_create_identity(data_dir)
    write_certificate(issue_certificate(authority, identity.peer_id, roles, valid_for_s), data_dir / cert_file)
    (data_dir / AUTHORITY_PUB_FILE).write_text(authority.public_key.hex() + "\n")
    return identity.peer_id

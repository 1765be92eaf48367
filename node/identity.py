"""Node identity: one Ed25519 key that is both the libp2p peer ID and the ledger signing key.

This module does not import libp2p (import costs ~3 s); it derives libp2p-compatible peer IDs
itself so the ledger, membership certificates and the testnet can work with identities cheaply.
The key file holds the raw 32-byte Ed25519 seed, mode 0600.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

KEY_FILE_NAME = "identity.key"
SEED_SIZE = 32
SIGNATURE_SIZE = 64

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# libp2p PublicKey protobuf: field 1 (KeyType) = 1 (Ed25519), field 2 (Data) = 32 bytes.
_PROTO_ED25519_PREFIX = b"\x08\x01\x12\x20"
# identity multihash: code 0x00, length 36.
_IDENTITY_MULTIHASH_PREFIX = b"\x00\x24"


class IdentityError(Exception):
    """A key file or peer ID could not be used."""

    code = "identity_error"


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58, as libp2p uses for peer IDs."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, rem = divmod(n, 58)
        out.append(_B58_ALPHABET[rem])
    pad = len(data) - len(data.lstrip(b"\x00"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        idx = _B58_ALPHABET.find(ch)
        if idx < 0:
            raise IdentityError(f"invalid base58 character {ch!r}")
        n = n * 58 + idx
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\x00" * pad + body


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer ID (base58 identity multihash) of a raw Ed25519 public key."""
    if len(public_key) != 32:
        raise IdentityError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    return b58encode(_IDENTITY_MULTIHASH_PREFIX + _PROTO_ED25519_PREFIX + public_key)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Recover the raw Ed25519 public key embedded in an Ed25519 peer ID."""
    raw = b58decode(peer_id)
    prefix = _IDENTITY_MULTIHASH_PREFIX + _PROTO_ED25519_PREFIX
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        raise IdentityError(f"not an Ed25519 peer ID: {peer_id!r}")
    return raw[len(prefix):]


def tagged(domain: str, payload: bytes) -> bytes:
    """Domain-separated bytes to sign: a signature for one purpose never verifies for another."""
    return b"quantian/" + domain.encode() + b"\x00" + payload


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `data` by `public_key`."""
    if len(public_key) != 32 or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        VerifyKey(public_key).verify(data, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair. `sign` returns a detached 64-byte signature."""

    seed: bytes

    @classmethod
    def generate(cls) -> "Identity":
        return cls(bytes(SigningKey.generate()))

    @property
    def _signing_key(self) -> SigningKey:
        return SigningKey(self.seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self._signing_key.sign(data).signature

    def __repr__(self) -> str:  # never print the seed
        return f"Identity(peer_id={self.peer_id})"


def save_identity(identity: Identity, path: Path) -> None:
    """Write the seed with mode 0600, atomically (never a half-written key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, identity.seed)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_identity(path: Path) -> Identity:
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"no key file at {path}") from None
    if len(seed) != SEED_SIZE:
        raise IdentityError(f"key file {path} is corrupt: expected {SEED_SIZE} bytes, found {len(seed)}")
    return Identity(seed)


def load_or_create_identity(data_dir: Path) -> Identity:
    """The node's identity from DATA_DIR/identity.key, created on first start."""
    path = Path(data_dir) / KEY_FILE_NAME
    if path.exists():
        return load_identity(path)
    identity = Identity.generate()
    save_identity(identity, path)
    return identity

"""Deterministic CBOR: the only way ledger structures become bytes.

Decoding is strict: only plain JSON-like values plus bytes are accepted, and the bytes must be
the canonical encoding of what they decode to, so every value has exactly one byte form and a
hash over bytes is a hash over meaning.
"""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2

from node.identity import tagged

from .errors import DecodeError

MAX_DEPTH = 32


def encode(value: Any) -> bytes:
    """Canonical CBOR (RFC 8949 core deterministic: sorted keys, shortest forms)."""
    try:
        return cbor2.dumps(value, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise DecodeError(f"value cannot be encoded: {exc}") from None


def decode(data: bytes, *, max_size: int, what: str) -> Any:
    """Decode untrusted bytes, refusing anything oversized, non-plain or non-canonical."""
    if len(data) > max_size:
        raise DecodeError(f"{what} is {len(data)} bytes, limit {max_size}")
    try:
        value = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise DecodeError(f"{what} is not valid CBOR: {exc}") from None
    check_plain(value, what)
    if encode(value) != data:
        raise DecodeError(f"{what} is not canonically encoded")
    return value


_SCALARS = frozenset({type(None), bool, int, float, str, bytes})


def check_plain(value: Any, what: str, depth: int = 0) -> None:
    """Accept None, bool, int, float, str, bytes, list and str-keyed dict, nothing else."""
    if type(value) in _SCALARS:
        return
    if depth > MAX_DEPTH:
        raise DecodeError(f"{what} nests deeper than {MAX_DEPTH}")
    if isinstance(value, (bool, int, float, str, bytes)) or value is None:
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            check_plain(item, what, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise DecodeError(f"{what} has a non-string map key {key!r}")
            check_plain(item, what, depth + 1)
        return
    raise DecodeError(f"{what} holds an unsupported value of type {type(value).__name__}")


_domain_hashers: dict[str, Any] = {}  # domain -> sha256 state over its tag (a handful of domains)


def domain_hasher(domain: str) -> Any:
    """The SHA-256 state over `domain`'s tag: `copy()` it and `update` the data (what `digest`
    does), for loops that hash many values under one domain (chain.merkle)."""
    state = _domain_hashers.get(domain)
    if state is None:
        state = _domain_hashers[domain] = hashlib.sha256(tagged(domain, b""))
    return state


def digest(domain: str, data: bytes) -> bytes:
    """SHA-256 over domain-tagged bytes: a hash for one purpose never collides with another.
    The tag's hash state is computed once per domain and copied (Merkle trees hash ~3 times per tick)."""
    h = domain_hasher(domain).copy()
    h.update(data)
    return h.digest()

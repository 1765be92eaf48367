"""Record types and the Record value: what a node writes into its chain.

The set of types is closed: each names one event of the network, with the payload fields it
must carry. Records keep their full payload so a replica or an offline auditor can read what
happened, not just a hash of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import codec
from .errors import DecodeError, InvalidRecord, UnknownRecordType

RECORD_DOMAIN = "ledger/record/v1"
MAX_RECORD_BYTES = 64 * 1024

# type -> (required payload fields, meaning). Extra payload fields are allowed.
RECORD_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "peer_joined": (("peer",), "a peer joined the network (peer id, capabilities)"),
    "peer_left": (("peer",), "a peer left or was dropped (peer id, reason)"),
    "market_batch_ingested": (("ticks",), "a tick batch was normalised (tick count, source, Merkle root)"),
    "batch_routed": (("to", "ticks", "merkle_root"), "a batch was sent to a peer: target peer, tick count, batch Merkle root"),
    "routing_failed": (("reason",), "a batch could not be delivered (target, reason)"),
    "anomaly_alert_created": (("alert_id",), "an anomaly alert was raised (alert id, symbol, score)"),
    "anomaly_alert_reviewed": (("alert_id", "decision"), "an operator reviewed an alert"),
    "risk_snapshot_computed": ((), "a portfolio risk snapshot (VaR, exposures)"),
    "portfolio_set": ((), "the portfolio under risk was replaced"),
    "ledger_verification_failed": (("author", "height", "code"), "a chain failed verification (author, height, error code)"),
    "fork_detected": (("author", "height", "proof"), "an author signed two blocks at one height (encoded fork proof)"),
    "checkpoint": (("heads",), "heads of all chains a bootstrap holds: list of [author, height, hash]"),
}


@dataclass(frozen=True)
class Record:
    """One ledger entry: its type, the acting peer, when (ms since epoch) and the full payload."""

    type: str
    actor: str
    timestamp_ms: int
    payload: dict[str, Any]

    def encode(self) -> bytes:
        return codec.encode([self.type, self.actor, self.timestamp_ms, self.payload])


def record_hash(encoded: bytes) -> bytes:
    return codec.digest(RECORD_DOMAIN, encoded)


def validate(record_type: str, payload: Any, actor: Any) -> None:
    """Reject what must never reach a chain: unknown types, missing fields, odd values."""
    if record_type not in RECORD_TYPES:
        raise UnknownRecordType(f"unknown record type {record_type!r}")
    if not isinstance(actor, str) or not actor:
        raise InvalidRecord("actor must be a non-empty peer id string")
    if not isinstance(payload, dict):
        raise InvalidRecord(f"payload must be a dict, got {type(payload).__name__}")
    missing = [f for f in RECORD_TYPES[record_type][0] if f not in payload]
    if missing:
        raise InvalidRecord(f"{record_type} payload lacks {', '.join(missing)}")
    try:
        codec.check_plain(payload, "payload")
    except DecodeError as exc:
        raise InvalidRecord(exc.reason) from None


def make_record(record_type: str, payload: dict[str, Any], actor: str, timestamp_ms: int) -> tuple[Record, bytes]:
    """A validated record and its canonical bytes (checked against the size cap)."""
    validate(record_type, payload, actor)
    record = Record(record_type, actor, timestamp_ms, payload)
    encoded = record.encode()
    if len(encoded) > MAX_RECORD_BYTES:
        raise InvalidRecord(f"record is {len(encoded)} bytes, limit {MAX_RECORD_BYTES}")
    return record, encoded


def decode_record(data: bytes) -> Record:
    """Strictly decode a stored or received record. Unknown types are a decode failure."""
    value = codec.decode(data, max_size=MAX_RECORD_BYTES, what="record")
    if not (isinstance(value, list) and len(value) == 4):
        raise DecodeError("record must be a 4-element array")
    rtype, actor, ts, payload = value
    if not isinstance(rtype, str) or not isinstance(actor, str) or type(ts) is not int or not isinstance(payload, dict):
        raise DecodeError("record fields have the wrong types")
    if rtype not in RECORD_TYPES:
        raise DecodeError(f"record has unknown type {rtype!r}")
    return Record(rtype, actor, ts, payload)

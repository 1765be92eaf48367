"""Ledger errors: one root, one leaf per thing that can go wrong, each with a stable `code`.

Callers (sync protocol, shell, CLI) switch on `code` and show `author`/`height`, so a peer
that sent a bad block can be penalised and the failure recorded precisely.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Root of every ledger failure. `author` (peer id) and `height` say where, when known."""

    code = "ledger_error"

    def __init__(self, reason: str, *, author: str | None = None, height: int | None = None) -> None:
        self.reason = reason
        self.author = author
        self.height = height
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = []
        if self.author is not None:
            where.append(f"author={self.author}")
        if self.height is not None:
            where.append(f"height={self.height}")
        prefix = f"[{self.code}] " + (" ".join(where) + ": " if where else "")
        return prefix + self.reason

    def at(self, *, author: str | None = None, height: int | None = None) -> "LedgerError":
        """Fill in the location once the caller knows it (pure layers often do not)."""
        if self.author is None:
            self.author = author
        if self.height is None:
            self.height = height
        self.args = (self._describe(),)
        return self

    def located(self, *, author: str, height: int) -> "LedgerError":
        """Name the chain position being checked, overriding what the bytes claimed."""
        self.author, self.height = author, height
        self.args = (self._describe(),)
        return self

    def to_dict(self) -> dict:
        return {"code": self.code, "author": self.author, "height": self.height, "reason": self.reason}


class DecodeError(LedgerError):
    """Bytes are not a well-formed, canonical encoding of the expected structure."""

    code = "decode_error"


class UnknownRecordType(LedgerError):
    code = "unknown_record_type"


class InvalidRecord(LedgerError):
    """A record payload is missing required fields or holds unencodable values."""

    code = "invalid_record"


class InvalidSignature(LedgerError):
    code = "invalid_signature"


class BrokenChain(LedgerError):
    """A block's previous-hash does not match the block before it."""

    code = "broken_chain"


class HeightGap(LedgerError):
    code = "height_gap"


class BadHash(LedgerError):
    """A stored or claimed hash does not match the hash recomputed from the bytes."""

    code = "bad_hash"


class BadMerkleRoot(LedgerError):
    code = "bad_merkle_root"


class AuthorMismatch(LedgerError):
    code = "author_mismatch"


class BlockTooLarge(LedgerError):
    code = "block_too_large"


class TimestampOutOfRange(LedgerError):
    code = "timestamp_out_of_range"


class UnsupportedVersion(LedgerError):
    code = "unsupported_version"


class ForkDetected(LedgerError):
    """Two validly signed blocks by one author at one height. `proof` is the encoded fork proof."""

    code = "fork_detected"

    def __init__(self, reason: str, *, author: str | None = None, height: int | None = None,
                 proof: bytes = b"") -> None:
        self.proof = proof
        super().__init__(reason, author=author, height=height)


class BadProof(LedgerError):
    """An inclusion or fork proof does not verify."""

    code = "bad_proof"


class CorruptStore(LedgerError):
    """The SQLite store is unreadable or its index disagrees with the signed blocks."""

    code = "corrupt_store"


class NotFound(LedgerError):
    code = "not_found"


class LedgerClosed(LedgerError):
    code = "ledger_closed"


class UnreadableStore(CorruptStore):
    """SQLite itself reports the file damaged (truncated, overwritten pages)."""

    code = "unreadable_store"

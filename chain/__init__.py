"""QuantIAN ledger: one signed, hash-chained log per node, replicated read-only by the others.

Pure parts (`records`, `merkle`, `block`, `verify`) never touch disk or the network; `store`
keeps chains in SQLite; `ledger.Ledger` is the trio service a node runs; `queries` and `cli`
read a store for the control channel and the offline `ledger` command.
"""

from .errors import (AuthorMismatch, BadHash, BadMerkleRoot, BadProof, BlockTooLarge, BrokenChain, CorruptStore,
                     DecodeError, ForkDetected, HeightGap, InvalidRecord, InvalidSignature, LedgerClosed,
                     LedgerError, NotFound, TimestampOutOfRange, UnknownRecordType, UnreadableStore,
                     UnsupportedVersion)
from .ledger import Ledger, LedgerConfig, Receipt
from .records import RECORD_TYPES
from .replica import IngestResult
from .store import Head

__all__ = [
    "AuthorMismatch", "BadHash", "BadMerkleRoot", "BadProof", "BlockTooLarge", "BrokenChain", "CorruptStore",
    "DecodeError", "ForkDetected", "HeightGap", "InvalidRecord", "InvalidSignature", "LedgerClosed",
    "LedgerError", "NotFound", "TimestampOutOfRange", "UnknownRecordType", "UnreadableStore",
    "UnsupportedVersion", "Ledger", "LedgerConfig", "Receipt", "RECORD_TYPES", "IngestResult", "Head",
]

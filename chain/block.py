"""Blocks: a signed header committing to a list of records, and their canonical byte forms.

The header is hashed under a domain tag; the author signs that hash (under another tag). A
stored block is kept exactly as encoded here, so verification re-hashes the signed bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

from node.identity import Identity, peer_id_from_public_key, tagged

from . import codec
from .errors import BlockTooLarge, DecodeError
from .merkle import merkle_root
from .records import record_hash

FORMAT_VERSION = 1
BLOCK_DOMAIN = "ledger/block/v1"
SIGNATURE_DOMAIN = "ledger/block-signature/v1"
GENESIS_PREV = bytes(32)
MAX_BLOCK_BYTES = 1024 * 1024
MAX_RECORDS_PER_BLOCK = 4096
MAX_HEADER_BYTES = 512


@dataclass(frozen=True)
class BlockHeader:
    version: int
    author: bytes  # raw Ed25519 public key
    height: int
    prev_hash: bytes
    timestamp_ms: int
    record_count: int
    merkle_root: bytes

    def fields(self) -> list:
        return [self.version, self.author, self.height, self.prev_hash,
                self.timestamp_ms, self.record_count, self.merkle_root]

    @cached_property
    def hash(self) -> bytes:
        return codec.digest(BLOCK_DOMAIN, codec.encode(self.fields()))

    @property
    def author_id(self) -> str:
        return _peer_id(self.author)

    @classmethod
    def from_fields(cls, value: object) -> "BlockHeader":
        if not (isinstance(value, list) and len(value) == 7):
            raise DecodeError("block header must be a 7-element array")
        version, author, height, prev, ts, count, root = value
        if not all(type(v) is int for v in (version, height, ts, count)):
            raise DecodeError("block header integers have the wrong types")
        if not (_is_hash(author) and _is_hash(prev) and _is_hash(root)):
            raise DecodeError("block header key or hashes are not 32 bytes")
        if height < 0 or count < 0:
            raise DecodeError("block header has a negative height or count")
        return cls(version, author, height, prev, ts, count, root)


@lru_cache(maxsize=4096)
def _peer_id(public_key: bytes) -> str:
    return peer_id_from_public_key(public_key)


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == 32


def signing_bytes(block_hash: bytes) -> bytes:
    return tagged(SIGNATURE_DOMAIN, block_hash)


@dataclass(frozen=True)
class SignedHeader:
    header: BlockHeader
    signature: bytes

    def encode(self) -> bytes:
        return codec.encode([self.header.fields(), self.signature])


def decode_signed_header(data: bytes) -> SignedHeader:
    value = codec.decode(data, max_size=MAX_HEADER_BYTES, what="signed header")
    if not (isinstance(value, list) and len(value) == 2):
        raise DecodeError("signed header must be a 2-element array")
    return SignedHeader(BlockHeader.from_fields(value[0]), _signature(value[1]))


def _signature(value: object) -> bytes:
    if not (isinstance(value, bytes) and len(value) == 64):
        raise DecodeError("signature must be 64 bytes")
    return value


@dataclass(frozen=True)
class Block:
    """A signed header and the encoded records it commits to (in Merkle leaf order)."""

    header: BlockHeader
    signature: bytes
    records: tuple[bytes, ...]

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def signed_header(self) -> SignedHeader:
        return SignedHeader(self.header, self.signature)

    @cached_property
    def record_hashes(self) -> list[bytes]:
        return [record_hash(r) for r in self.records]

    def encode(self) -> bytes:
        return codec.encode([self.header.fields(), self.signature, list(self.records)])


def decode_block(data: bytes) -> Block:
    """Strictly decode a block; structure only (signatures and links are `verify`'s job)."""
    if not isinstance(data, bytes):
        raise DecodeError(f"block is stored as {type(data).__name__}, not bytes")
    if len(data) > MAX_BLOCK_BYTES:
        raise BlockTooLarge(f"block is {len(data)} bytes, limit {MAX_BLOCK_BYTES}")
    value = codec.decode(data, max_size=MAX_BLOCK_BYTES, what="block")
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[2], list)):
        raise DecodeError("block must be a 3-element array [header, signature, records]")
    header = BlockHeader.from_fields(value[0])
    records = value[2]
    if len(records) > MAX_RECORDS_PER_BLOCK:
        raise BlockTooLarge(f"block holds {len(records)} records, limit {MAX_RECORDS_PER_BLOCK}")
    if not all(isinstance(r, bytes) for r in records):
        raise DecodeError("block records must be byte strings")
    return Block(header, _signature(value[1]), tuple(records))


def seal_block(identity: Identity, height: int, prev_hash: bytes, timestamp_ms: int,
               records: list[bytes]) -> Block:
    """Build and sign the next block of `identity`'s chain over already-encoded records."""
    if len(records) > MAX_RECORDS_PER_BLOCK:
        raise BlockTooLarge(f"{len(records)} records, limit {MAX_RECORDS_PER_BLOCK}")
    root = merkle_root([record_hash(r) for r in records])
    header = BlockHeader(FORMAT_VERSION, identity.public_key, height, prev_hash, timestamp_ms,
                         len(records), root)
    block = Block(header, identity.sign(signing_bytes(header.hash)), tuple(records))
    return block

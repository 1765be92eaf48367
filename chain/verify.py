"""Pure verification: blocks, chains, fork proofs and inclusion proofs. No I/O, no clock.

Everything here takes bytes or decoded values and either returns or raises a precise
`LedgerError` leaf, so the store, the sync protocol, the shell and the offline CLI all share
one definition of "valid".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from node.identity import verify_signature

from . import codec
from .block import (FORMAT_VERSION, GENESIS_PREV, MAX_HEADER_BYTES, Block, BlockHeader, SignedHeader,
                    decode_block, signing_bytes)
from .errors import (AuthorMismatch, BadHash, BadMerkleRoot, BadProof, BrokenChain, DecodeError, HeightGap,
                     InvalidSignature, LedgerError, TimestampOutOfRange, UnsupportedVersion)
from .merkle import merkle_path, merkle_root, root_from_path
from .records import MAX_RECORD_BYTES, Record, decode_record, record_hash

MAX_FUTURE_MS = 5 * 60 * 1000
FORK_PROOF_TAG = "quantian/fork-proof/v1"
INCLUSION_PROOF_TAG = "quantian/inclusion-proof/v1"
MAX_PROOF_BYTES = MAX_RECORD_BYTES + 4096


def signature_ok(header: BlockHeader, signature: bytes) -> bool:
    return verify_signature(header.author, signing_bytes(header.hash), signature)


def verify_signed_header(signed: SignedHeader) -> None:
    if signed.header.version != FORMAT_VERSION:
        raise UnsupportedVersion(f"format version {signed.header.version}", height=signed.header.height)
    if not signature_ok(signed.header, signed.signature):
        raise InvalidSignature("signature does not verify against the author key",
                               author=signed.header.author_id, height=signed.header.height)


def verify_block(block: Block, prev: BlockHeader | None, *, author: str | None = None,
                 now_ms: int | None = None, claimed_hash: bytes | None = None) -> None:
    """Check one block against its predecessor (None for height 0). Raises the first failure.

    `author` is the peer id the block is claimed to belong to; `now_ms` enables the
    not-too-far-in-the-future check; `claimed_hash` is a hash someone stored or announced.
    """
    h = block.header
    position = 0 if prev is None else prev.height + 1  # where the block claims to go, if it fits
    where = {"author": author or h.author_id, "height": position}
    if h.version != FORMAT_VERSION:
        raise UnsupportedVersion(f"format version {h.version}, expected {FORMAT_VERSION}", **where)
    if author is not None and h.author_id != author:
        raise AuthorMismatch(f"block is by {h.author_id}", **where)
    if claimed_hash is not None and claimed_hash != h.hash:
        raise BadHash(f"claimed hash {claimed_hash.hex()[:16]} != computed {h.hash.hex()[:16]}", **where)
    _check_link(h, prev, where)
    if now_ms is not None and h.timestamp_ms > now_ms + MAX_FUTURE_MS:
        raise TimestampOutOfRange(f"timestamp {h.timestamp_ms} is more than 5 min ahead of {now_ms}", **where)
    if h.timestamp_ms < 0:
        raise TimestampOutOfRange("negative timestamp", **where)
    _check_records(block, where)
    if not signature_ok(h, block.signature):
        raise InvalidSignature("signature does not verify against the author key", **where)


def _check_link(h: BlockHeader, prev: BlockHeader | None, where: dict) -> None:
    if prev is None:
        if h.height != 0:
            raise HeightGap(f"chain starts at height {h.height}, expected 0", **where)
        if h.prev_hash != GENESIS_PREV:
            raise BrokenChain("genesis block has a non-zero previous hash", **where)
        return
    if prev.author != h.author:
        raise AuthorMismatch("block and its predecessor have different authors", **where)
    if h.height != prev.height + 1:
        raise HeightGap(f"height {h.height} does not follow {prev.height}", **where)
    if h.prev_hash != prev.hash:
        raise BrokenChain(f"previous hash {h.prev_hash.hex()[:16]} != hash of block {prev.height} "
                          f"{prev.hash.hex()[:16]}", **where)


def _check_records(block: Block, where: dict) -> None:
    if block.header.record_count != len(block.records):
        raise BadMerkleRoot(f"header says {block.header.record_count} records, block holds {len(block.records)}",
                            **where)
    for index, data in enumerate(block.records):
        try:
            decode_record(data)
        except DecodeError as exc:
            raise DecodeError(f"record {index}: {exc.reason}", **where) from None
    if merkle_root(block.record_hashes) != block.header.merkle_root:
        raise BadMerkleRoot("Merkle root does not match the records", **where)


def verify_chain(encoded_blocks: Iterable[bytes], *, author: str, prev: BlockHeader | None = None,
                 now_ms: int | None = None) -> BlockHeader | None:
    """Verify consecutive encoded blocks of one chain; returns the last header (or `prev`)."""
    for data in encoded_blocks:
        position = 0 if prev is None else prev.height + 1
        try:
            block = decode_block(data)
            verify_block(block, prev, author=author, now_ms=now_ms)
        except LedgerError as exc:
            raise exc.located(author=author, height=position) from None
        prev = block.header
    return prev


# ---- fork proofs -------------------------------------------------------------------------

@dataclass(frozen=True)
class ForkProof:
    author: str
    height: int
    first: SignedHeader
    second: SignedHeader


def encode_fork_proof(a: SignedHeader, b: SignedHeader) -> bytes:
    """Canonical fork proof: the two signed headers in byte order, so each fork has one proof."""
    first, second = sorted([[a.header.fields(), a.signature], [b.header.fields(), b.signature]],
                           key=codec.encode)
    return codec.encode([FORK_PROOF_TAG, first, second])


def verify_fork_proof(data: bytes) -> ForkProof:
    """Check offline that one key signed two different blocks at one height."""
    try:
        value = codec.decode(data, max_size=2 * MAX_HEADER_BYTES + 64, what="fork proof")
        if not (isinstance(value, list) and len(value) == 3 and value[0] == FORK_PROOF_TAG):
            raise DecodeError("not a fork proof")
        a, b = (_signed_header(v) for v in value[1:])
    except DecodeError as exc:
        raise BadProof(f"malformed fork proof: {exc.reason}") from None
    where = {"author": a.header.author_id, "height": a.header.height}
    if a.header.author != b.header.author or a.header.height != b.header.height:
        raise BadProof("headers are by different authors or at different heights", **where)
    if a.header.hash == b.header.hash:
        raise BadProof("both headers are the same block", **where)
    for signed in (a, b):
        if not signature_ok(signed.header, signed.signature):
            raise BadProof("a header signature does not verify", **where)
    return ForkProof(a.header.author_id, a.header.height, a, b)


def _signed_header(value: object) -> SignedHeader:
    if not (isinstance(value, list) and len(value) == 2):
        raise DecodeError("signed header must be [header, signature]")
    sig = value[1]
    if not (isinstance(sig, bytes) and len(sig) == 64):
        raise DecodeError("signature must be 64 bytes")
    return SignedHeader(BlockHeader.from_fields(value[0]), sig)


# ---- inclusion proofs --------------------------------------------------------------------

@dataclass(frozen=True)
class InclusionProof:
    header: BlockHeader
    signature: bytes
    index: int
    record: Record
    record_hash: bytes


def make_inclusion_proof(block: Block, index: int) -> bytes:
    """Proof that record `index` is in `block`: the record, its Merkle path, the signed header."""
    path = merkle_path(block.record_hashes, index)
    return codec.encode([INCLUSION_PROOF_TAG, block.header.fields(), block.signature, index,
                         block.records[index], path])


def verify_inclusion_proof(data: bytes) -> InclusionProof:
    """Check offline in O(log n): signed header, then the record's path to its Merkle root."""
    try:
        value = codec.decode(data, max_size=MAX_PROOF_BYTES, what="inclusion proof")
        if not (isinstance(value, list) and len(value) == 6 and value[0] == INCLUSION_PROOF_TAG):
            raise DecodeError("not an inclusion proof")
        _, fields, sig, index, rec, path = value
        signed = _signed_header([fields, sig])
        if type(index) is not int or not isinstance(rec, bytes):
            raise DecodeError("index or record has the wrong type")
        if not (isinstance(path, list) and all(isinstance(p, bytes) and len(p) == 32 for p in path)):
            raise DecodeError("path must be a list of 32-byte hashes")
        record = decode_record(rec)
    except DecodeError as exc:
        raise BadProof(f"malformed inclusion proof: {exc.reason}") from None
    header = signed.header
    where = {"author": header.author_id, "height": header.height}
    if not signature_ok(header, sig):
        raise InvalidSignature("block header signature does not verify", **where)
    rhash = record_hash(rec)
    if root_from_path(rhash, index, header.record_count, path) != header.merkle_root:
        raise BadProof(f"record {index} does not lead to the block's Merkle root", **where)
    return InclusionProof(header, sig, index, record, rhash)

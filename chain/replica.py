"""The storage side of replication: accept other nodes' blocks only after verifying them,
and turn two signed blocks at one height into a fork proof. Blocking; run in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from .block import Block, BlockHeader, SignedHeader, decode_block, decode_signed_header
from .errors import AuthorMismatch, ForkDetected, InvalidSignature, LedgerError
from .store import Store
from .verify import encode_fork_proof, signature_ok, verify_block, verify_signed_header

MAX_INGEST_BLOCKS = 1024


@dataclass(frozen=True)
class IngestResult:
    """`added` blocks were stored; `error` is the first invalid block's failure (None if all fine)."""

    author: str
    added: int
    height: int | None  # head height after ingest
    error: LedgerError | None = None
    records_added: int = 0

    @property
    def fork_proof(self) -> bytes | None:
        return self.error.proof if isinstance(self.error, ForkDetected) else None

    def to_dict(self) -> dict:
        return {"author": self.author, "added": self.added, "height": self.height,
                "error": None if self.error is None else self.error.to_dict()}


def stored_block(store: Store, author: str, height: int) -> Block | None:
    data = store.block_bytes(author, height)
    return None if data is None else decode_block(data)


def head_header(store: Store, author: str) -> BlockHeader | None:
    head = store.head(author)
    if head is None:
        return None
    block = stored_block(store, author, head.height)
    return None if block is None else block.header


def ingest(store: Store, author: str, encoded_blocks: list[bytes], *, now_ms: int) -> IngestResult:
    """Verify each block in order and store the valid contiguous prefix in one transaction.

    Blocks already held are skipped; a different validly signed block at a held height is a
    fork: the proof is stored and returned in the `ForkDetected` error. Blocks of this node's
    own chain are accepted too when they verify (they carry its own signature): that is how a
    node that lost the tail of its store gets it back from peers instead of forking itself.
    """
    prev = head_header(store, author)
    accepted: list[tuple[Block, bytes]] = []
    error: LedgerError | None = None
    for data in encoded_blocks[:MAX_INGEST_BLOCKS]:
        expected = 0 if prev is None else prev.height + 1
        try:
            block = decode_block(data)
            if block.header.author_id != author:
                raise AuthorMismatch(f"block is signed as {block.header.author_id}")
            if block.height < expected:
                _check_known(store, author, block, accepted)
                continue
            verify_block(block, prev, author=author, now_ms=now_ms)
        except ForkDetected as exc:
            error = exc
            break
        except LedgerError as exc:
            error = exc.located(author=author, height=expected)
            break
        accepted.append((block, data))
        prev = block.header
    if accepted:
        store.append_blocks(author, accepted)
    return IngestResult(author, len(accepted), None if prev is None else prev.height, error,
                        sum(len(b.records) for b, _ in accepted))


def _check_known(store: Store, author: str, block: Block, accepted: list[tuple[Block, bytes]]) -> None:
    """A block at a height we hold: identical is fine, a signed different one is a fork."""
    held = next((b for b, _ in accepted if b.height == block.height), None) or \
        stored_block(store, author, block.height)
    if held is None or held.hash == block.hash:
        return
    if not signature_ok(block.header, block.signature):
        raise InvalidSignature("block conflicts with a held block and its signature does not verify",
                               height=block.height)
    raise _fork(store, held.signed_header, block.signed_header)


def _fork(store: Store, held: SignedHeader, other: SignedHeader) -> ForkDetected:
    proof = encode_fork_proof(held, other)
    author, height = held.header.author_id, held.header.height
    store.add_fork_proof(author, height, proof)
    return ForkDetected("author signed two different blocks at one height", author=author, height=height,
                        proof=proof)


def check_header(store: Store, signed_header: bytes) -> ForkDetected | None:
    """Check a signed header announced by a peer against the chain we hold.

    Returns the (stored) fork when it conflicts with a held block, None otherwise; raises when
    the header itself is malformed or not validly signed.
    """
    signed = decode_signed_header(signed_header)
    verify_signed_header(signed)
    author = signed.header.author_id
    held = stored_block(store, author, signed.header.height)
    if held is None or held.hash == signed.header.hash:
        return None
    return _fork(store, held.signed_header, signed)

"""The ledger service: batches this node's records into signed blocks, replicates other chains
through verification, and re-verifies everything on a schedule.

Signing and fsync cost is paid per block: appends wait in a bounded queue until a block is
sealed (every `max_batch_delay` seconds or `max_batch_records` records), then all return once
that block is durable. SQLite work runs in worker threads so the trio loop never stalls.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from node.identity import Identity

from . import replica
from .audit import ChainReport, open_verified, repair, verify_store
from .batcher import Batcher
from .block import GENESIS_PREV, MAX_BLOCK_BYTES, MAX_RECORDS_PER_BLOCK, BlockHeader, seal_block
from .errors import LedgerClosed, LedgerError
from .records import make_record, record_hash
from .store import STORE_FILE_NAME, Head, Store
from .verify import ForkProof, verify_fork_proof

log = logging.getLogger(__name__)

_BLOCK_OVERHEAD = 1024  # header, signature and CBOR framing, generously


@dataclass(frozen=True)
class LedgerConfig:
    max_batch_records: int = 500
    max_batch_delay: float = 0.2  # seconds from a batch's first record to its seal
    queue_size: int = 8192
    verify_interval: float = 60.0


@dataclass(frozen=True)
class Receipt:
    """Where a durable record lives: enough to find it again and to prove it."""

    author: str
    height: int
    index: int
    record_hash: bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "record_hash": self.record_hash.hex()}


def _now_ms() -> int:
    return int(time.time() * 1000)


class Ledger:
    def __init__(self, data_dir: Path, identity: Identity, config: LedgerConfig = LedgerConfig(),
                 *, clock_ms: Callable[[], int] = _now_ms) -> None:
        self.path = Path(data_dir) / STORE_FILE_NAME
        self.identity = identity
        self.author = identity.peer_id
        self.config = config
        self._clock_ms = clock_ms
        self._store: Store | None = None
        self._batcher = Batcher[Receipt](
            max_items=min(config.max_batch_records, MAX_RECORDS_PER_BLOCK), max_delay=config.max_batch_delay,
            max_bytes=MAX_BLOCK_BYTES - _BLOCK_OVERHEAD, queue_size=config.queue_size)
        self._write_lock = trio.Lock()  # own seals, ingests and repairs never interleave
        self._own_head: BlockHeader | None = None
        self._height_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._counts = {"blocks": 0, "records": 0}
        self._authors: set[str] = set()
        self._failures: list[dict] = []
        self._reported: set[tuple] = set()
        self._flagged: set[str] = set()
        self._last_verified_ms: int | None = None
        self._last_pass_ok = True
        self._passes = 0
        self._pass_done = trio.Event()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open and verify the store, then batch appends and re-verify until cancelled."""
        # Stored blocks are not re-checked against the clock: that check guards ingest, and a
        # clock stepped backwards must not cut this node's own chain.
        store, errors = await trio.to_thread.run_sync(open_verified, self.path)
        self._store = store
        try:
            await trio.to_thread.run_sync(self._load_state)
            self._last_verified_ms = self._clock_ms()
            self._last_pass_ok = not errors
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for error in errors:
                    self._note_failure(error)
                nursery.start_soon(self._batcher.run, self._seal)
                nursery.start_soon(self._verifier)
                task_status.started()
        finally:
            self._nursery = None
            self._store = None
            store.close()

    def _load_state(self) -> None:
        store = self._require_store()
        self._own_head = replica.head_header(store, self.author)
        self._counts = store.counts()
        self._authors = set(store.authors())
        self._flagged = {author for author, _, _ in store.fork_proofs()}

    def _require_store(self) -> Store:
        if self._store is None:
            raise LedgerClosed("ledger is not running")
        return self._store

    # ---- own chain ---------------------------------------------------------------------------

    @property
    def height(self) -> int | None:
        """Height of this node's own chain head (None before the first block)."""
        return None if self._own_head is None else self._own_head.height

    async def append(self, record_type: str, payload: dict[str, Any], actor: str) -> Receipt:
        """Add one record to this node's chain; returns once its block is durable, else raises."""
        return (await self.append_many([(record_type, payload, actor)]))[0]

    async def append_many(self, items: list[tuple[str, dict[str, Any], str]]) -> list[Receipt]:
        """Validate all records first (nothing is queued if one is bad), then wait for all."""
        self._require_store()
        now = self._clock_ms()
        return await self._batcher.submit([make_record(t, p, a, now)[1] for t, p, a in items])

    async def wait_height(self, height: int) -> None:
        """Return once this node's own chain has reached `height`."""
        while self.height is None or self.height < height:
            await self._height_changed.wait()

    async def _seal(self, records: list[bytes]) -> list[Receipt]:
        try:
            async with self._write_lock:
                return await trio.to_thread.run_sync(self._write_own_block, records)
        except LedgerError as exc:
            log.error("sealing a block of %d records failed: %s", len(records), exc)
            raise
        finally:
            self._height_changed.set()
            self._height_changed = trio.Event()

    def _write_own_block(self, records: list[bytes]) -> list[Receipt]:
        store = self._require_store()
        prev = self._own_head
        height = 0 if prev is None else prev.height + 1
        block = seal_block(self.identity, height, GENESIS_PREV if prev is None else prev.hash,
                           self._clock_ms(), records)
        store.append_blocks(self.author, [(block, block.encode())])
        self._own_head = block.header
        self._counts["blocks"] += 1
        self._counts["records"] += len(records)
        self._authors.add(self.author)
        return [Receipt(self.author, height, i, record_hash(r)) for i, r in enumerate(records)]

    # ---- replication -------------------------------------------------------------------------

    async def heads(self) -> list[Head]:
        return await trio.to_thread.run_sync(self._require_store().heads)

    async def get_blocks(self, author: str, start_height: int, max_count: int, max_bytes: int) -> list[bytes]:
        store = self._require_store()
        return await trio.to_thread.run_sync(store.get_blocks, author, start_height, max_count, max_bytes)

    async def signed_head(self, author: str) -> bytes | None:
        """The encoded signed header of `author`'s head, for announcing heads on gossip."""
        def load() -> bytes | None:
            head = self._require_store().head(author)
            block = head and replica.stored_block(self._require_store(), author, head.height)
            return block.signed_header.encode() if block else None
        return await trio.to_thread.run_sync(load)

    async def ingest_blocks(self, author: str, encoded_blocks: list[bytes]) -> replica.IngestResult:
        """Verify and store another node's blocks; see `replica.ingest`. Never raises for bad blocks:
        the first failure is in `result.error` so the caller can penalise the sender."""
        store = self._require_store()
        async with self._write_lock:
            result = await trio.to_thread.run_sync(
                lambda: replica.ingest(store, author, encoded_blocks, now_ms=self._clock_ms()))
            if author == self.author and result.added:  # our own lost tail, returned by a peer
                self._own_head = await trio.to_thread.run_sync(replica.head_header, store, self.author)
        if result.added:
            self._authors.add(author)
            self._counts["blocks"] += result.added
            self._counts["records"] += result.records_added
        if result.fork_proof is not None:
            self._on_fork(result.error.author, result.error.height, result.fork_proof)
        return result

    async def offer_header(self, signed_header: bytes) -> bytes | None:
        """Check an announced signed header; returns a fork proof if it conflicts with a held block.
        Raises a `LedgerError` when the header is malformed or not validly signed."""
        store = self._require_store()
        fork = await trio.to_thread.run_sync(replica.check_header, store, signed_header)
        if fork is None:
            return None
        self._on_fork(fork.author, fork.height, fork.proof)
        return fork.proof

    async def accept_fork_proof(self, proof: bytes) -> ForkProof:
        """Take a fork proof from another node (e.g. gossip): verify it offline, store it, flag the
        author. Raises `BadProof` when it does not verify."""
        fork = verify_fork_proof(proof)
        store = self._require_store()
        await trio.to_thread.run_sync(store.add_fork_proof, fork.author, fork.height, proof)
        self._on_fork(fork.author, fork.height, proof)
        return fork

    async def fork_proofs(self) -> list[bytes]:
        rows = await trio.to_thread.run_sync(self._require_store().fork_proofs)
        return [proof for _, _, proof in rows]

    def _on_fork(self, author: str, height: int, proof: bytes) -> None:
        """Flag the author and record `fork_detected` once per author, however often it is seen."""
        if author in self._flagged:
            return
        self._flagged.add(author)
        log.warning("fork by %s at height %s", author, height)
        self._record_soon("fork_detected", {"author": author, "height": height, "proof": proof})

    def _record_soon(self, record_type: str, payload: dict) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._record_quietly, record_type, payload)

    async def _record_quietly(self, record_type: str, payload: dict) -> None:
        try:
            await self.append(record_type, payload, self.author)
        except LedgerError as exc:
            log.error("could not record %s: %s", record_type, exc)

    # ---- verification ------------------------------------------------------------------------

    async def report_failure(self, error: LedgerError, *, sender: str | None = None) -> None:
        """Record a `ledger_verification_failed` once per distinct (author, height, code)."""
        self._note_failure(error, sender=sender)

    def _note_failure(self, error: LedgerError, *, sender: str | None = None) -> None:
        key = (error.author, error.height, error.code)
        if key in self._reported:
            return
        self._reported.add(key)
        entry = {**error.to_dict(), "at_ms": self._clock_ms(), "sender": sender}
        self._failures.append(entry)
        del self._failures[:-100]
        log.warning("ledger verification failed: %s", error)
        payload = {"author": error.author or "", "height": -1 if error.height is None else error.height,
                   "code": error.code, "reason": error.reason}
        if sender is not None:
            payload["sender"] = sender
        self._record_soon("ledger_verification_failed", payload)

    async def verify_now(self) -> list[ChainReport]:
        """Re-verify every stored chain from a snapshot; quarantine what fails and report it."""
        reports = await trio.to_thread.run_sync(self._verify_snapshot)
        failed = [r for r in reports if r.error is not None]
        if failed:
            store = self._require_store()
            async with self._write_lock:
                await trio.to_thread.run_sync(repair, store, failed)
                await trio.to_thread.run_sync(self._load_state)
            for report in failed:
                self._note_failure(report.error)
        self._last_verified_ms = self._clock_ms()
        self._last_pass_ok = not failed
        self._passes += 1
        self._pass_done.set()
        self._pass_done = trio.Event()
        return reports

    async def wait_verification_pass(self) -> None:
        """Return after the next full re-verification (scheduled or `verify_now`) completes."""
        await self._pass_done.wait()

    def _verify_snapshot(self) -> list[ChainReport]:
        reader = Store.open(self.path, readonly=True)
        try:
            with reader.snapshot():
                return verify_store(reader)
        finally:
            reader.close()

    async def _verifier(self) -> None:
        interval = self.config.verify_interval
        if not math.isfinite(interval) or interval <= 0:
            return
        while True:
            await trio.sleep(interval)  # elapsed time is the behaviour here
            try:
                await self.verify_now()
            except LedgerError as exc:
                self._note_failure(exc)

    def status(self) -> dict:
        """JSON-able summary for the control channel and the shell."""
        head = self._own_head
        return {
            "author": self.author,
            "height": None if head is None else head.height,
            "head_hash": None if head is None else head.hash.hex(),
            "running": self._store is not None,
            "verified": self._last_pass_ok,
            "last_verified_ms": self._last_verified_ms,
            "verification_passes": self._passes,
            "failures": list(self._failures),
            "forks": sorted(self._flagged),
            "counts": {**self._counts, "chains": len(self._authors)},
            "queued": self._batcher.queued,
        }

    async def query(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a `chain.queries` function against the live store in a worker thread."""
        store = self._require_store()
        return await trio.to_thread.run_sync(lambda: fn(store, *args, **kwargs))

"""Ledger benchmark: prints figures, asserts nothing.

    .venv/bin/python bench/ledger.py [--blocks 2000] [--records-per-block 10] [--appends 20000] [--repeat 3]

Measures: appends/s through the batching service (records durable on return); blocks/s
verified and stored while ingesting another node's chain; full re-verification time of a store
of --blocks blocks; bytes on disk per record. Rates are given per wall second and per CPU
second of this process (the latter is what to compare on a shared, busy machine).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import trio

from chain.audit import verify_store
from chain.block import GENESIS_PREV, seal_block
from chain.ledger import Ledger, LedgerConfig
from chain.store import STORE_FILE_NAME, Store
from chain.testing import BASE_MS, sample_record
from node.identity import Identity

INGEST_CHUNK = 256


class Clock:
    """Wall and CPU time (all threads) since creation: CPU figures stay meaningful on a busy machine."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


async def bench_appends(data_dir: Path, total: int, concurrency: int, config: LedgerConfig) -> dict:
    ident = Identity.generate()
    ledger = Ledger(data_dir, ident, config)
    per_task = total // concurrency
    actor = ident.peer_id

    async def appender(n: int) -> None:
        for i in range(per_task):
            await ledger.append("market_batch_ingested", {"ticks": i, "source": "bench", "task": n}, actor)

    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        clock = Clock()
        async with trio.open_nursery() as tasks:
            for n in range(concurrency):
                tasks.start_soon(appender, n)
        elapsed, cpu = clock.read()
        blocks = ledger.height + 1
        nursery.cancel_scope.cancel()
    records = per_task * concurrency
    return {"appends_per_s": records / elapsed, "appends_per_cpu_s": records / cpu, "blocks": blocks,
            "records_per_block": records / blocks}


def build_encoded_chain(blocks: int, per_block: int) -> tuple[str, list[bytes]]:
    ident = Identity.generate()
    out, prev = [], None
    records = [sample_record(i, ident.peer_id, BASE_MS) for i in range(per_block)]  # content does not matter
    for height in range(blocks):
        block = seal_block(ident, height, GENESIS_PREV if prev is None else prev.hash, BASE_MS + height, records)
        out.append(block.encode())
        prev = block.header
    return ident.peer_id, out


async def bench_ingest(data_dir: Path, author: str, encoded: list[bytes]) -> dict:
    ledger = Ledger(data_dir, Identity.generate(), LedgerConfig(verify_interval=float("inf")))
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        clock = Clock()
        for i in range(0, len(encoded), INGEST_CHUNK):
            result = await ledger.ingest_blocks(author, encoded[i:i + INGEST_CHUNK])
            if result.error is not None:
                raise result.error
        elapsed, cpu = clock.read()
        nursery.cancel_scope.cancel()
    return {"ingest_blocks_per_s": len(encoded) / elapsed, "ingest_blocks_per_cpu_s": len(encoded) / cpu}


def bench_verify(path: Path) -> dict:
    store = Store.open(path, readonly=True)
    try:
        clock = Clock()
        reports = verify_store(store)
        elapsed, cpu = clock.read()
    finally:
        store.close()
    blocks = sum(r.blocks for r in reports)
    assert all(r.error is None for r in reports)
    return {"verify_s": elapsed, "verify_cpu_s": cpu, "verify_blocks_per_s": blocks / elapsed,
            "verify_blocks_per_cpu_s": blocks / cpu}


def disk_bytes(path: Path) -> int:
    Store.open(path).close()  # last close checkpoints the WAL into the main file
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def run_once(args: argparse.Namespace) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = LedgerConfig(max_batch_records=args.batch, max_batch_delay=args.delay, verify_interval=float("inf"))
        out.update(trio.run(bench_appends, Path(tmp) / "a", args.appends, args.concurrency, config))
        a_path = Path(tmp) / "a" / STORE_FILE_NAME
        out["bytes_per_record_appends"] = disk_bytes(a_path) / (args.appends // args.concurrency * args.concurrency)
        clock = Clock()
        author, encoded = build_encoded_chain(args.blocks, args.records_per_block)
        out["build_sign_blocks_per_cpu_s"] = args.blocks / clock.read()[1]
        out.update(trio.run(bench_ingest, Path(tmp) / "b", author, encoded))
        b_path = Path(tmp) / "b" / STORE_FILE_NAME
        out["bytes_per_record_ingest"] = disk_bytes(b_path) / (args.blocks * args.records_per_block)
        out.update(bench_verify(b_path))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=2000, help="blocks in the ingested/verified chain (try 100000)")
    parser.add_argument("--records-per-block", type=int, default=10)
    parser.add_argument("--appends", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=1000, help="concurrent appending tasks")
    parser.add_argument("--batch", type=int, default=500, help="max records per block")
    parser.add_argument("--delay", type=float, default=0.2, help="max seconds before a batch is sealed")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    runs = []
    for i in range(args.repeat):
        runs.append(run_once(args))
        print(f"run {i + 1}: " + "  ".join(f"{k}={v:,.1f}" for k, v in runs[-1].items()), flush=True)
    print(f"median of {args.repeat} (blocks={args.blocks}, records/block={args.records_per_block}, "
          f"appends={args.appends}, concurrency={args.concurrency}):")
    for key in runs[0]:
        print(f"  {key:28} {statistics.median(r[key] for r in runs):>14,.1f}")


if __name__ == "__main__":
    main()

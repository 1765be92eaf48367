"""Crash-test helper process: appends to a ledger flat out and prints every acknowledgement.

Usage: python tests/chain_writer.py DATA_DIR SEED_HEX

It pays the import cost once: for each `go` line on stdin it forks a writer child and prints
`pid PID`; the child opens the ledger, prints `ready HEIGHT` (-1 for an empty chain) and then
`ack HEIGHT INDEX` as soon as each append has returned (the record is durable). The test
SIGKILLs the child; this process reaps it and prints `dead PID`. No libp2p is imported.
"""

import math
import os
import sys
from pathlib import Path

import trio

from chain.ledger import Ledger, LedgerConfig
from node.identity import Identity

WORKERS = 8
CONFIG = LedgerConfig(max_batch_records=20, max_batch_delay=0.002, verify_interval=math.inf)


def say(line: str) -> None:
    """One write(2) per line: a line is never split, even when the child dies right after."""
    os.write(1, (line + "\n").encode())


async def appender(ledger: Ledger, worker: int) -> None:
    n = 0
    while True:
        receipt = await ledger.append("market_batch_ingested", {"ticks": n, "worker": worker}, ledger.author)
        say(f"ack {receipt.height} {receipt.index}")
        n += 1


async def write(data_dir: Path, identity: Identity) -> None:
    ledger = Ledger(data_dir, identity, CONFIG)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        say(f"ready {-1 if ledger.height is None else ledger.height}")
        for worker in range(WORKERS):
            nursery.start_soon(appender, ledger, worker)


def serve(data_dir: Path, identity: Identity) -> None:
    for _ in sys.stdin:
        release_r, release_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(release_w)
            try:
                os.read(release_r, 1)  # start only after the parent has announced our pid
                trio.run(write, data_dir, identity)
            finally:
                os._exit(1)  # never fall back into the parent's loop
        os.close(release_r)
        say(f"pid {pid}")
        try:
            os.write(release_w, b"x")
        except BrokenPipeError:  # the test killed the child before it was released
            pass
        os.close(release_w)
        os.waitpid(pid, 0)
        say(f"dead {pid}")


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Identity(bytes.fromhex(sys.argv[2])))

"""Crash safety: SIGKILL a writer at random moments; every acknowledged record must survive and
the chain must continue at the right height."""

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from chain.audit import open_verified
from node.identity import Identity

WRITER = Path(__file__).with_name("chain_writer.py")
KILLS = 200  # issue 8: 200 kill -9s at random points of appends (each costs milliseconds)
TIME_BUDGET = 150.0  # seconds: a bound on a starved machine, not expected to be reached
LINE_TIMEOUT = 20.0


class Lines:
    """Line reader over a pipe with a timeout, so a hung writer fails the test instead of hanging it."""

    def __init__(self, proc: subprocess.Popen, stderr) -> None:
        self.fd = proc.stdout.fileno()
        self.stderr = stderr
        self.buf = b""

    def _writer_stderr(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-3000:]

    def next(self) -> str:
        deadline = time.monotonic() + LINE_TIMEOUT
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"writer went silent: {self._writer_stderr()}"
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 65536)
                assert chunk, f"writer exited: {self._writer_stderr()}"
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def test_sigkill_at_random_moments_loses_no_acknowledged_record(tmp_path):
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    identity = Identity.generate()
    path = tmp_path / "ledger.sqlite"
    acked: set[tuple[int, int]] = set()
    head = -1
    started = time.monotonic()
    stderr_file = open(tmp_path / "writer.stderr", "w+")
    writer = subprocess.Popen([sys.executable, str(WRITER), str(tmp_path), identity.seed.hex()],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_file,
                              cwd=WRITER.parent.parent)
    lines = Lines(writer, stderr_file)
    kills = 0
    try:
        while kills < KILLS and time.monotonic() - started < TIME_BUDGET:
            writer.stdin.write(b"go\n")
            writer.stdin.flush()
            label, pid = lines.next().split()
            assert label == "pid"
            wanted = rng.choice([0, 1, 2, rng.randrange(3, 80)])  # 0: die while opening the store
            if wanted:
                assert lines.next() == f"ready {head}", "the chain must continue where it stopped"
                first = None
                for _ in range(wanted):
                    _, height, index = lines.next().split()
                    acked.add((int(height), int(index)))
                    first = int(height) if first is None else first
                assert first == head + 1
            os.kill(int(pid), signal.SIGKILL)
            while (line := lines.next()) != f"dead {pid}":  # acks printed before death count too
                if line.startswith("ack"):
                    _, height, index = line.split()
                    acked.add((int(height), int(index)))
            kills += 1
            store, errors = open_verified(path)
            try:
                assert errors == []
                h = store.head(identity.peer_id)
                head = -1 if h is None else h.height
                held = {(row.height, row.index) for row in store.find(author=identity.peer_id, limit=10**9)}
                assert acked <= held, f"lost acknowledged records {sorted(acked - held)[:5]}"
            finally:
                store.close()
    finally:
        writer.kill()
        writer.wait()
        stderr_file.close()
    print(f"{kills} kills, {len(acked)} acknowledged records, head {head}, {time.monotonic() - started:.1f}s")
    assert kills == KILLS, f"only {kills} of {KILLS} kills in {TIME_BUDGET}s"
    assert head >= 0 and acked

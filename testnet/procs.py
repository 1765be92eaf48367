"""Processes the testnet starts: spawn in their own session, identify by pid + start time, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcInfo:
    alive: bool
    stopped: bool = False  # SIGSTOPped (state T): alive, but not answering


def proc_start_time(pid: int) -> int | None:
    """Kernel start time of `pid` (field 22 of /proc/PID/stat), None if unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def probe(pid: int | None, proc_start: int | None = None) -> ProcInfo:
    """Is `pid` still the process we started? Zombies and reused pids count as dead."""
    if not pid:
        return ProcInfo(False)
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ProcInfo(False)
    except OSError:  # no procfs: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return ProcInfo(False)
        except PermissionError:
            pass
        return ProcInfo(True)
    fields = stat[stat.rindex(")") + 2:].split()
    state = fields[0]
    if state in ("Z", "X", "x"):
        return ProcInfo(False)
    if proc_start is not None and int(fields[19]) != proc_start:
        return ProcInfo(False)
    return ProcInfo(True, stopped=state in ("T", "t"))


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our own child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def spawn(argv: list[str], log_path: Path, *, env: dict | None = None, cwd: Path | None = None) -> tuple[int, int | None]:
    """Start `argv` detached in its own session (a terminal Ctrl-C reaches only the testnet CLI),
    stdout+stderr appended to `log_path`. Returns (pid, start time)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} start: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=full_env,
            cwd=cwd,
        )
    # The Popen object is dropped on purpose: liveness is tracked by pid + start time (the
    # process outlives this CLI call), and probe() reaps it if it is still our child.
    proc.returncode = 0  # silence "subprocess still running" ResourceWarning at collection
    return proc.pid, proc_start_time(proc.pid)


def send(pid: int, sig: int) -> None:
    """Signal the process, and its process group when it leads one (what we spawn does)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_dead(procs: list[tuple[int, int | None]], timeout: float) -> list[int]:
    """Wait until none of `procs` is alive; return the pids still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid, start in procs if probe(pid, start).alive]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def stop(procs: list[tuple[int, int | None]], grace: float = 10.0) -> list[int]:
    """SIGTERM (and SIGCONT, so a stopped process can act on it), wait `grace`, SIGKILL leftovers.

    Returns the pids that survived even SIGKILL (should be none)."""
    live = [(pid, start) for pid, start in procs if pid and probe(pid, start).alive]
    for pid, _ in live:
        send(pid, signal.SIGTERM)
        send(pid, signal.SIGCONT)
    left = wait_dead(live, grace)
    if left:
        for pid in left:
            send(pid, signal.SIGKILL)
        left = wait_dead([(p, s) for p, s in live if p in left], 5.0)
    return left


def kill9(pid: int, proc_start: int | None) -> None:
    if probe(pid, proc_start).alive:
        send(pid, signal.SIGKILL)
        wait_dead([(pid, proc_start)], 5.0)


def tail(path: Path, lines: int = 20) -> str:
    try:
        data = Path(path).read_bytes()[-64_000:]
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

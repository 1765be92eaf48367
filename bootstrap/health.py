"""Is a node healthy? Reads the file the node rewrites every heartbeat (`--health-file`).

    python -m bootstrap.health /run/quantian/health.json --max-age 30   # exit 0 healthy, 1 not

Healthy means: the file parses, says "ok": true, and was written less than MAX_AGE seconds ago
(the node keeps no "down" marker: after a crash or a clean stop the file simply goes stale).
Used by the container's HEALTHCHECK and usable from a systemd timer or any supervisor.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

DEFAULT_MAX_AGE_S = 30.0


def check(path: Path | str, max_age_s: float = DEFAULT_MAX_AGE_S, *, now: float | None = None) -> tuple[bool, str]:
    """(healthy, one-line reason)."""
    now = time.time() if now is None else now
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return False, f"{path}: missing (node not started, or not ready yet)"
    except (OSError, ValueError) as exc:
        return False, f"{path}: unreadable: {exc}"
    if not isinstance(data, dict) or not isinstance(data.get("ts"), (int, float)):
        return False, f"{path}: no timestamp"
    age = now - float(data["ts"])
    if data.get("ok") is not True:
        return False, f"{path}: node reports not ok"
    if age > max_age_s:
        return False, f"{path}: stale, last written {age:.0f} s ago (limit {max_age_s:.0f} s)"
    return True, f"ok: peer {data.get('peer_id', '?')}, {data.get('peers_online', '?')} peers online, written {age:.1f} s ago"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bootstrap.health", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default="/run/quantian/health.json")
    parser.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE_S, help="seconds (default 30; > 3 heartbeats)")
    args = parser.parse_args(argv)
    healthy, reason = check(args.path, args.max_age)
    print(reason, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())

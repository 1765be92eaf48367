"""Loopback ports for the testnet's listeners, chosen below the kernel's ephemeral range.

A port is picked, released, and bound by a node seconds later (py-libp2p takes ~3 s to import).
A port from the ephemeral range (bind to port 0) can meanwhile become the local end of some
outgoing connection (a node dialling a bootstrap, an MQTT client): the node then fails with
"address in use". Ports below the ephemeral range are only ever taken by explicit binds.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10_000  # clear of well-known and commonly configured service ports
_DEFAULT_EPHEMERAL_LOW = 32_768  # Linux default when the range cannot be read


def listen_range(range_file: Path = PORT_RANGE_FILE) -> range:
    """Ports from LOWEST_PORT up to just below the ephemeral range (empty if it starts lower)."""
    try:
        low = int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = _DEFAULT_EPHEMERAL_LOW
    return range(LOWEST_PORT, low)


def free_ports(count: int, host: str = "127.0.0.1", *, candidates: range | None = None) -> list[int]:
    """`count` distinct ports on `host` free right now, outside the ephemeral range when it
    leaves room (random picks, so concurrent testnets rarely try the same one); else the OS's."""
    pool = listen_range() if candidates is None else candidates
    socks: list[socket.socket] = []
    try:
        tries = 0
        while len(socks) < count and len(pool) >= 1_000 and tries < 50 * count:
            tries += 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((host, random.choice(pool)))
            except OSError:  # taken (or its port already held by us): pick again
                sock.close()
                continue
            socks.append(sock)
        while len(socks) < count:  # no room below the ephemeral range: let the OS choose
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]

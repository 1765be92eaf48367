"""`quantian-node start` fails with one clear line, not a traceback, when it cannot listen."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from node.membership import create_authority, install_credentials


def test_listen_port_in_use_is_a_clear_error(tmp_path):
    authority = create_authority(tmp_path / "authority")
    install_credentials(tmp_path / "n1", authority, ["risk"], 3600)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "quantian-node"), "start", "--role", "risk", "--data-dir",
             str(tmp_path / "n1"), "--listen", f"/ip4/127.0.0.1/tcp/{port}"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert f"could not listen on /ip4/127.0.0.1/tcp/{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "n1" / "node.json").exists()

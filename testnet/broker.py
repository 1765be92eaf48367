"""Start a local MQTT broker process for the testnet and the tests.

Mosquitto when it is on PATH (``kind="auto"``), else the pure-Python amqtt broker (MQTT 3.1.1
only) in its own subprocess. Both listen on one address (127.0.0.1 unless told) and allow anonymous clients unless
``users`` are given (Mosquitto). The Mosquitto config lifts the per-client in-flight limit and
raises the per-client queue (default 1,000, beyond which QoS 1 messages are dropped; see
MQTT-NOTES.md) to ``max_queued`` messages, and keeps sessions on disk, so ``restart()`` preserves
persistent sessions (but Mosquitto 2.0.11 does not restore *shared* subscriptions). Readiness is
an MQTT CONNECT answered by a CONNACK, within a bounded time.

amqtt 0.12.1 keeps no messages for anonymous persistent sessions and does not redeliver unacked
ones on reconnect: with the embedded broker a bridge restart can lose ticks. Use Mosquitto when
that matters.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from testnet.ports import free_port

BrokerKind = Literal["auto", "mosquitto", "embedded"]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
LOG_TAIL_CHARS = 2000
MAX_QUEUED = 1_000_000  # per client: minutes of a 5,000 ticks/s stream


class BrokerError(Exception):
    """A broker could not be started, reached or stopped."""

    code = "broker_error"


class BrokerStartError(BrokerError):
    code = "broker_start_failed"


class BrokerNotFound(BrokerError):
    code = "broker_not_found"


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate chain and key for a TLS listener; clients verify against ``ca_file``."""

    certfile: Path
    keyfile: Path
    ca_file: Path


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


_CONNECT_311 = bytes([0x10, 20, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 10, 0, 8]) + b"qt-probe"


def probe_mqtt(host: str, port: int, *, tls: bool = False, timeout: float = 2.0) -> bool:
    """True when ``host:port`` answers an MQTT 3.1.1 CONNECT with a CONNACK (any return code)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock: socket.socket = raw
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                sock = ctx.wrap_socket(raw, server_hostname=host)
            sock.sendall(_CONNECT_311)
            head = sock.recv(4)
            if len(head) >= 1 and head[0] == 0x20:
                sock.sendall(b"\xe0\x00")
                return True
            return False
    except OSError:
        return False


@dataclass
class Broker:
    kind: str
    host: str
    port: int
    workdir: Path
    config_path: Path
    log_path: Path
    tls: TlsFiles | None = None
    start_timeout: float = START_TIMEOUT_S
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def supports_mqtt5(self) -> bool:
        return self.kind == "mosquitto"

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> Broker:
        if self.running:
            return self
        if self.kind == "mosquitto":
            argv = [mosquitto_path() or "mosquitto", "-c", str(self.config_path)]
        else:
            argv = _amqtt_argv(self.config_path)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir, start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if probe_mqtt(self.host, self.port, tls=self.tls is not None, timeout=1.0):
                return self
            time.sleep(0.05)  # polling a child process for readiness: no event to wait on
        code = self._proc.poll()
        self.stop()
        state = f"exited with {code}" if code is not None else f"no CONNACK within {self.start_timeout:.0f} s"
        raise BrokerStartError(
            f"{self.kind} broker on {self.host}:{self.port} {state}; log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        if self._proc is not None:
            stop_broker_pid(self._proc.pid, timeout=timeout, proc=self._proc)
            self._proc = None

    def restart(self) -> Broker:
        """Stop and start again on the same port (Mosquitto keeps sessions across this)."""
        self.stop()
        return self.start()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_broker_pid(pid: int, *, timeout: float = STOP_TIMEOUT_S, proc: subprocess.Popen | None = None) -> bool:
    """SIGTERM a broker process (Mosquitto saves its persistence file), SIGKILL after ``timeout``.
    True when the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            try:
                proc.wait(timeout=max(0.01, deadline - time.monotonic()))
                return True
            except subprocess.TimeoutExpired:
                break
        if not _alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    if proc is not None:
        proc.wait(timeout=timeout)
    return True


def _alive(pid: int) -> bool:
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _amqtt_argv(config: Path) -> list[str]:
    script = Path(sys.executable).parent / "amqtt"
    if script.exists():
        return [str(script), "-c", str(config)]
    return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(config)]


def _mosquitto_config(
    port: int, workdir: Path, tls: TlsFiles | None, password_file: Path | None, max_queued: int,
    host: str = "127.0.0.1",
) -> str:
    lines = [
        f"listener {port} {host}",
        "allow_anonymous " + ("false" if password_file else "true"),
        "max_inflight_messages 0",  # the bridge bounds it with ReceiveMaximum
        f"max_queued_messages {max_queued}",
        "max_queued_bytes 0",
        "set_tcp_nodelay true",
        "persistence true",
        f"persistence_location {workdir}/",
        "persistence_file mosquitto.db",
        "autosave_interval 0",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # else Mosquitto drops to user 'mosquitto' and cannot write here
    if password_file:
        lines.append(f"password_file {password_file}")
    if tls:
        lines += [f"certfile {tls.certfile}", f"keyfile {tls.keyfile}", f"cafile {tls.ca_file}"]
    return "\n".join(lines) + "\n"


def _amqtt_config(port: int, host: str = "127.0.0.1") -> str:
    return (
        "listeners:\n"
        "  default:\n"
        "    type: tcp\n"
        f"    bind: {host}:{port}\n"
        "plugins:\n"
        "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n"
    )


def _write_password_file(path: Path, users: dict[str, str]) -> None:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path.write_text("")
    for name, password in users.items():
        subprocess.run([tool, "-b", str(path), name, password], check=True, capture_output=True, timeout=10)
    path.chmod(0o600)


def start_broker(
    workdir: Path,
    *,
    kind: BrokerKind = "auto",
    port: int | None = None,
    tls: TlsFiles | None = None,
    users: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT_S,
    max_queued: int = MAX_QUEUED,
    host: str = "127.0.0.1",
) -> Broker:
    """Start a broker whose files (config, log, persistence) live in ``workdir``; return it ready.

    ``tls`` and ``users`` (a password file) need Mosquitto. ``max_queued`` bounds the QoS 1
    messages Mosquitto holds per client (an absent bridge's backlog; 0 = unlimited). ``host`` is the
    one address it listens on (a test network's host-link address; loopback by default). Raises BrokerNotFound when Mosquitto
    is asked for and missing, BrokerStartError (with the log tail) when it does not come up.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "auto":
        kind = "mosquitto" if mosquitto_path() else "embedded"
    if kind == "mosquitto" and not mosquitto_path():
        raise BrokerNotFound("mosquitto is not installed (apt-get install -y mosquitto)")
    if kind == "embedded" and (tls or users):
        raise BrokerError("TLS and password files need kind='mosquitto'")
    if kind not in ("mosquitto", "embedded"):
        raise BrokerError(f"unknown broker kind {kind!r}")
    attempts = 1 if port is not None else 3
    last: BrokerStartError | None = None
    for _ in range(attempts):  # a free port can be taken by someone else before the broker binds
        use_port = port if port is not None else free_port()
        if kind == "mosquitto":
            password_file = workdir / "passwd" if users else None
            if password_file and users:
                _write_password_file(password_file, users)
            config_path = workdir / "mosquitto.conf"
            config_path.write_text(_mosquitto_config(use_port, workdir, tls, password_file, max_queued, host))
        else:
            config_path = workdir / "amqtt.yaml"
            config_path.write_text(_amqtt_config(use_port, host))
        broker = Broker(
            kind=kind, host=host, port=use_port, workdir=workdir, config_path=config_path,
            log_path=workdir / f"{kind}.log", tls=tls, start_timeout=timeout,
        )
        try:
            return broker.start()
        except BrokerStartError as exc:
            last = exc
            if "in use" not in str(exc).lower():
                raise
    assert last is not None
    raise last

"""Operator-side client of the control protocol, usable from plain (non-trio) code.

The client runs its own small libp2p host (no pubsub) on a trio loop in a background thread, so
callers such as the testnet or the prompt-toolkit shell never run inside a node's trio loop.
It authenticates with an operator key and certificate and checks the node's certificate too.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from node.admission import Admission
from node.errors import NodeError, NotAuthorised, PeerUnreachable, RemoteError, RequestTimeout, StreamClosed
from node.identity import Identity, IdentityError, load_identity
from node.membership import (
    AUTHORITY_PUB_FILE,
    OPERATOR_CERT_FILE,
    OPERATOR_ROLE,
    Certificate,
    CertificateError,
    parse_authority_public_key,
    read_certificate,
)
from node.metrics import Metrics

ControlError = NodeError
OPERATOR_DIR_NAME = "operator"
USER_OPERATOR_DIR = Path("~/.config/quantian/operator").expanduser()
START_TIMEOUT_S = 60.0

__all__ = ["ControlClient", "ControlError", "OperatorCredentials", "PeerUnreachable", "NotAuthorised",
           "RequestTimeout", "RemoteError", "node_address"]


@dataclass(frozen=True)
class OperatorCredentials:
    identity: Identity
    certificate: Certificate
    authority_key: bytes

    @classmethod
    def from_files(cls, key: Path, cert: Path, authority: str) -> "OperatorCredentials":
        try:
            identity = load_identity(Path(key))
            certificate = read_certificate(Path(cert))
            authority_key = parse_authority_public_key(authority)
        except (IdentityError, CertificateError, OSError) as exc:
            raise NotAuthorised(f"operator credentials unusable: {exc}") from None
        if not certificate.allows(OPERATOR_ROLE):
            raise NotAuthorised(f"{cert} is not an operator certificate (roles: {', '.join(certificate.roles)})")
        if certificate.peer_id != identity.peer_id:
            raise NotAuthorised(f"{cert} was issued to {certificate.peer_id}, not to the key in {key}")
        return cls(identity, certificate, authority_key)

    @classmethod
    def load(cls, directory: Path) -> "OperatorCredentials":
        directory = Path(directory)
        return cls.from_files(directory / "identity.key", directory / OPERATOR_CERT_FILE,
                              str(directory / AUTHORITY_PUB_FILE))

    @classmethod
    def find_for_data_dir(cls, data_dir: Path | None) -> "OperatorCredentials":
        """The testnet's operator folder near a node's data dir, else ~/.config/quantian/operator."""
        candidates = []
        if data_dir is not None:
            here = Path(data_dir).resolve()
            candidates = [p / OPERATOR_DIR_NAME for p in [here, *list(here.parents)[:3]]]
        candidates.append(USER_OPERATOR_DIR)
        for candidate in candidates:
            if (candidate / OPERATOR_CERT_FILE).exists():
                return cls.load(candidate)
        raise NotAuthorised(
            "no operator credentials found (looked in " + ", ".join(str(c) for c in candidates)
            + "); pass --key and --cert, or create them with `quantian-node network admit ... --roles operator`")


def node_address(data_dir: Path) -> str:
    """The first listen multiaddr a running node wrote to DATA_DIR/node.json."""
    ready = Path(data_dir) / "node.json"
    try:
        info = json.loads(ready.read_text())
        return str(info["listen"][0])
    except FileNotFoundError:
        raise PeerUnreachable(f"no node has run in {data_dir} ({ready} missing); is it started?") from None
    except (ValueError, KeyError, IndexError) as exc:
        raise PeerUnreachable(f"{ready} is unreadable: {exc}") from None


class ControlClient:
    """`with ControlClient(creds) as c: c.request(multiaddr, "status")`; one host for many requests."""

    def __init__(self, credentials: OperatorCredentials) -> None:
        self._creds = credentials
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._startup_error: BaseException | None = None
        self._host = None
        self._control = None  # control.Client: reuses one stream per node across requests
        self._admission: Admission | None = None
        self._greeted: set[str] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "ControlClient":
        self._thread = threading.Thread(target=trio.run, args=(self._main,), name="quantian-control", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise PeerUnreachable("control client host did not start within 60 s")
        if self._startup_error is not None:
            raise PeerUnreachable(f"control client host failed to start: {self._startup_error}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None and self._stop is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        if self._thread is not None:
            self._thread.join(15)

    async def _main(self) -> None:
        from node.host import Host  # the libp2p import (~3 s) happens here, off the caller's thread
        from node.protocols import control, hello

        try:
            self._admission = Admission(self._creds.authority_key, Metrics(), handshake_timeout_s=3600)
            self._host = Host(self._creds.identity, enable_pubsub=False)
            self._host.set_stream_handler(hello.PROTOCOL_ID, hello.Handler(self._admission, self._creds.certificate, list))
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            async with self._host.running(["/ip4/127.0.0.1/tcp/0"]):
                self._control = control.Client(self._host)
                self._ready.set()
                try:
                    await self._stop.wait()
                finally:
                    await self._control.aclose()
        except BaseException as exc:  # surfaced to the caller in __enter__
            self._startup_error = exc
            self._ready.set()
            if not isinstance(exc, Exception):
                raise

    # --- requests ----------------------------------------------------------------------------

    def request(self, multiaddr: str, command: str, args: dict[str, Any] | None = None,
                timeout: float = 20.0) -> dict[str, Any]:
        if self._token is None:
            raise RuntimeError("use ControlClient as a context manager")
        return trio.from_thread.run(self._request, multiaddr, command, args, timeout, trio_token=self._token)

    async def _request(self, multiaddr: str, command: str, args: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        from node.protocols import hello

        try:
            with trio.fail_after(timeout):
                peer_id = await self._host.connect(multiaddr, timeout=timeout)
                if peer_id not in self._greeted or not self._host.is_connected(peer_id):
                    try:
                        await hello.exchange(self._host, peer_id, self._creds.certificate, self._admission)
                    except CertificateError as exc:
                        raise NotAuthorised(f"node {peer_id} presented an invalid certificate: {exc}") from None
                    self._greeted.add(peer_id)
                try:
                    return await self._control.call(peer_id, command, args, timeout=timeout)
                except RemoteError as exc:
                    if exc.remote_code == "not_authorised":
                        raise NotAuthorised(f"node {peer_id} refused: {exc}") from None
                    raise
        except trio.TooSlowError:
            raise RequestTimeout(f"{command} on {multiaddr}: no answer within {timeout:.0f} s") from None
        except StreamClosed as exc:
            raise PeerUnreachable(f"{command} on {multiaddr}: the connection closed ({exc})") from None

"""Membership on real libp2p hosts over TCP on 127.0.0.1 (one process, several hosts).

Outsiders (no certificate, expired certificate) are refused and counted; an admitted peer that
claims a role its certificate does not allow, or sends forged / malformed / replayed adverts, has
those adverts dropped with a counted reason and is never listed as capable; the node keeps serving.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import trio
from libp2p.peer.id import ID

from node import host as host_module
from node.config import load_config
from node.errors import NodeError, NotAuthorised, RemoteError
from node.host import Host
from node.identity import Identity
from node.membership import OPERATOR_CERT_FILE, create_authority, install_credentials, issue_certificate
from node.metrics import Metrics
from node.admission import Admission
from node.node import Node
from node.protocols import adverts, control, hello

WAIT_S = 120.0


async def wait_until(predicate, what: str, timeout: float = WAIT_S) -> None:
    """Poll a condition the node exposes (bounded); fails with `what` on timeout."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
        return
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def network_dir(tmp_path: Path):
    authority = create_authority(tmp_path / "authority")
    return tmp_path, authority


def node_config(base: Path, authority: Identity, name: str, roles: list[str], bootstrap=()):
    data_dir = base / name
    install_credentials(data_dir, authority, roles, 3600)
    return load_config({"roles": roles, "data_dir": str(data_dir), "name": name, "heartbeat_s": 1.0,
                        "handshake_timeout_s": 10.0, "bootstrap": list(bootstrap)}, environ={})


async def start_rogue(nursery, identity: Identity, authority_key: bytes, cert, *, pubsub: bool = False) -> Host:
    host = Host(identity, enable_pubsub=pubsub)
    admission = Admission(authority_key, Metrics(), handshake_timeout_s=3600)
    if cert is not None:
        host.set_stream_handler(hello.PROTOCOL_ID, hello.Handler(admission, cert, list))

    async def _run(task_status=trio.TASK_STATUS_IGNORED):
        async with host.running(["/ip4/127.0.0.1/tcp/0"]):
            task_status.started()
            await trio.sleep_forever()

    await nursery.start(_run)
    host.rogue_admission = admission  # type: ignore[attr-defined]
    return host


async def test_outsiders_are_refused_and_counted(network_dir):
    base, authority = network_dir
    node = Node(node_config(base, authority, "boot", ["bootstrap"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        address = node.announce_addrs()[0]

        # 1. No certificate at all: connected, then dropped after the handshake timeout.
        stranger = await start_rogue(nursery, Identity.generate(), authority.public_key, None)
        peer = await stranger.connect(address)
        await wait_until(lambda: node.metrics.get("admission.refused.no_certificate") >= 1, "no-cert refusal")
        await wait_until(lambda: not stranger.is_connected(peer), "stranger disconnected")
        with pytest.raises(Exception):
            await control.call(stranger, peer, "status", timeout=5)

        # 2. An expired certificate: refused with the reason, disconnected, and refused again while banned.
        late = Identity.generate()
        expired = issue_certificate(authority, late.peer_id, ["operator"], 10, now=time.time() - 60)
        late_host = await start_rogue(nursery, late, authority.public_key, expired)
        await late_host.connect(address)
        await wait_until(lambda: node.metrics.get("admission.refused.expired") >= 1, "expired-certificate refusal")
        await wait_until(lambda: not late_host.is_connected(peer), "expired peer disconnected")
        with pytest.raises((NotAuthorised, NodeError)):
            await late_host.connect(address)
            await hello.exchange(late_host, peer, expired, late_host.rogue_admission)

        # 3. A valid member certificate but no operator role: control refuses.
        member = Identity.generate()
        member_cert = issue_certificate(authority, member.peer_id, ["risk"], 3600)
        member_host = await start_rogue(nursery, member, authority.public_key, member_cert)
        await member_host.connect(address)
        await hello.exchange(member_host, peer, member_cert, member_host.rogue_admission)
        with pytest.raises(RemoteError, match="not_authorised"):
            await control.call(member_host, peer, "status", timeout=10)

        assert all(e.peer_id not in (stranger.peer_id, late.peer_id) for e in node.peers.entries())
        nursery.cancel_scope.cancel()


async def test_bad_adverts_are_dropped_and_counted(network_dir):
    base, authority = network_dir
    boot = Node(node_config(base, authority, "boot", ["bootstrap"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(boot.run)
        address = boot.announce_addrs()[0]

        rogue_id = Identity.generate()
        rogue_cert = issue_certificate(authority, rogue_id.peer_id, ["risk"], 3600)
        rogue = await start_rogue(nursery, rogue_id, authority.public_key, rogue_cert, pubsub=True)
        boot_peer = await rogue.connect(address)
        await hello.exchange(rogue, boot_peer, rogue_cert, rogue.rogue_admission)
        await rogue.subscribe(adverts.TOPIC)
        assert rogue.is_connected(boot_peer)

        def advert(roles=("risk",), seq=None, signer=rogue_id):
            body = adverts.Advert(peer_id=rogue_id.peer_id, name="rogue", roles=tuple(roles),
                                  capabilities=("detect_anomalies",) if "anomaly" in roles else ("compute_risk",),
                                  addrs=tuple(rogue.listen_addrs()), version="0", seq=seq or int(time.time() * 1000),
                                  ts=time.time(), heartbeat_s=0.5, load={}, cert=rogue_cert.encode())
            return adverts.encode(body, signer)

        expectations = [
            (advert(roles=("risk", "anomaly")), "adverts.dropped.role_not_allowed"),
            (advert(signer=Identity.generate()), "adverts.dropped.bad_signature"),
            (b"\xa1\x00not-cbor-at-all", "adverts.dropped.bad_cbor"),
        ]
        for data, counter in expectations:
            with trio.move_on_after(WAIT_S):
                while boot.metrics.get(counter) == 0:  # republish until the mesh carries it (gossip is best-effort)
                    await rogue.publish(adverts.TOPIC, data)
                    await trio.sleep(0.3)
            assert boot.metrics.get(counter) >= 1, f"{counter} never counted; counters: {boot.metrics.snapshot()}"

        genuine = advert(seq=10**13)
        await rogue.publish(adverts.TOPIC, genuine)
        await wait_until(lambda: boot.peers.get(rogue_id.peer_id) is not None, "genuine rogue advert accepted")
        with trio.move_on_after(WAIT_S):
            while boot.metrics.get("adverts.dropped.replayed") == 0:
                await rogue.publish(adverts.TOPIC, genuine)
                await trio.sleep(0.3)
        assert boot.metrics.get("adverts.dropped.replayed") >= 1

        assert boot.peers.providers("detect_anomalies") == []
        assert [e.peer_id for e in boot.peers.providers("compute_risk")] == [rogue_id.peer_id]
        assert boot.status()["peer_id"] == boot.peer_id  # still serving
        nursery.cancel_scope.cancel()


async def test_operator_control_round_trip(network_dir):
    """The ControlClient path used by ctl, the testnet and the shell, against a node in this process."""
    base, authority = network_dir
    node = Node(node_config(base, authority, "risk-1", ["risk"]))
    install_credentials(base / "operator", authority, ["operator"], 3600, cert_file=OPERATOR_CERT_FILE)
    from node.control_client import ControlClient, OperatorCredentials

    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        creds = OperatorCredentials.find_for_data_dir(base / "risk-1")

        def query():
            with ControlClient(creds) as client:
                return client.request(node.announce_addrs()[0], "status"), client.request(
                    node.announce_addrs()[0], "caps", {"capability": "compute_risk"})

        status, caps = await trio.to_thread.run_sync(query)
        assert status["peer_id"] == node.peer_id and status["roles"] == ["risk"]
        assert caps == {"capabilities": {"compute_risk": []}}  # only peers are listed, not the node itself
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux-only")
async def test_every_connection_bounds_unacknowledged_data(network_dir):
    """Both ends of a libp2p connection carry TCP_USER_TIMEOUT and keepalive, so a partitioned
    path is dropped (and redialled) instead of waiting for the kernel's next retransmission."""
    a, b = Host(Identity.generate()), Host(Identity.generate())
    async with a.running(["/ip4/127.0.0.1/tcp/0"]), b.running(["/ip4/127.0.0.1/tcp/0"]):
        peer = await b.connect(a.listen_addrs()[0])
        await wait_until(lambda: a.is_connected(b.peer_id), "the listener side to see the connection")
        for host, other in ((b, peer), (a, b.peer_id)):
            conns = host._host.get_network().connections[ID.from_base58(other)]
            for conn in conns if isinstance(conns, list) else [conns]:
                sock = host_module._tcp_socket(conn)
                assert sock is not None, "no TCP socket under the connection (py-libp2p changed its layers?)"
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == int(host_module.TCP_USER_TIMEOUT_S * 1000)
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1

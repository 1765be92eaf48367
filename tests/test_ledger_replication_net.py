"""Ledger replication between real nodes (libp2p over TCP on 127.0.0.1, one process).

Every node appends to its own chain; heads gossip + range pulls make every node hold identical
heads for every author, and each replica verifies. A forged block pushed over the sync protocol
is rejected, recorded and its sender banned.
"""

from __future__ import annotations

import pytest
import trio

from chain.block import Block
from chain.testing import build_chain
from node.identity import Identity
from node.membership import issue_certificate
from node.node import Node
from node.protocols import hello, ledger_sync
from test_node_admission_net import node_config, start_rogue, wait_until, network_dir  # noqa: F401


async def heads_of(node: Node) -> dict[str, tuple[int, bytes]]:
    return {h.author: (h.height, h.hash) for h in await node.ledger.ledger.heads()}


async def test_three_nodes_converge_on_identical_heads(network_dir):
    base, authority = network_dir
    boot = Node(node_config(base, authority, "boot", ["bootstrap"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(boot.run)
        addr = boot.announce_addrs()[0]
        a = Node(node_config(base, authority, "a", ["anomaly"], bootstrap=[addr]))
        r = Node(node_config(base, authority, "r", ["risk"], bootstrap=[addr]))
        await nursery.start(a.run)
        await nursery.start(r.run)
        for i in range(30):
            await a.ledger.record("anomaly_alert_created", {"alert_id": f"a{i}", "symbol": "BTCUSD"}, a.peer_id)
            await r.ledger.record("risk_snapshot_computed", {"var95": 0.01 * i}, r.peer_id)

        async def converged() -> bool:
            views = [await heads_of(n) for n in (boot, a, r)]
            return all(v == views[0] for v in views) and {a.peer_id, r.peer_id} <= set(views[0])

        with trio.move_on_after(240):
            while not await converged():
                await trio.sleep(0.2)
        assert await converged(), [await heads_of(n) for n in (boot, a, r)]
        for n in (boot, a, r):
            reports = await n.ledger.ledger.verify_now()
            assert all(rep.error is None for rep in reports), [rep.to_dict() for rep in reports]
        # the bootstrap audited membership in its own chain
        found = await boot.ledger.ledger.query(lambda store: store.find(record_type="peer_joined", limit=10))
        assert {row.actor for row in found} == {boot.peer_id} and len(found) >= 2
        nursery.cancel_scope.cancel()


async def test_forged_blocks_are_rejected_and_sender_banned(network_dir):
    base, authority = network_dir
    boot = Node(node_config(base, authority, "boot", ["bootstrap"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(boot.run)
        addr = boot.announce_addrs()[0]

        # A member that serves a chain claimed to be by `victim` but signed by someone else.
        rogue_id = Identity.generate()
        rogue_cert = issue_certificate(authority, rogue_id.peer_id, ["risk"], 3600)
        rogue = await start_rogue(nursery, rogue_id, authority.public_key, rogue_cert, pubsub=True)
        victim = Identity.generate()
        genuine = build_chain(victim, 1)[0]
        forged = Block(genuine.header, Identity.generate().sign(b"not the block hash"), genuine.records).encode()

        async def serve(stream):
            await ledger_sync.FrameReader(stream, 4096).read_frame(10)
            await ledger_sync.write_frames(stream, [{"ok": True, "blocks": [forged]}])

        rogue.set_stream_handler(ledger_sync.PROTOCOL_ID, serve)
        peer = await rogue.connect(addr)
        await hello.exchange(rogue, peer, rogue_cert, rogue.rogue_admission)
        await rogue.subscribe(ledger_sync.HEADS_TOPIC)
        announcement = ledger_sync.HeadsAnnouncement(None, ((victim.peer_id, 0, b"\x11" * 32),), ())
        with trio.move_on_after(60):
            while not boot.admission.is_banned(rogue_id.peer_id):
                await rogue.publish(ledger_sync.HEADS_TOPIC, announcement.encode())
                await trio.sleep(0.3)
        assert boot.admission.is_banned(rogue_id.peer_id)
        rejected = {k: v for k, v in boot.metrics.snapshot("ledger_sync.rejected").items()}
        assert rejected, boot.metrics.snapshot()
        await wait_until(lambda: any(f.get("sender") == rogue_id.peer_id for f in boot.ledger.ledger.status()["failures"]),
                         "failure recorded with the sender")
        assert victim.peer_id not in await heads_of(boot)
        found = await boot.ledger.ledger.query(lambda s: s.find(record_type="ledger_verification_failed", limit=5))
        assert found, "the rejection is on the bootstrap's own chain"
        nursery.cancel_scope.cancel()

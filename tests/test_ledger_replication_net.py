"""Ledger replication between real nodes (libp2p over TCP on 127.0.0.1, one process).

Every node appends to its own chain; heads gossip + range pulls make every node hold identical
heads for every author, and each replica verifies. A forged block pushed over the sync protocol
is rejected, recorded and its sender banned; a member that signs two blocks at one height is
flagged with a fork proof that every honest node stores and records.
"""

from __future__ import annotations

import pytest
import trio

from chain.block import Block
from chain.testing import build_chain
from chain.verify import verify_fork_proof
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


async def test_a_forking_member_is_flagged_with_evidence_on_every_honest_node(network_dir):
    """A member signs two different blocks at one height (equivocation): the node it talks to keeps
    the chain it verified, stores a fork proof and records `fork_detected` on its own chain; so does
    the other honest node (from the gossiped proof or the relayed announcements)."""
    base, authority = network_dir
    boot = Node(node_config(base, authority, "boot", ["bootstrap"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(boot.run)
        addr = boot.announce_addrs()[0]
        other = Node(node_config(base, authority, "other", ["anomaly"], bootstrap=[addr]))
        await nursery.start(other.run)

        forker_id = Identity.generate()
        forker_cert = issue_certificate(authority, forker_id.peer_id, ["risk"], 3600)
        forker = await start_rogue(nursery, forker_id, authority.public_key, forker_cert, pubsub=True)
        chain = build_chain(forker_id, 3)
        twin = build_chain(forker_id, 1, records_per_block=1, prev=chain[1].header)[0]  # a second height 2
        assert twin.header.hash != chain[2].header.hash

        async def serve(stream):  # honest-looking range answers from the first chain
            frame = await ledger_sync.FrameReader(stream, 4096).read_frame(10)
            blocks = [b.encode() for b in chain[frame.get("start", 0):]] if "author" in frame else []
            await ledger_sync.write_frames(stream, [{"ok": True, "blocks": blocks}])

        forker.set_stream_handler(ledger_sync.PROTOCOL_ID, serve)
        peer = await forker.connect(addr)
        await hello.exchange(forker, peer, forker_cert, forker.rogue_admission)
        await forker.subscribe(ledger_sync.HEADS_TOPIC)

        async def announce_until(head, predicate, what: str) -> None:
            with trio.move_on_after(120):
                while not await predicate():
                    await forker.publish(ledger_sync.HEADS_TOPIC, ledger_sync.HeadsAnnouncement(
                        head.signed_header.encode(), ((forker_id.peer_id, 2, head.header.hash),), ()).encode())
                    await trio.sleep(0.3)
                return
            pytest.fail(f"timed out waiting for {what}")

        async def holds_first_chain() -> bool:
            return (await heads_of(boot)).get(forker_id.peer_id) == (2, chain[2].header.hash)

        async def flagged() -> bool:
            return boot.ledger.ledger.status()["forks"] == [forker_id.peer_id]

        await announce_until(chain[2], holds_first_chain, "boot to replicate the forker's first chain")
        await announce_until(twin, flagged, "boot to detect the twin block")

        assert await holds_first_chain(), "the verified chain must not be replaced by the twin"
        proofs = await boot.ledger.ledger.fork_proofs()
        forks = [verify_fork_proof(p) for p in proofs]
        assert {(f.author, f.height) for f in forks} == {(forker_id.peer_id, 2)}
        await wait_until(lambda: other.ledger.ledger.status()["forks"] == [forker_id.peer_id],
                         "the other honest node to flag the forker")

        async def fork_recorded(node: Node) -> list:
            return await node.ledger.ledger.query(
                lambda s: s.find(record_type="fork_detected", author=node.peer_id, limit=5))

        with trio.move_on_after(60):
            while not (await fork_recorded(boot) and await fork_recorded(other)):
                await trio.sleep(0.2)
        for node in (boot, other):
            rows = await fork_recorded(node)
            assert [row.actor for row in rows] == [node.peer_id], rows  # once, however often it was seen
        nursery.cancel_scope.cancel()

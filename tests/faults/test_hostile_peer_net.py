"""A malicious member (valid certificate) against an honest node, over real libp2p on 127.0.0.1.

Slow-loris streams (half a frame, then silence) on every protocol, oversized frames, requests for
huge ledger ranges, a flood of adverts and a malformed gossipsub RPC: the node stays up, answers its operator, counts what
it dropped, and caps what it serves.
"""

from __future__ import annotations

import struct
import time

import trio

from node.errors import PeerUnreachable
from node.identity import Identity
from node.membership import issue_certificate
from node.node import Node
from node.protocols import adverts, control, hello, ledger_sync, ticks
from test_node_admission_net import network_dir, node_config, start_rogue, wait_until  # noqa: F401

GOSSIP_PROTOCOL = "/meshsub/1.1.0"
LIBP2P_PROTOCOLS = ("/ipfs/id/push/1.0.0", "/ipfs/ping/1.0.0", "/ipfs/id/1.0.0", "/meshsub/1.0.0")
PROTOCOLS = (hello.PROTOCOL_ID, control.PROTOCOL_ID, ledger_sync.PROTOCOL_ID, ticks.PROTOCOL_ID)


async def test_slow_loris_oversized_frames_huge_ranges_and_floods(network_dir):
    base, authority = network_dir
    node = Node(node_config(base, authority, "honest", ["bootstrap", "ingestion"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        addr = node.announce_addrs()[0]
        rogue_id = Identity.generate()
        cert = issue_certificate(authority, rogue_id.peer_id, ["risk"], 3600)
        rogue = await start_rogue(nursery, rogue_id, authority.public_key, cert, pubsub=True)
        peer = await rogue.connect(addr)
        await hello.exchange(rogue, peer, cert, rogue.rogue_admission)

        # 1. slow-loris: a length prefix promising 100 bytes, 3 of them, then silence, on every protocol
        stalled = []
        for protocol in PROTOCOLS:
            stream = await rogue.open_stream(peer, protocol)
            await stream.write(struct.pack(">I", 100) + b"\xa1\x61x")
            stalled.append(stream)
        # 2. oversized frame on the tick protocol (4 GiB announced)
        big = await rogue.open_stream(peer, ticks.PROTOCOL_ID)
        await big.write(struct.pack(">I", 2**32 - 1) + b"\x00" * 1024)
        await wait_until(lambda: node.metrics.get("ticks.bad_frame.frame_too_large") >= 1, "oversized frame refused")

        # 3. a huge ledger range: capped, not refused, node keeps serving
        for i in range(3):
            await node.ledger.record("checkpoint", {"heads": [[f"a{i}", i, b"x" * 32]]}, node.peer_id)
        blocks = await ledger_sync.fetch(rogue, peer, node.peer_id, 0, max_count=10**9)
        assert 1 <= len(blocks) <= ledger_sync.MAX_BLOCKS_PER_REQUEST

        # 4. a flood of (validly signed, replayed) adverts: dropped as replays, node still fine
        #    (a 60 s heartbeat: the node would close a connection silent for 4 beats, and here the
        #    stalled streams must end by their own read timeouts)
        await rogue.subscribe(adverts.TOPIC)
        body = adverts.Advert(peer_id=rogue_id.peer_id, name="rogue", roles=("risk",), capabilities=("compute_risk",),
                              addrs=tuple(rogue.listen_addrs()), version="0", seq=int(time.time() * 1000),
                              ts=time.time(), heartbeat_s=60.0, load={}, cert=cert.encode())
        data = adverts.encode(body, rogue_id)
        for _ in range(200):  # bounded flood
            await rogue.publish(adverts.TOPIC, data)
        await wait_until(lambda: node.metrics.get("adverts.dropped.replayed") >= 1, "replayed adverts dropped")

        # the stalled streams time out on the node's side and are counted, never fatal
        await wait_until(lambda: sum(node.host.handler_errors.values()) >= 2, "stalled streams dropped", timeout=120)
        assert node.status()["peer_id"] == node.peer_id
        assert any(code.endswith("request_timeout") for code in node.host.handler_errors), node.host.handler_errors

        # 5. a gossipsub RPC that is not protobuf (py-libp2p alone lets its DecodeError end the
        #    whole host): that stream and that peer are dropped, counted, the node stays up
        gossip = await rogue.open_stream(peer, GOSSIP_PROTOCOL)
        await gossip.write(b"\x06\x0a\xff\xff\xff\xff\x0f")  # field 1, length 2^32-1, 0 bytes of it
        await wait_until(lambda: node.host.handler_errors["gossipsub:malformed_rpc"] >= 1, "malformed RPC counted")
        await wait_until(lambda: not node.host.is_connected(rogue_id.peer_id), "the sender disconnected")
        # 6. the same garbage on py-libp2p's own protocols (identify push, ping, gossipsub 1.0)

        async def admitted_again() -> str:
            """connect + hello. The node may still be closing the connection it dropped (its side
            already reports it gone, ours not yet: `connect` hands back the dying one), so a
            connection that fails under us is waited out and dialled afresh, within a bound."""
            with trio.fail_after(60):
                while True:
                    peer_id = await rogue.connect(addr)
                    try:
                        await hello.exchange(rogue, peer_id, cert, rogue.rogue_admission)
                        return peer_id
                    except PeerUnreachable:
                        await wait_until(lambda: not rogue.is_connected(node.peer_id), "the dropped connection gone")

        for protocol in LIBP2P_PROTOCOLS:
            peer = await admitted_again()
            stream = await rogue.open_stream(peer, protocol)
            await stream.write(b"\x06\x0a\xff\xff\xff\xff\x0f" * 8)
            await stream.close()
        peer = await admitted_again()  # and it still serves: a fresh connection, a real request
        assert await ledger_sync.fetch(rogue, peer, node.peer_id, 0, max_count=2)
        assert node.status()["peer_id"] == node.peer_id
        nursery.cancel_scope.cancel()

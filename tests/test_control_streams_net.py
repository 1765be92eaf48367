"""Control requests over reused streams, on a real node and a real operator host (TCP, 127.0.0.1).

One stream carries many requests in turn; a stream the node closed while idle is replaced without
the caller noticing; a request that timed out never leaves its late reply to the next request.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from node.errors import RemoteError, RequestTimeout
from node.identity import Identity
from node.membership import issue_certificate
from node.node import Node
from node.protocols import control, hello
from test_node_admission_net import network_dir, node_config, start_rogue, wait_until  # noqa: F401


async def start_node_and_operator(nursery, base: Path, authority):
    node = Node(node_config(base, authority, "boot", ["bootstrap"]))
    await nursery.start(node.run)
    operator = Identity.generate()
    cert = issue_certificate(authority, operator.peer_id, ["operator"], 3600)
    host = await start_rogue(nursery, operator, authority.public_key, cert)
    peer = await host.connect(node.announce_addrs()[0])
    await hello.exchange(host, peer, cert, host.rogue_admission)
    return node, host, peer


async def test_one_stream_carries_many_requests_and_errors_do_not_end_it(network_dir):
    base, authority = network_dir
    async with trio.open_nursery() as nursery:
        node, host, peer = await start_node_and_operator(nursery, base, authority)
        client = control.Client(host)
        for _ in range(5):
            assert (await client.call(peer, "status", timeout=30))["name"] == "boot"
        with pytest.raises(RemoteError, match="unknown_command"):
            await client.call(peer, "no-such-command", timeout=30)
        await client.call(peer, "metrics", timeout=30)
        assert client.streams_opened == 1
        assert node.metrics.get("control.requests") == 6  # 5 status + metrics; the unknown one is counted apart

        # concurrent requests to one node each get a stream; at most MAX_IDLE_PER_PEER stay open
        async with trio.open_nursery() as burst:
            for _ in range(4):
                burst.start_soon(client.call, peer, "status")
        assert client.streams_opened == 4
        assert len(client._idle[peer]) == control.MAX_IDLE_PER_PEER
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_a_stream_the_node_closed_while_idle_is_replaced(network_dir, monkeypatch):
    base, authority = network_dir
    monkeypatch.setattr(control, "IDLE_TIMEOUT_S", 0.5)  # the node's side (same process)
    async with trio.open_nursery() as nursery:
        node, host, peer = await start_node_and_operator(nursery, base, authority)
        client = control.Client(host)
        await client.call(peer, "status", timeout=30)
        await wait_until(lambda: node.metrics.get("control.idle_closed") >= 1, "the node closing the idle stream")
        assert (await client.call(peer, "status", timeout=30))["name"] == "boot"
        assert client.streams_opened == 2
        nursery.cancel_scope.cancel()


async def test_a_timed_out_request_never_answers_the_next_one(network_dir):
    base, authority = network_dir
    async with trio.open_nursery() as nursery:
        node, host, peer = await start_node_and_operator(nursery, base, authority)
        released = trio.Event()

        async def slow(args: dict, operator: str) -> dict:
            await released.wait()
            return {"slow": True}

        node.control.register("slow", slow)
        client = control.Client(host)
        await client.call(peer, "status", timeout=30)
        with pytest.raises(RequestTimeout):
            await client.call(peer, "slow", timeout=0.5)  # took the idle stream; closed after the timeout
        released.set()  # the node now answers "slow" on the closed stream
        for _ in range(3):
            assert (await client.call(peer, "status", timeout=30))["name"] == "boot"
        assert client.streams_opened == 2
        nursery.cancel_scope.cancel()

"""Simulator and MQTT bridge benchmark: prints figures, asserts nothing.

    .venv/bin/python bench/sim.py [--ticks 20000] [--publishers 1 2 4] [--repeat 3] [--broker auto]

1. Publish rate: ``publish_ticks`` of --ticks simulated ticks (QoS 1, pipelined) into a fresh
   local broker, for each --publishers value; median of --repeat runs (process start included).
2. Bridge rate: ticks/s through node.mqtt.Bridge (receive + parse + ack) for a publish of
   --ticks ticks with the largest --publishers value.
3. Generator rate: ticks/s of MarketSim + JSON payload encoding alone.

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and "sim" would be this file.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import trio  # noqa: E402

from node.market_events import parse  # noqa: E402
from node.mqtt import Bridge, BridgeConfig  # noqa: E402
from sim.market import MarketSim  # noqa: E402
from sim.publisher import publish_ticks  # noqa: E402
from testnet.broker import start_broker  # noqa: E402


def now_us() -> int:
    return int(time.time() * 1e6)


def generator_rate(n: int) -> float:
    start = time.perf_counter()
    for tick in MarketSim(seed=1, start_time_us=now_us()).ticks(n):
        tick.payload()
    return n / (time.perf_counter() - start)


def publish_rate(url: str, n: int, publishers: int, seed: int) -> dict:
    ticks = MarketSim(seed=seed, start_time_us=now_us(), interval_us=10).ticks(n)
    return publish_ticks(url, ticks, publishers=publishers).to_dict()


async def bridge_rate(url: str, n: int, publishers: int) -> dict:
    bridge = Bridge(BridgeConfig(url=url, client_id=f"bench-{now_us()}", channel_size=4096))
    received = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        start = time.perf_counter()
        nursery.start_soon(partial(trio.to_thread.run_sync, partial(publish_rate, url, n, publishers, 77)))
        while received < n:
            batch = await bridge.receive_batch(min(1000, n - received), wait_s=0.05)  # as the iot role
            for msg in batch:
                parse(msg.topic, msg.payload, received_at=msg.received_at)
            bridge.ack(batch)
            received += len(batch)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return {"received": received, "elapsed_s": round(elapsed, 3), "rate": round(received / elapsed, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ticks", type=int, default=20000)
    p.add_argument("--publishers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--broker", default="auto", choices=("auto", "mosquitto", "embedded"))
    args = p.parse_args()
    out: dict = {"ticks": args.ticks, "repeat": args.repeat}
    out["generator_rate"] = round(generator_rate(args.ticks), 1)
    print(f"generator: {out['generator_rate']:,.0f} ticks/s (MarketSim + JSON)")
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.publishers:
            rates = []
            for r in range(args.repeat):
                with start_broker(Path(tmp) / f"b-{k}-{r}", kind=args.broker) as broker:
                    summary = publish_rate(broker.url, args.ticks, k, seed=r)
                    out["broker"] = broker.kind
                rates.append(summary["rate"])
                print(f"publishers={k} run {r}: {summary}")
            out[f"publish_rate_k{k}"] = statistics.median(rates)
            print(f"publishers={k}: median {statistics.median(rates):,.0f} ticks/s ({out['broker']})")
        with start_broker(Path(tmp) / "bridge", kind=args.broker) as broker:
            result = trio.run(bridge_rate, broker.url, args.ticks, max(args.publishers))
        out["bridge"] = result
        print(f"bridge: {result}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

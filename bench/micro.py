"""Micro-benchmarks of the pipeline's hot functions (issue 7): prints figures, asserts nothing.

    .venv/bin/python bench/micro.py [--repeat 5] [--n 20000]

- normalise: node.market_events.parse + Normaliser.derive of one simulated MQTT tick;
- route: node.routing.rank of one key over 6 peer ids (a testnet's worth);
- score: MarketDetector.score_batch on 1,000-row batches (ops/s = batches/s; rows/s also shown),
  and on 50-row batches (what one symbol gets per batch at ~2,000 ticks/s: the per-call cost);
- frame: encode + decode one 1,000-event `score` batch frame (node.protocols.codec, per event);
- evidence: ticks.batch_root (Merkle root) over 1,000 event ids, per id (the ledger rollups);
- risk: node.analytics.risk.snapshot of one 250-price path;
- mqtt receive: MQTT 5 QoS 1 PUBLISH packets of simulated ticks, bytes -> on_message, through
  paho's own Client, through node.mqtt_client.BufferedClient with its lean PUBLISH path off
  (chunked reads only) and on (the iot bridge's client), side by side; the socket is an
  in-memory stand-in handing out the bytes.

Each figure is ops per CPU-second (time.process_time), the median of --repeat rounds; the
wall-clock medians are in the JSON line too (on a shared box they mostly measure the neighbours).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# Run as a script, this file's folder comes first on sys.path (bench/sim.py would shadow sim).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from node.analytics.detector import MarketDetector  # noqa: E402
from node.analytics.risk import snapshot  # noqa: E402
from node.market_events import Normaliser, parse  # noqa: E402
from node.mqtt_client import BufferedClient  # noqa: E402
from node.protocols.codec import decode_body, encode_frame  # noqa: E402
from node.protocols.ticks import batch_root  # noqa: E402
from node.routing import rank  # noqa: E402
from sim.market import MarketSim  # noqa: E402


WALL: dict[str, float] = {}


def rounds(fn, ops: int, repeat: int, name: str | None = None) -> float:
    """Median ops per CPU-second of `repeat` calls of fn() (each doing `ops` operations).

    CPU time (time.process_time), not wall time: on a shared machine the wall figure mostly
    measures the other tenants. The wall-clock median is kept in WALL for the JSON line."""
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(ops / max(time.process_time() - c0, 1e-9))
        wall.append(ops / (time.perf_counter() - w0))
    WALL[name or fn.__qualname__.split(".")[0]] = statistics.median(wall)
    return statistics.median(cpu)


def bench_normalise(n: int, repeat: int) -> float:
    messages = [(t.topic, t.payload()) for t in MarketSim(seed=1, start_time_us=int(time.time() * 1e6)).ticks(n)]
    received = time.time()

    def run() -> None:
        norm = Normaliser()
        for topic, payload in messages:
            norm.derive(parse(topic, payload, received_at=received))
    return rounds(run, n, repeat)


def bench_route(n: int, repeat: int) -> float:
    peers = [f"12D3KooWPeer{i:040d}" for i in range(6)]
    keys = [f"crypto/SYM{i % 64}" for i in range(n)]

    def run() -> None:
        for key in keys:
            rank(key, peers)
    return rounds(run, n, repeat)


def bench_score_small(batches: int, repeat: int) -> float:
    return bench_score(batches, repeat, rows=50)


def bench_frame(n: int, repeat: int, events: int = 1000) -> float:
    sim = MarketSim(seed=3, start_time_us=int(time.time() * 1e6))
    norm, received = Normaliser(), time.time()
    wires = [norm.derive(parse(t.topic, t.payload(), received_at=received)).to_wire() for t in sim.ticks(events)]
    frame = {"batch_id": 1, "kind": "score", "items": wires, "ids": [w[1] for w in wires]}

    def run() -> None:
        for _ in range(max(1, n // events)):
            decode_body(encode_frame(frame)[4:])
    return rounds(run, max(1, n // events) * events, repeat)


def bench_evidence(n: int, repeat: int) -> float:
    ids = [f"{i:032x}" for i in range(1000)]

    def run() -> None:
        for _ in range(max(1, n // 1000)):
            batch_root(ids)
    return rounds(run, max(1, n // 1000) * 1000, repeat)


def bench_score(batches: int, repeat: int, rows: int = 1000) -> float:
    rng = np.random.default_rng(1)
    data = []
    for _ in range(batches):
        prices = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, rows)))
        data.append((prices, rng.lognormal(3, 0.5, rows)))

    def run() -> None:
        det = MarketDetector()  # one symbol's detector fed batch after batch, as the anomaly role does
        for p, v in data:
            det.score_batch(p, v)
    MarketDetector().score_batch(*data[0])  # imports / first-call set-up outside the timing
    return rounds(run, batches, repeat, name=f"bench_score_{rows}")


def bench_risk(n: int, repeat: int, length: int = 250) -> float:
    rng = np.random.default_rng(2)
    paths = [100 * np.exp(np.cumsum(rng.normal(0, 1e-2, length))) for _ in range(16)]

    def run() -> None:
        for i in range(n):
            snapshot(paths[i % 16])
    return rounds(run, n, repeat)


class _BytesSocket:
    """Hands out prepared bytes like a non-blocking socket (recv, then BlockingIOError)."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = memoryview(data), 0

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._data):
            raise BlockingIOError
        out = bytes(self._data[self._pos:self._pos + size])
        self._pos += len(out)
        return out

    def pending(self) -> int:
        return len(self._data) - self._pos

    def close(self) -> None:
        self._pos = len(self._data)


def _publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode() + mid.to_bytes(2, "big") + b"\0" + payload
    length, rest = bytearray(), len(body)
    while True:
        rest, byte = rest >> 7, rest & 0x7F
        length.append(byte | (0x80 if rest else 0))
        if not rest:
            return b"\x32" + bytes(length) + body


def bench_mqtt_receive(n: int, repeat: int, client_class: type, lean: bool = True) -> float:
    sim = MarketSim(seed=4, start_time_us=int(time.time() * 1e6))
    data = b"".join(_publish_packet(t.topic, t.payload(), i % 65535 + 1) for i, t in enumerate(sim.ticks(n)))

    def run() -> None:
        client = client_class(CallbackAPIVersion.VERSION2, client_id="bench", protocol=mqtt.MQTTv5, manual_ack=True)
        if not lean:
            client.fast_path = False  # chunked reads only: the bridge's client before the lean path
        got = []  # one payload length per message: keeping the messages would make this a GC benchmark
        client.on_message = lambda _c, _u, m: got.append(len(m.payload))
        client._sock = sock = _BytesSocket(data)  # what paho reads from once connected
        while sock.pending() or getattr(client, "_rbuf", b""):
            client.loop_read()
        assert len(got) == n, (len(got), n)
    return rounds(run, n, repeat, name=f"mqtt_receive_{client_class.__name__}{'' if lean else '_chunked_only'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="timed rounds per benchmark (median; default %(default)s)")
    p.add_argument("--n", type=int, default=5_000, help="operations per round for normalise/route (default %(default)s)")
    args = p.parse_args(argv)
    load = os.getloadavg()
    res = {
        "normalise_ops_per_s": bench_normalise(args.n, args.repeat),
        "route_ops_per_s": bench_route(args.n, args.repeat),
        "score_batch_1000_ops_per_s": bench_score(10, args.repeat),
        "score_batch_50_ops_per_s": bench_score_small(100, args.repeat),
        "frame_events_per_s": bench_frame(args.n * 4, args.repeat),
        "evidence_ids_per_s": bench_evidence(args.n * 4, args.repeat),
        "risk_snapshot_ops_per_s": bench_risk(max(1, args.n // 20), args.repeat),
        "mqtt_receive_paho_msgs_per_s": bench_mqtt_receive(args.n * 4, args.repeat, mqtt.Client),
        "mqtt_receive_chunked_msgs_per_s": bench_mqtt_receive(args.n * 4, args.repeat, BufferedClient, lean=False),
        "mqtt_receive_buffered_msgs_per_s": bench_mqtt_receive(args.n * 4, args.repeat, BufferedClient),
    }
    res["score_rows_per_s"] = res["score_batch_1000_ops_per_s"] * 1000
    print(f"{'function':<36} {'ops/CPU-s (median of ' + str(args.repeat) + ')':>26}  {'CPU us/op':>9}")
    for name, label in (("normalise_ops_per_s", "normalise (parse + Normaliser.derive)"),
                        ("route_ops_per_s", "route (routing.rank, 6 peers)"),
                        ("score_batch_1000_ops_per_s", "score_batch (1,000 rows)"),
                        ("score_batch_50_ops_per_s", "score_batch (50 rows)"),
                        ("frame_events_per_s", "frame encode+decode (per event)"),
                        ("evidence_ids_per_s", "batch_root Merkle (per event id)"),
                        ("risk_snapshot_ops_per_s", "risk.snapshot (250 prices)"),
                        ("mqtt_receive_paho_msgs_per_s", "mqtt receive, paho Client (per msg)"),
                        ("mqtt_receive_chunked_msgs_per_s", "mqtt receive, chunked reads only"),
                        ("mqtt_receive_buffered_msgs_per_s", "mqtt receive, BufferedClient")):
        print(f"{label:<36} {res[name]:>26,.1f}  {1e6 / res[name]:>9.1f}")
    print(f"{'  = scored rows per CPU-s':<36} {res['score_rows_per_s']:>26,.0f}")
    out = {k: round(v, 1) for k, v in res.items()}
    out["wall_ops_per_s"] = {k.removeprefix("bench_"): round(v, 1) for k, v in WALL.items()}
    out["loadavg"] = [round(x, 2) for x in load]
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

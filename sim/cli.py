"""``quantian-sim``: generate (or replay) market ticks and publish them to MQTT or stdout."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from node.market_events import parse_event_time
from sim.malformed import malformed_samples
from sim.market import (
    DEFAULT_UNIVERSE,
    GroundTruth,
    MarketSim,
    SimError,
    SimTick,
    load_universe,
    parse_asset,
    parse_injection,
    replay_csv,
    write_ground_truth,
)
from sim.publisher import PublishError, PublishSummary, publish_ticks

DEFAULT_GROUND_TRUTH = "ground_truth.jsonl"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantian-sim",
        description="Seeded market simulator: geometric random walks with injected anomalies, "
        "published to MQTT (quantian/market/<class>/<symbol>, QoS 1) or printed as JSON lines.",
    )
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--mqtt-url", help="broker URL, mqtt://host[:port] or mqtts://host[:8883]")
    out.add_argument("--stdout", action="store_true", help="print one JSON payload per line instead")
    p.add_argument("--rate", type=_positive_float, help="ticks per second (default: as fast as possible)")
    p.add_argument("--count", type=_non_negative_int, default=1000, help="ticks to send (default 1000)")
    p.add_argument("--forever", action="store_true", help="ignore --count, run until interrupted")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--start-time", help="event time of tick 0, ISO-8601 UTC (default: now)")
    p.add_argument("--symbols", nargs="+", metavar="SYM:CLASS[:PRICE[:VOL[:VOLUME]]]",
                   help="universe as specs, e.g. EURUSD:forex:1.08:0.0001 (default: "
                   + ", ".join(a.symbol for a in DEFAULT_UNIVERSE) + ")")
    p.add_argument("--universe", type=Path, help="universe JSON file (list of asset objects)")
    p.add_argument("--inject", action="append", default=[], metavar="SPEC",
                   help="anomaly: KIND@TICK[:SYMBOL][:mag=X] or KIND:p=PROB[:SYMBOL][:mag=X]; "
                   "KIND is spike, volume or shift (repeatable)")
    p.add_argument("--ground-truth", type=Path,
                   help=f"JSON-lines file of injected anomalies (default {DEFAULT_GROUND_TRUTH} when --inject)")
    p.add_argument("--replay", type=Path, metavar="FILE.csv", help="replay prices: date column + price column(s)")
    p.add_argument("--replay-class", default="equity", help="asset class of replayed columns (default equity)")
    p.add_argument("--replay-symbols", help="comma-separated symbols for the replayed price columns")
    p.add_argument("--publishers", type=_positive_int, default=1,
                   help="MQTT connections, one process each (about 2,000 ticks/s each; default 1)")
    p.add_argument("--duplicate-every", type=_non_negative_int, default=0, metavar="N",
                   help="publish every N-th tick twice (tests downstream de-duplication)")
    p.add_argument("--malformed", action="store_true",
                   help="also publish the labelled malformed-payload sample set (before the ticks)")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--window", type=_positive_int, default=2000, help="unacked messages per connection")
    p.add_argument("--ca-file", help="CA certificate file for mqtts://")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _tick_source(args: argparse.Namespace, truth: list[GroundTruth]) -> tuple[Iterator[SimTick], MarketSim | None]:
    injections = [parse_injection(spec) for spec in args.inject]
    if args.start_time:
        try:
            start_us = parse_event_time(args.start_time)
        except ValueError as exc:
            raise SimError(f"--start-time {args.start_time!r}: {exc}") from None
    else:
        start_us = int(time.time() * 1_000_000)
    interval_us = max(1, int(1_000_000 / args.rate)) if args.rate else 100
    count = None if args.forever else args.count
    if args.replay:
        symbols = args.replay_symbols.split(",") if args.replay_symbols else None
        ticks = replay_csv(
            args.replay, asset_class=args.replay_class, symbols=symbols, seed=args.seed, start_time_us=start_us,
            interval_us=interval_us, injections=injections, count=count, ground_truth=truth,
        )
        return ticks, None
    if args.universe and args.symbols:
        raise SimError("give --universe or --symbols, not both")
    universe = (
        load_universe(args.universe) if args.universe
        else tuple(parse_asset(s) for s in args.symbols) if args.symbols else DEFAULT_UNIVERSE
    )
    sim = MarketSim(universe, seed=args.seed, start_time_us=start_us, interval_us=interval_us, injections=injections)
    return sim.ticks(count), sim


def _paced(ticks: Iterable[SimTick], rate: float | None) -> Iterator[SimTick]:
    start = time.monotonic()
    for i, tick in enumerate(ticks):
        if rate:
            ahead = start + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # rate pacing
        yield tick


def _progress(summary: PublishSummary) -> None:
    print(
        f"quantian-sim: sent {summary.sent} acked {summary.acked} failed {summary.failed} "
        f"({summary.rate:,.0f}/s)", file=sys.stderr, flush=True,
    )


def run(args: argparse.Namespace) -> int:
    if args.malformed and args.stdout:
        raise SimError("--malformed needs --mqtt-url")
    truth: list[GroundTruth] = []
    ticks, sim = _tick_source(args, truth)
    gt_path = args.ground_truth or (Path(DEFAULT_GROUND_TRUTH) if args.inject else None)
    try:
        if args.stdout:
            out = sys.stdout
            for n, tick in enumerate(_paced(ticks, args.rate), 1):
                out.write(tick.payload().decode() + "\n")
                if args.duplicate_every and n % args.duplicate_every == 0:
                    out.write(tick.payload().decode() + "\n")
            out.flush()
            return 0
        stream: Iterable = ticks
        if args.malformed:
            now_us = int(time.time() * 1_000_000)
            bad = [(s.topic, s.payload) for s in malformed_samples(now_us)]
            stream = itertools.chain(bad, ticks)
        summary = publish_ticks(
            args.mqtt_url, stream, rate=args.rate, publishers=args.publishers, qos=args.qos,
            duplicate_every=args.duplicate_every, window=args.window, ca_file=args.ca_file,
            progress=None if args.quiet else _progress,
        )
        report = summary.to_dict()
        if args.malformed:
            report["malformed"] = len(bad)
        print(json.dumps(report), flush=True)
        return 0 if summary.failed == 0 else 1
    finally:
        if gt_path is not None:
            records = sim.ground_truth if sim is not None else truth
            n = write_ground_truth(gt_path, records)
            if not args.quiet:
                print(f"quantian-sim: {n} injected anomalies written to {gt_path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (SimError, PublishError) as exc:
        print(f"quantian-sim: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

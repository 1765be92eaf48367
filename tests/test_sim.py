"""Simulator: determinism per seed, anomaly injection and its ground truth, replay, CLI."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.market_events import encode_payload, parse
from sim import cli
from sim.market import (
    DEFAULT_UNIVERSE,
    MarketSim,
    SimError,
    load_universe,
    parse_asset,
    parse_injection,
    replay_csv,
    spike_tick,
)
from testnet.ports import free_port

START_US = 1_767_225_600_000_000


def payloads(sim: MarketSim, n: int) -> list[bytes]:
    return [t.payload() for t in sim.ticks(n)]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_same_seed_same_ticks(seed):
    assert payloads(MarketSim(seed=seed), 40) == payloads(MarketSim(seed=seed), 40)


def test_fast_payload_equals_the_generic_encoding():
    for tick in MarketSim(seed=5).ticks(50):
        assert tick.payload() == encode_payload(tick.fields())
    assert json.loads(spike_tick("AAPL", event_time_us=START_US).payload())["injected"] == "spike"


def test_different_seeds_differ_and_ticks_restart_per_call():
    sim = MarketSim(seed=1)
    assert payloads(sim, 20) == payloads(sim, 20)
    assert payloads(MarketSim(seed=1), 20) != payloads(MarketSim(seed=2), 20)


def test_default_universe_round_robin_and_ticks_are_valid():
    ticks = list(MarketSim(seed=3, start_time_us=START_US).ticks(8))
    assert [t.symbol for t in ticks[:4]] == ["BTCUSD", "ETHUSD", "AAPL", "MSFT"]
    assert [t.asset_class for t in ticks[:4]] == ["crypto", "crypto", "equity", "equity"]
    for t in ticks:
        tick = parse(t.topic, t.payload(), received_at=START_US / 1e6 + 1)
        assert tick.event_id == t.event_id


def test_injections_at_ticks_write_ground_truth_and_leave_the_walk_alone():
    base = list(MarketSim(seed=4).ticks(40))
    specs = ["spike@5:mag=0.1", "volume@9", "shift@12:AAPL:mag=0.05"]
    sim = MarketSim(seed=4, injections=[parse_injection(s) for s in specs])
    ticks = list(sim.ticks(40))
    truth = sim.ground_truth
    assert [(g.tick, g.symbol, g.kind) for g in truth] == [(5, "ETHUSD", "spike"), (9, "ETHUSD", "volume"),
                                                            (14, "AAPL", "shift")]
    assert ticks[5].price == pytest.approx(base[5].price * 1.1, rel=1e-6)
    assert ticks[9].volume == pytest.approx(base[9].volume * 10.0, rel=1e-5)
    for i in (18, 22, 26):  # the AAPL level stays shifted
        assert ticks[i].price == pytest.approx(base[i].price * 1.05, rel=1e-6)
    untouched = [i for i in range(40) if i not in (5, 9) and ticks[i].symbol != "AAPL"]
    assert all(ticks[i].payload() == base[i].payload() for i in untouched)
    assert truth[0].event_id == ticks[5].event_id and truth[0].sensor_id == "sim-ETHUSD"


def test_probabilistic_injection_is_deterministic():
    def truth(seed):
        sim = MarketSim(seed=seed, injections=[parse_injection("spike:p=0.05:BTCUSD")])
        list(sim.ticks(2000))
        return [(g.tick, g.magnitude) for g in sim.ground_truth]

    first = truth(7)
    assert first == truth(7) and 5 < len(first) < 60
    assert all(tick % 4 == 0 for tick, _ in first)  # BTCUSD only


@pytest.mark.parametrize("spec", ["jump@3", "spike", "spike@1:p=0.1", "spike:p=2", "spike@x", "volume@1:mag=0"])
def test_bad_injection_specs_are_refused(spec):
    with pytest.raises(SimError):
        parse_injection(spec)


def test_universe_from_specs_and_file(tmp_path):
    assets = [parse_asset("EURUSD:forex:1.08:0.0001"), parse_asset("XAUUSD:commodity")]
    assert assets[0].start_price == 1.08 and assets[1].asset_class == "commodity"
    path = tmp_path / "universe.json"
    path.write_text(json.dumps([{"symbol": "SOLUSD", "asset_class": "crypto", "start_price": 150, "volatility": 0.003}]))
    (asset,) = load_universe(path)
    assert asset.symbol == "SOLUSD"
    for bad in ("EURUSD", "EURUSD:bonds", "EUR/USD:forex", "EURUSD:forex:-1"):
        with pytest.raises(SimError):
            parse_asset(bad)


def test_replay_csv_with_injection(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("date,AAA,BBB\n2024-01-02,10.0,20.0\n2024-01-03,,21.0\n2024-01-04,11.0,22.0\n")
    truth = []
    ticks = list(replay_csv(path, injections=[parse_injection("spike@2:mag=0.5")], ground_truth=truth))
    assert [(t.symbol, t.price) for t in ticks] == [("AAA", 10.0), ("BBB", 20.0), ("BBB", 31.5), ("AAA", 11.0),
                                                   ("BBB", 22.0)]
    assert dict(ticks[2].extra)["as_of"] == "2024-01-03"
    assert [(g.tick, g.kind) for g in truth] == [(2, "spike")]


def test_spike_tick():
    tick = spike_tick("BTCUSD", magnitude=0.1, event_time_us=START_US)
    assert tick.price == pytest.approx(DEFAULT_UNIVERSE[0].start_price * 1.1)
    assert tick.topic == "quantian/market/crypto/BTCUSD"
    assert spike_tick("XYZ", asset_class="equity", price=50.0, event_time_us=START_US).price == 60.0
    with pytest.raises(SimError):
        spike_tick("XYZ", event_time_us=START_US)


def test_cli_stdout_is_deterministic_and_writes_ground_truth(tmp_path, capsys):
    gt = tmp_path / "gt.jsonl"
    argv = ["--stdout", "--count", "30", "--seed", "9", "--start-time", "2026-01-01T00:00:00Z",
            "--inject", "spike@10", "--ground-truth", str(gt), "--duplicate-every", "10", "--quiet"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out.splitlines()
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == first
    assert len(first) == 33 and first[9] == first[10]
    (record,) = [json.loads(line) for line in gt.read_text().splitlines()]
    assert record["tick"] == 10 and record["kind"] == "spike" and record["symbol"] == "AAPL"
    assert json.loads(first[11])["seq"] == 10


def test_cli_replays_a_csv(tmp_path, capsys):
    path = tmp_path / "sp.csv"
    path.write_text("date,adj_close\n1999-01-04,1228.1\n1999-01-05,1244.78\n1999-01-06,1272.34\n")
    argv = ["--stdout", "--replay", str(path), "--replay-symbols", "SPX", "--count", "2", "--quiet"]
    assert cli.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["symbol"], x["price"], x["as_of"]) for x in lines] == [("SPX", 1228.1, "1999-01-04"),
                                                                     ("SPX", 1244.78, "1999-01-05")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mqtt-url", "mqtt://127.0.0.1:{port}", "--count", "1"], "cannot reach MQTT broker"),
        (["--mqtt-url", "http://x", "--count", "1"], "must start with mqtt://"),
        (["--stdout", "--inject", "boom@1"], "kind must be one of"),
        (["--stdout", "--symbols", "BTC:bonds"], "class must be one of"),
        (["--stdout", "--malformed"], "--malformed needs --mqtt-url"),
        (["--stdout", "--replay", "/nonexistent.csv"], "replay file"),
    ],
)
def test_cli_errors_are_clear(argv, message, capsys):
    argv = [a.format(port=free_port()) for a in argv]
    assert cli.main(argv) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--count", "5"], ["--stdout", "--rate", "0"], ["--stdout", "--publishers", "0"]])
def test_cli_bad_flags_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2

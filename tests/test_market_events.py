"""Validation, normalisation and de-duplication of ticks (pure, no broker)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.market_events import (
    REJECT_CODES,
    BadWireEvent,
    MarketEvent,
    Normaliser,
    RecentIds,
    RejectedTick,
    RejectStats,
    ValidationLimits,
    event_id_for,
    format_event_time,
    parse,
    parse_event_time,
    topic_for,
)
from sim.malformed import malformed_samples

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
NOW_US = int(NOW * 1e6)
TOPIC = topic_for("crypto", "BTCUSD")


def fields(**changes):
    base = {"sensor_id": "s1", "symbol": "BTCUSD", "asset_class": "crypto", "price": 60000.0,
            "volume": 2.0, "source": "test", "event_time": format_event_time(NOW_US - 1_000_000)}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def payload(**changes) -> bytes:
    return json.dumps(fields(**changes)).encode()


def test_valid_tick_is_parsed():
    tick = parse(TOPIC, payload(extra="ignored"), received_at=NOW)
    assert (tick.symbol, tick.asset_class, tick.price, tick.volume) == ("BTCUSD", "crypto", 60000.0, 2.0)
    assert tick.event_time_us == NOW_US - 1_000_000 and tick.event_time_given
    assert tick.received_us == NOW_US


def test_event_id_ignores_spelling_and_receive_time_but_not_content():
    a = parse(TOPIC, payload(price=60000), received_at=NOW)
    reordered = json.dumps(dict(reversed(list(fields(price=60000.0).items()))), indent=2).encode()
    b = parse(TOPIC, reordered, received_at=NOW + 5)
    assert a.event_id == b.event_id == event_id_for(fields())
    assert parse(TOPIC, payload(price=60000.5), received_at=NOW).event_id != a.event_id
    assert parse(TOPIC, payload(seq=2), received_at=NOW).event_id != a.event_id


def test_tick_without_event_time_gets_receive_time_and_a_content_id():
    first = parse(TOPIC, payload(event_time=None), received_at=NOW)
    redelivered = parse(TOPIC, payload(event_time=None), received_at=NOW + 30)
    assert not first.event_time_given and first.event_time_us == NOW_US
    assert first.event_id == redelivered.event_id  # a QoS 1 redelivery is the same event


@pytest.mark.parametrize("sample", malformed_samples(NOW_US), ids=lambda s: f"{s.code}-{s.note}")
def test_every_malformed_sample_is_rejected_with_its_code(sample):
    with pytest.raises(RejectedTick) as info:
        parse(sample.topic, sample.payload, received_at=NOW)
    assert info.value.code == sample.code
    assert info.value.code in REJECT_CODES


def test_malformed_set_covers_every_reject_code():
    assert {s.code for s in malformed_samples(NOW_US)} == set(REJECT_CODES)


def test_timestamp_bounds_are_configurable():
    old = payload(event_time=format_event_time(NOW_US - 3600 * 1_000_000))
    assert parse(TOPIC, old, received_at=NOW).event_time_given
    with pytest.raises(RejectedTick, match="bad_timestamp"):
        parse(TOPIC, old, received_at=NOW, limits=ValidationLimits(max_age_s=60))
    with pytest.raises(RejectedTick, match="too_large"):
        parse(TOPIC, payload(), received_at=NOW, limits=ValidationLimits(max_payload_bytes=50))


def test_event_time_round_trip_and_utc_only():
    assert parse_event_time(format_event_time(NOW_US + 123)) == NOW_US + 123
    assert parse_event_time("2026-01-01T00:00:00+00:00") == NOW_US
    with pytest.raises(ValueError):
        parse_event_time("2026-01-01T01:00:00+01:00")


@settings(max_examples=80, deadline=None)
@given(topic=st.text(max_size=60), data=st.binary(max_size=600))
def test_parse_of_arbitrary_bytes_raises_only_rejects(topic, data):
    try:
        parse(topic, data, received_at=NOW)
    except RejectedTick as reject:
        assert reject.code in REJECT_CODES


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=80, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from(["sensor_id", "symbol", "asset_class", "price", "volume", "source", "event_time", "x"]),
        json_values, max_size=4,
    ),
    drop=st.sets(st.sampled_from(["sensor_id", "symbol", "price", "volume", "event_time"])),
)
def test_parse_of_mutated_ticks_raises_only_rejects(changes, drop):
    body = {k: v for k, v in {**fields(), **changes}.items() if k not in drop}
    try:
        tick = parse(TOPIC, json.dumps(body).encode(), received_at=NOW)
    except RejectedTick as reject:
        assert reject.code in REJECT_CODES
    else:
        assert math.isfinite(tick.price) and tick.price > 0 and tick.volume >= 0


def test_normaliser_derives_changes_per_symbol_and_drops_duplicates():
    norm = Normaliser()
    e1 = norm.accept(parse(TOPIC, payload(price=100.0, volume=1.0, seq=1), received_at=NOW))
    other = parse(topic_for("equity", "AAPL"), payload(symbol="AAPL", asset_class="equity", price=5.0), received_at=NOW)
    assert norm.accept(other).price_change is None
    e2 = norm.accept(parse(TOPIC, payload(price=110.0, volume=4.0, seq=2), received_at=NOW))
    assert e1.price_change is None and e1.volume_change is None and e1.notional == 100.0
    assert e2.price_change == pytest.approx(10.0) and e2.price_return == pytest.approx(0.1)
    assert e2.volume_change == 3.0 and e2.notional == 440.0
    assert norm.accept(parse(TOPIC, payload(price=110.0, volume=4.0, seq=2), received_at=NOW + 1)) is None
    assert norm.duplicates == 1


def test_normaliser_and_dedup_set_are_bounded():
    ids = RecentIds(capacity=3)
    assert all(ids.add(x) for x in "abcd")
    assert len(ids) == 3 and "a" not in ids and not ids.add("d")
    norm = Normaliser(max_symbols=2)
    for sym in ("A1", "B1", "C1"):
        norm.accept(parse(topic_for("equity", sym), payload(symbol=sym, asset_class="equity"), received_at=NOW))
    again = norm.accept(parse(topic_for("equity", "A1"), payload(symbol="A1", asset_class="equity", seq=9),
                              received_at=NOW))
    assert again.price_change is None  # A1's state was evicted


@given(
    price=st.floats(min_value=1e-9, max_value=1e12),
    change=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    time_us=st.integers(min_value=0, max_value=2**62),
)
def test_market_event_wire_and_dict_round_trip(price, change, time_us):
    event = MarketEvent("ab" * 16, "BTCUSD", "crypto", price, 1.5, "src", "s1", time_us, time_us + 1,
                        change, change, change, price * 1.5)
    assert MarketEvent.from_wire(event.to_wire()) == event
    assert MarketEvent.from_dict(event.to_dict()) == event


def test_bad_wire_events_are_refused():
    good = MarketEvent("id", "BTCUSD", "crypto", 1.0, 1.0, "src", "s1", 1, 2, None, None, None, 1.0).to_wire()
    for bad in ([], [2, *good[1:]], good[:-1], [*good[:4], "5", *good[5:]], [*good[:8], 1.5, *good[9:]]):
        with pytest.raises(BadWireEvent):
            MarketEvent.from_wire(bad)


def test_reject_stats_count_by_code_and_keep_a_sample():
    stats = RejectStats()
    for sample in malformed_samples(NOW_US)[:6]:
        try:
            parse(sample.topic, sample.payload, received_at=NOW)
        except RejectedTick as reject:
            stats.record(reject, sample.payload)
    assert stats.total == 6 and stats.counts == {"too_large": 1, "bad_topic": 2, "bad_json": 3}
    assert set(stats.samples) == set(stats.counts)

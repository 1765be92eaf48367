"""The anomaly role's batch function, in memory: spikes flagged, quiet data not, duplicates and
malformed batches handled (no network; the ledger is a recording fake)."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from node.analytics.detector import DEFAULT_THRESHOLD
from node.market_events import MarketEvent
from node.errors import ConfigError
from node.metrics import Metrics
from node.protocols import ticks
from node.protocols.control import CommandRegistry
from node.roles.anomaly import AnomalyRole, alert_id_for
from node.roles.base import RoleContext

START_US = 1_750_000_000_000_000


class FakeLedgerService:
    """Records what roles would append; `ledger.query` finds nothing."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict, str]] = []
        self.ledger = self

    def record_soon(self, record_type: str, payload: dict, actor: str) -> None:
        self.records.append((record_type, payload, actor))

    async def query(self, fn, *args, **kwargs):
        return None


def fake_ctx(extra: dict | None = None) -> RoleContext:
    return RoleContext(SimpleNamespace(extra=extra or {}), SimpleNamespace(peer_id="12D3KooWfake"), None, None,
                       None, CommandRegistry(), Metrics(),
                       {"ledger": FakeLedgerService(), "batch_handlers": {}})


def make_events(symbol: str, prices, volumes, *, step_us: int = 100_000, tag: str = "") -> list[MarketEvent]:
    out, previous = [], None
    for i, (price, volume) in enumerate(zip(prices, volumes)):
        event_id = hashlib.sha256(f"{tag}/{symbol}/{i}".encode()).hexdigest()[:32]
        out.append(MarketEvent(event_id, symbol, "crypto", float(price), float(volume), "test", "s1",
                               START_US + i * step_us, START_US + i * step_us,
                               None if previous is None else price - previous,
                               None if previous is None else price / previous - 1.0, None, price * volume))
        previous = price
    return out


def batches(kind: str, events: list[MarketEvent], size: int = 100) -> list[ticks.Batch]:
    return [ticks.new_batch(kind, [e.to_wire() for e in events[i:i + size]], [e.event_id for e in events[i:i + size]])
            for i in range(0, len(events), size)]


def random_walk(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n))), rng.lognormal(3, 0.3, n)


async def test_spike_is_flagged_once_and_recorded():
    ctx = fake_ctx()
    role = AnomalyRole(ctx)
    prices, volumes = random_walk(600, seed=1)
    prices[500:] *= 1.05  # a 5 % jump in a 0.1 % noise walk
    events = make_events("BTCUSD", prices, volumes)
    handler = ctx.services["batch_handlers"]["score"]
    acks = [await handler("sender", b) for b in batches("score", events)]
    assert sum(a["scored"] for a in acks) == 600 and sum(a["alerts"] for a in acks) == 1
    (record_type, alert, actor), = ctx.services["ledger"].records
    assert record_type == "anomaly_alert_created" and actor == "12D3KooWfake"
    assert alert["event_id"] == events[500].event_id and alert["alert_id"] == alert_id_for(events[500].event_id)
    assert alert["alert_id"].startswith("al-") and len(alert["alert_id"]) == 15
    assert alert["symbol"] == "BTCUSD" and alert["status"] == "pending_review"
    assert alert["score"] >= DEFAULT_THRESHOLD and alert["severity"] in ("medium", "high", "critical")
    assert "price" in alert["reason"]
    assert list(role.alerts) == [alert]
    assert role.status()["alerts"] == 1 and role.status()["scored"] == 600
    assert ctx.metrics.get("anomaly.alerts") == 1


async def test_quiet_data_raises_no_alert_on_two_symbols():
    ctx = fake_ctx()
    role = AnomalyRole(ctx)
    events = []
    for seed, symbol in ((2, "BTCUSD"), (3, "ETHUSD")):
        events += make_events(symbol, *random_walk(600, seed))
    # interleave the symbols in every batch, as ingestion would send them
    events.sort(key=lambda e: (e.event_time_us, e.symbol))
    for batch in batches("score", events, size=200):
        assert (await role.on_batch("sender", batch))["alerts"] == 0
    assert ctx.services["ledger"].records == [] and role.status()["symbols"] == 2


async def test_redelivered_events_are_not_scored_twice():
    ctx = fake_ctx()
    role = AnomalyRole(ctx)
    events = make_events("BTCUSD", *random_walk(150, seed=4))
    first, second = batches("score", events, size=100)
    assert await role.on_batch("a", first) == {"scored": 100, "duplicates": 0, "alerts": 0}
    assert await role.on_batch("a", first) == {"scored": 0, "duplicates": 100, "alerts": 0}
    # a batch overlapping the old one, with an id repeated inside it
    mixed = events[90:150] + events[140:141]
    ack = await role.on_batch("b", batches("score", mixed, size=100)[0])
    assert ack == {"scored": 50, "duplicates": 11, "alerts": 0}
    assert role.status()["scored"] == 150 and role.status()["duplicates"] == 111


@pytest.mark.parametrize("items, ids, why", [
    ([["not", "an", "event"]], ["x"], "not a market event"),
    ([None], ["x"], "not a market event"),
    ("event-id", None, "event id"),  # a good event listed under another id
    ("bad-price", None, "out of range"),
    ("bad-time", None, "event time"),
])
async def test_malformed_batches_are_refused_and_the_role_keeps_working(items, ids, why):
    ctx = fake_ctx()
    role = AnomalyRole(ctx)
    good = make_events("BTCUSD", *random_walk(120, seed=5))
    if items == "event-id":
        items, ids = [good[0].to_wire()], ["someone-else"]
    elif items in ("bad-price", "bad-time"):
        wire = good[0].to_wire()
        wire[4 if items == "bad-price" else 8] = -1.0 if items == "bad-price" else 2**70
        items, ids = [wire], [good[0].event_id]
    with pytest.raises(ticks.BatchRefused, match=why):
        await role.on_batch("rogue", ticks.Batch("score", 1, items, ids))
    assert role.status()["refused"] == 1 and role.status()["scored"] == 0
    assert (await role.on_batch("a", batches("score", good, size=200)[0]))["scored"] == 120


async def test_symbols_are_bounded():
    ctx = fake_ctx({"anomaly": {"max_symbols": 2}})
    role = AnomalyRole(ctx)
    for i, symbol in enumerate(("A", "B", "C")):
        await role.on_batch("a", batches("score", make_events(symbol, *random_walk(20, seed=i)))[0])
    assert role.status()["symbols"] == 2 and role.status()["symbols_evicted"] == 1


_ODD = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=5), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=2), st.none()))


@settings(max_examples=150, deadline=None)
@given(field=st.integers(0, 13), value=_ODD, keep_id=st.booleans())
def test_any_damaged_event_is_refused_or_scored_never_a_crash(field, value, keep_id):
    """One field of a good event replaced by anything: the role answers or refuses, and stays usable."""
    from node.roles.risk import RiskRole

    async def main():
        ctx = fake_ctx()
        anomaly, risk = AnomalyRole(ctx), RiskRole(ctx)
        good = make_events("BTCUSD", *random_walk(3, seed=6))
        wire = good[0].to_wire()
        wire[field] = value
        ids = [good[0].event_id if keep_id else "x", good[1].event_id]
        for role in (anomaly, risk):
            try:
                await role.on_batch("fuzz", ticks.Batch(role.name, 1, [wire, good[1].to_wire()], ids))
            except ticks.BatchRefused:
                pass
            await role.on_batch("fuzz", ticks.Batch(role.name, 2, [good[2].to_wire()], [good[2].event_id]))

    trio.run(main)


@pytest.mark.parametrize("settings, what", [
    ({"max_symbol": 3}, "unknown setting"),
    ({"max_symbols": 0}, "max_symbols"),
    ({"detector": {"threshold": 2.0}}, "threshold"),
    ({"detector": {"no_such_field": 1}}, "no_such_field"),
])
def test_bad_settings_are_config_errors(settings, what):
    with pytest.raises(ConfigError, match=what):
        AnomalyRole(fake_ctx({"anomaly": settings}))

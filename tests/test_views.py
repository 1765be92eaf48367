"""The network-wide views against one real ledger (no network): joins, filters, argument errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import trio

from chain.ledger import Ledger, LedgerConfig
from node import views
from node.identity import Identity
from node.protocols.control import CommandError, CommandRegistry

FAST = LedgerConfig(max_batch_records=200, max_batch_delay=0.01, verify_interval=math.inf)


@pytest.fixture
async def registry(tmp_path):
    identity = Identity.generate()
    ledger = Ledger(tmp_path, identity, FAST)
    control = CommandRegistry()
    views.register(control, SimpleNamespace(ledger=ledger, record=ledger.append), identity)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        yield SimpleNamespace(control=control, ledger=ledger, me=identity.peer_id)
        nursery.cancel_scope.cancel()


async def run(reg, name: str, args: dict | None = None, operator: str = "12D3KooWop") -> dict:
    return await reg.control.get(name)(args or {}, operator)


async def add_alert(reg, alert_id: str, symbol: str) -> None:
    await reg.ledger.append("anomaly_alert_created", {"alert_id": alert_id, "symbol": symbol, "score": 0.9,
                                                      "status": "pending_review"}, reg.me)


async def test_alert_status_is_the_newest_review_with_full_history(registry):
    await add_alert(registry, "al-1", "BTCUSD")
    await add_alert(registry, "al-2", "ETHUSD")
    await add_alert(registry, "al-1", "BTCUSD")  # the same alert recorded again: listed once
    first = await run(registry, "review", {"alert_id": "al-1", "status": "false_positive"}, operator="op-a")
    assert first["alert"]["status"] == "false_positive"
    second = await run(registry, "review", {"alert_id": "al-1", "status": "confirmed", "notes": "on reflection"},
                       operator="op-b")
    assert second["alert"]["status"] == "confirmed"
    assert [(r["decision"], r["operator"]) for r in second["alert"]["reviews"]] == [
        ("false_positive", "op-a"), ("confirmed", "op-b")]

    listed = await run(registry, "alerts")
    assert sorted(a["alert_id"] for a in listed["alerts"]) == ["al-1", "al-2"]
    assert [a["alert_id"] for a in (await run(registry, "alerts", {"status": "pending_review"}))["alerts"]] == ["al-2"]
    assert [a["alert_id"] for a in (await run(registry, "alerts", {"symbol": "BTCUSD"}))["alerts"]] == ["al-1"]
    assert (await run(registry, "alerts", {"limit": 1}))["count"] == 1


@pytest.mark.parametrize("name, args, code", [
    ("alerts", {"status": "weird"}, "bad_request"),
    ("alerts", {"limit": 0}, "bad_request"),
    ("alerts", {"symbol": 5}, "bad_request"),
    ("review", {"alert_id": "al-1"}, "bad_request"),
    ("review", {"alert_id": "al-1", "status": "confirmed", "notes": 7}, "bad_request"),
    ("review", {"alert_id": "al-404", "status": "dismissed"}, "not_found"),
    ("risk history", {"limit": "ten"}, "bad_request"),
    ("risk latest", {}, "unavailable"),
    ("risk portfolio", {}, "unavailable"),
    ("risk portfolio set", {}, "bad_request"),
    ("risk portfolio set", {"weights": {"BTCUSD": -0.5, "ETHUSD": 1.5}}, "invalid_weights"),
    ("risk portfolio set", {"weights": {"BTCUSD": 0.5}}, "invalid_weights"),
    ("risk portfolio set", {"weights": {"BTCUSD": True}}, "invalid_weights"),
    ("risk portfolio set", {"weights": {"": 1.0}}, "invalid_weights"),
])
async def test_bad_requests_fail_with_stable_codes(registry, name, args, code):
    await add_alert(registry, "al-1", "BTCUSD")
    with pytest.raises(CommandError) as err:
        await run(registry, name, args)
    assert err.value.code == code, str(err.value)


async def test_risk_views_and_portfolio(registry):
    set_ = await run(registry, "risk portfolio set", {"weights": {"BTCUSD": 0.25, "ETHUSD": 0.75}}, operator="op-a")
    assert set_ == {"weights": {"BTCUSD": 0.25, "ETHUSD": 0.75}, "set_by": "op-a", "recorded_by": registry.me}
    current = await run(registry, "risk portfolio")
    assert current["weights"] == {"BTCUSD": 0.25, "ETHUSD": 0.75} and current["set_by"] == "op-a"

    await registry.ledger.append("risk_snapshot_computed", {"symbols": {"BTCUSD": {"var95": 0.1},
                                                                        "ETHUSD": {"var95": 0.2}},
                                                            "portfolio": {"var95": 0.15}, "scope": "here"}, registry.me)
    await registry.ledger.append("risk_snapshot_computed", {"symbols": {"BTCUSD": {"var95": 0.3}},
                                                            "portfolio": {"var95": 0.35}, "scope": "here"}, registry.me)
    latest = await run(registry, "risk latest")
    assert {s: f["var95"] for s, f in latest["symbols"].items()} == {"BTCUSD": 0.3, "ETHUSD": 0.2}
    assert latest["portfolios"][registry.me]["portfolio"] == {"var95": 0.35}
    history = await run(registry, "risk history", {"symbol": "ETHUSD"})
    assert [s["var95"] for s in history["snapshots"]] == [0.2]
    assert (await run(registry, "risk history", {"limit": 1}))["count"] == 1


async def test_without_a_ledger_every_view_says_unavailable():
    control = CommandRegistry()
    views.register(control, None, Identity.generate())
    for name in ("alerts", "review", "risk latest", "risk history", "risk portfolio"):
        with pytest.raises(CommandError) as err:
            await control.get(name)({"alert_id": "al-1", "status": "confirmed"}, "op")
        assert err.value.code == "unavailable"

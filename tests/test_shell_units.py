"""The shell's pure parts: the command table (parsing, lookup, help), completion, rendering, toolbar.

A fake session stands in for the node, so these run in milliseconds; the real thing is driven
against a testnet in test_shell_net.py.
"""

from __future__ import annotations

import io

import pytest
from prompt_toolkit.document import Document

from shell import render
from shell.commands import TABLE
from shell.completion import Catalog, ShellCompleter
from shell.context import Context
from shell.dispatch import execute, prepare
from shell.errors import NotServed, UsageError
from shell.session import Session, Target
from shell.toolbar import ToolbarState

PEERS = [
    {"peer_id": "12D3KooWIngest", "name": "ingestion-1", "roles": ["ingestion"], "state": "online",
     "capabilities": ["store_market_events"], "addrs": ["/ip4/127.0.0.1/tcp/4002"], "last_seen_s": 0.5},
    {"peer_id": "12D3KooWIot", "name": "iot-1", "roles": ["iot"], "state": "stale",
     "capabilities": ["mqtt_bridge"], "addrs": ["/ip4/127.0.0.1/tcp/4003/p2p/12D3KooWIot"], "last_seen_s": 9.0},
]
TICKS = [{"symbol": s, "price": p, "event_time_us": t, "asset_class": "crypto"}
         for t, (s, p) in enumerate([("BTCUSD", 100.0), ("ETHUSD", 10.0), ("BTCUSD", 110.0), ("BTCUSD", 90.0)])]


class FakeClient:
    """Answers like a bootstrap node at /boot and an ingestion node at /ip4/.../4002."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict]] = []

    def request(self, address: str, command: str, args: dict, timeout: float) -> dict:
        from node.errors import RemoteError

        self.calls.append((address, command, args))
        ingestion = address.startswith("/ip4/127.0.0.1/tcp/4002")
        answers = {
            "status": {"name": "ingestion-1" if ingestion else "bootstrap-1", "peer_id": "12D3KooWBoot",
                       "roles": ["bootstrap"], "peers_online": 1,
                       "ledger": {"height": 7, "verified": True, "counts": {"chains": 2, "blocks": 9}}},
            "commands": {"commands": {"status": "", "peers": "", **({"ticks recent": ""} if ingestion else {})}},
            "peers": {"peers": PEERS},
            "alerts": {"alerts": [{"alert_id": "al-0123456789ab", "symbol": "BTCUSD", "status": "pending_review"}]},
        }
        if command == "ticks recent" and ingestion:
            return {"ticks": TICKS}
        if command not in answers:
            raise RemoteError("unknown_command", f"unknown command {command!r}")
        return answers[command]


@pytest.fixture
def ctx() -> Context:
    return Context(Session(FakeClient(), Target("/boot", "bootstrap-1", "12D3KooWBoot", ["bootstrap"])), TABLE)


def complete(ctx: Context, text: str) -> list[str]:
    completer = ShellCompleter(ctx, Catalog(ctx))
    return [c.text for c in completer.get_completions(Document(text), None)]


def test_every_command_has_help_and_a_unique_name():
    names = [c.name for c in TABLE.commands]
    assert len(names) == len(set(names))
    for required in ("status", "peers", "caps", "route", "ticks", "alerts", "review", "risk latest", "risk history",
                     "risk portfolio", "risk portfolio set", "ledger heads", "ledger tail", "ledger show",
                     "ledger find", "ledger verify", "ledger prove", "iot stats", "sim inject", "metrics", "connect",
                     "quit", "watch alerts", "watch peers", "watch prices", "help"):
        assert required in names
    assert all(c.summary for c in TABLE.commands)


def test_parsing_flags_positionals_and_usage_errors():
    review = TABLE.get("review")
    assert review.parse(["al-1", "confirmed", "--notes", "checked by hand"]) == {
        "alert_id": "al-1", "decision": "confirmed", "notes": "checked by hand"}
    with pytest.raises(UsageError, match=r"must be one of .*\nusage: review ALERT_ID"):
        review.parse(["al-1", "maybe"])
    with pytest.raises(UsageError, match="missing ALERT_ID, DECISION"):
        review.parse([])
    ticks = TABLE.get("ticks")
    assert ticks.parse(["BTCUSD", "--limit=5"]) == {"symbol": "BTCUSD", "limit": 5}
    with pytest.raises(UsageError, match="did you mean --limit"):
        ticks.parse(["--limt", "5"])
    with pytest.raises(UsageError, match="bad --limit"):
        ticks.parse(["--limit", "zero"])
    weights = TABLE.get("risk portfolio set").parse(["BTCUSD=0.6", "ETHUSD=0.4"])
    assert weights == {"weights": [("BTCUSD", 0.6), ("ETHUSD", 0.4)]}
    assert TABLE.get("sim inject").parse(["BTCUSD", "--spike", "-30"])["spike"] == -30.0


def test_lookup_prefers_the_longest_name_and_suggests_close_matches(ctx):
    assert prepare(ctx, "risk portfolio set A=1")[0].name == "risk portfolio set"
    assert prepare(ctx, "risk portfolio")[0].name == "risk portfolio"
    with pytest.raises(UsageError, match="did you mean `status`"):
        prepare(ctx, "statsu")
    with pytest.raises(UsageError, match="`risk` needs one of: history, latest, portfolio"):
        prepare(ctx, "risk")
    with pytest.raises(UsageError, match="did you mean `risk latest`"):
        prepare(ctx, "risk lates")
    with pytest.raises(UsageError, match="cannot parse"):
        prepare(ctx, 'review "unterminated')


def test_help_lists_commands_and_shows_one_commands_usage(ctx):
    assert "sim inject" in execute(ctx, "help").data["commands"]
    one = execute(ctx, "help review").data
    assert one["usage"] == "review ALERT_ID confirmed|false_positive|dismissed [--notes TEXT]"
    assert set(execute(ctx, "help ledger").data["commands"]) >= {"ledger heads", "ledger prove"}


def test_completion_of_commands_flags_and_node_values(ctx):
    assert "status" in complete(ctx, "sta")
    assert complete(ctx, "risk ") == ["history", "latest", "portfolio"]
    assert complete(ctx, "risk portfolio ") == ["set"]
    assert complete(ctx, "ticks --") == ["--limit"]
    assert complete(ctx, "alerts --status ") == ["pending_review", "confirmed", "false_positive", "dismissed"]
    assert set(complete(ctx, "connect ")) >= {"ingestion-1", "iot-1", "12D3KooWIngest"}
    assert complete(ctx, "connect io") == ["iot-1"]
    assert complete(ctx, "review ") == ["al-0123456789ab"]
    assert complete(ctx, "review al-0123456789ab ") == ["confirmed", "false_positive", "dismissed"]
    assert complete(ctx, "ticks ") == ["BTCUSD", "ETHUSD"]  # fetched from the ingestion peer
    assert complete(ctx, "risk portfolio set BTCUSD=0.5 ") == ["BTCUSD=", "ETHUSD="]
    assert complete(ctx, "nosuchcommand ") == []


def test_ticks_go_to_an_ingestion_peer_when_the_node_has_none(ctx):
    result = execute(ctx, "ticks --limit 2")
    assert result.data["source"] == "ingestion-1" and len(result.data["ticks"]) == 4
    assert ctx.session._client.calls[-1] == ("/ip4/127.0.0.1/tcp/4002/p2p/12D3KooWIngest", "ticks recent", {"limit": 2})


def test_a_command_the_node_does_not_serve_says_so(ctx):
    with pytest.raises(NotServed, match="does not serve `risk latest`"):
        execute(ctx, "risk latest")


def test_watch_prices_builds_sparklines_in_event_time_order(ctx):
    prices = execute(ctx, "watch prices").data["prices"]
    assert prices["BTCUSD"]["last"] == 90.0 and prices["BTCUSD"]["points"] == 3
    assert prices["BTCUSD"]["sparkline"] == "▅█▁"
    assert prices["ETHUSD"]["sparkline"] == "▅"


def test_connect_resolves_names_and_prefixes_through_the_peer_table(ctx):
    assert ctx.session.resolve("ingest")[0] == "/ip4/127.0.0.1/tcp/4002/p2p/12D3KooWIngest"
    assert ctx.session.resolve("12D3KooWIot")[1] == "iot-1"
    with pytest.raises(UsageError, match="no peer called 'risk-9'"):
        ctx.session.resolve("risk-9")
    assert execute(ctx, "connect ingestion-1").data["name"] == "ingestion-1"


def test_render_is_plain_without_a_terminal_and_tables_align():
    out = io.StringIO()
    render.emit(render.table([{"a": "x", "b": 1.5}, {"a": "longer", "b": None}], [("a", "A"), ("b", "B")]), out)
    assert out.getvalue() == "A       B\nx       1.5\nlonger  -\n"
    assert render.sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert render.sparkline([5, 5]) == "▅▅"


def test_toolbar_shows_node_roles_peers_and_ledger_state(ctx):
    toolbar = ToolbarState(ctx.session)
    toolbar.refresh()
    text = render.plain(toolbar.fragments())
    assert "bootstrap-1" in text and "peers 1 online" in text and "ledger 7" in text and "verified" in text

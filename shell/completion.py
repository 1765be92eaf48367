"""Tab completion: command words, flags, and values fetched from the node (cached briefly).

The completer reads the command table for structure and a `Catalog` for values. The catalog
asks the node (peers, alert IDs, symbols) at most once per CACHE_TTL_S per source; the
interactive shell also warms it in the background, and prompt-toolkit runs this completer in a
thread (ThreadedCompleter), so a slow node never freezes typing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from shell.cmd_pipeline import fetch_ticks
from shell.context import Context
from shell.errors import ShellError
from shell.table import Command, Param

CACHE_TTL_S = 10.0
RECORD_TYPES = ("anomaly_alert_created", "anomaly_alert_reviewed", "risk_snapshot_computed", "portfolio_set",
                "peer_joined", "checkpoint", "batch_routed", "routing_failed")
Values = list[tuple[str, str]]  # (value, description)


class Catalog:
    """Completion values by source name, fetched from the attached node and cached per node."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[float, Values]] = {}
        self._fetchers: dict[str, Callable[[], Values]] = {
            "peers": self._peers, "peer_ids": self._peer_ids, "capabilities": self._capabilities,
            "symbols": self._symbols, "alerts": self._alerts, "commands": self._commands,
            "symbol_weights": lambda: [(f"{s}=", d) for s, d in self.values("symbols")],
            "record_types": lambda: [(t, "") for t in RECORD_TYPES],
        }

    def values(self, source: str) -> Values:
        """Cached values of `source`; [] when the node cannot say (completion never raises)."""
        key = (source, self._ctx.session.target.address)
        with self._lock:
            hit = self._cache.get(key)
        if hit and time.monotonic() - hit[0] < CACHE_TTL_S:
            return hit[1]
        fetch = self._fetchers.get(source)
        try:
            found = fetch() if fetch else []
        except (ShellError, KeyError, TypeError):  # unreachable node or an answer of another shape
            found = hit[1] if hit else []
        with self._lock:
            self._cache[key] = (time.monotonic(), found)
        return found

    def warm(self) -> None:
        for source in ("peers", "symbols", "alerts"):
            self.values(source)

    def _peers(self) -> Values:
        out: Values = []
        for p in self._ctx.session.peers():
            desc = f"{','.join(p.get('roles', []))} {p.get('state', '')}"
            if p.get("name"):
                out.append((p["name"], desc))
            out.append((p["peer_id"], p.get("name", "")))
        return out

    def _peer_ids(self) -> Values:
        target = self._ctx.session.target
        own = [(target.peer_id, target.name)] if target.peer_id else []
        return own + [(p["peer_id"], p.get("name", "")) for p in self._ctx.session.peers()]

    def _capabilities(self) -> Values:
        return [(c, "") for c in sorted({c for p in self._ctx.session.peers() for c in p.get("capabilities", [])})]

    def _symbols(self) -> Values:
        ticks, _ = fetch_ticks(self._ctx, None, 200)
        return [(s, "") for s in sorted({t["symbol"] for t in ticks})]

    def _alerts(self) -> Values:
        alerts = self._ctx.session.call("alerts", {"limit": 100}).get("alerts", [])
        return [(a["alert_id"], f"{a.get('symbol', '')} {a.get('status', '')}") for a in alerts if a.get("alert_id")]

    def _commands(self) -> Values:
        return [(c.name, c.summary) for c in self._ctx.table.commands]


def _flag_values(param: Param, catalog: Catalog) -> Values:
    if param.choices:
        return [(c, "") for c in param.choices]
    return catalog.values(param.source) if param.source else []


class ShellCompleter(Completer):
    def __init__(self, ctx: Context, catalog: Catalog) -> None:
        self._ctx = ctx
        self._catalog = catalog

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        words = text.split()
        current = "" if not words or text[-1].isspace() else words.pop()
        for value, meta in self.candidates(words, current):
            if value.startswith(current) and value != current:
                yield Completion(value, start_position=-len(current), display_meta=meta)

    def candidates(self, words: list[str], current: str) -> Values:
        table = self._ctx.table
        command: Command | None = None
        used = 0
        for n in range(1, len(words) + 1):
            found = table.get(" ".join(words[:n]))
            if found is not None:
                command, used = found, n
        # Still typing the command's name: offer the next word of any command name.
        if command is None or (used == len(words) and table.children(words)):
            if command is None and words and not table.children(words):
                return []
            names = [(w, self._summary(words, w)) for w in table.children(words)]
            if command is None:
                return names
            return names + self._arguments(command, [], current)
        return self._arguments(command, words[used:], current)

    def _summary(self, prefix: list[str], word: str) -> str:
        command = self._ctx.table.get(" ".join([*prefix, word]))
        return command.summary if command else "..."

    def _arguments(self, command: Command, rest: list[str], current: str) -> Values:
        if command.name == "help":
            return self._catalog.values("commands") if not rest else []
        flags = command.flags()
        if rest and rest[-1] in flags:
            return _flag_values(flags[rest[-1]], self._catalog)
        positional_count, i = 0, 0
        while i < len(rest):
            if rest[i] in flags:
                i += 2
                continue
            if not rest[i].startswith("--"):
                positional_count += 1
            i += 1
        unused_flags = [(name, p.help) for name, p in flags.items() if name not in rest]
        if current.startswith("-"):
            return unused_flags
        positionals = command.positionals()
        if positionals and positionals[-1].repeat and positional_count >= len(positionals):
            positional_count = len(positionals) - 1
        if positional_count < len(positionals):
            param = positionals[positional_count]
            return _flag_values(param, self._catalog) or ([] if current else unused_flags)
        return unused_flags

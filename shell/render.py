"""Turning command results into text: tables, key/value blocks, sparklines, styled fragments.

Everything renders to prompt-toolkit style fragments `[(style, text), ...]`; `emit` prints them
with colour on a terminal and as plain text otherwise (a pipe, NO_COLOR, TERM=dumb), so the
same renderer serves people and scripts. Pure functions, no I/O except `emit`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from prompt_toolkit.styles import Style

Fragments = list[tuple[str, str]]
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"

STYLE = Style.from_dict({
    "head": "bold", "dim": "#888888", "ok": "ansigreen", "warn": "ansiyellow", "err": "ansired bold",
    "name": "ansicyan", "spark": "ansiblue",
    "bottom-toolbar": "noreverse bg:#222222 #dddddd", "bottom-toolbar.ok": "ansigreen", "bottom-toolbar.err": "ansired",
})
STATE_STYLES = {"online": "class:ok", "stale": "class:warn", "gone": "class:err", "pending_review": "class:warn",
                "confirmed": "class:err", "false_positive": "class:dim", "dismissed": "class:dim"}


def colour_wanted(stream: TextIO) -> bool:
    """Colour only on a real terminal that has not asked for none."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def plain(fragments: Fragments) -> str:
    return "".join(text for _, text in fragments)


def emit(fragments: Fragments, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    text = plain(fragments)
    if text and not text.endswith("\n"):
        fragments = [*fragments, ("", "\n")]
    if colour_wanted(stream):
        from prompt_toolkit import print_formatted_text
        from prompt_toolkit.formatted_text import FormattedText

        print_formatted_text(FormattedText(fragments), style=STYLE, end="", file=stream)
    else:
        stream.write(plain(fragments))
        stream.flush()


def line(*parts: tuple[str, str] | str) -> Fragments:
    out: Fragments = [p if isinstance(p, tuple) else ("", p) for p in parts]
    out.append(("", "\n"))
    return out


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={cell(v)}" for k, v in value.items())
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], *,
          styles: dict[str, dict[str, str]] | None = None, empty: str = "(nothing)") -> Fragments:
    """A left-aligned table; `styles[column][value]` colours a cell (e.g. a peer's state)."""
    if not rows:
        return line(("class:dim", empty))
    texts = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(header), *(len(t[i]) for t in texts)) for i, (_, header) in enumerate(columns)]
    out: Fragments = []
    for i, (_, header) in enumerate(columns):
        last = i == len(columns) - 1
        out.append(("class:head", header if last else header.ljust(widths[i]) + "  "))
    out.append(("", "\n"))
    styles = styles or {}
    for row_texts in texts:
        for i, (key, _) in enumerate(columns):
            text = row_texts[i]
            pad = text.ljust(widths[i]) if i < len(columns) - 1 else text
            out.append((styles.get(key, {}).get(text, ""), pad + ("  " if i < len(columns) - 1 else "")))
        out.append(("", "\n"))
    return out


def kv(pairs: Iterable[tuple[str, Any]]) -> Fragments:
    pairs = list(pairs)
    width = max((len(k) for k, _ in pairs), default=0)
    out: Fragments = []
    for key, value in pairs:
        out += line(("class:dim", f"{key + ':':<{width + 1}} "), cell(value))
    return out


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """The last `width` values as block characters scaled between their min and max."""
    values = list(values)[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARK_BLOCKS[len(SPARK_BLOCKS) // 2] * len(values)
    scale = (len(SPARK_BLOCKS) - 1) / (high - low)
    return "".join(SPARK_BLOCKS[int(round((v - low) * scale))] for v in values)


def ago(timestamp_ms: float | None, now: float | None = None) -> str:
    if not timestamp_ms:
        return "-"
    seconds = max(0.0, (now or time.time()) - timestamp_ms / 1000)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def short(peer_id: str | None, n: int = 8) -> str:
    return "-" if not peer_id else ("…" + peer_id[-n:] if len(peer_id) > n + 1 else peer_id)

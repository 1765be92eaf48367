"""The command table's types: what a command is, how its words are parsed, how it is found.

A `Command` declares its words, parameters (positionals and `--flags`, each naming the
completion source it draws values from) and one function. Help, usage lines, tab completion
and dispatch all read these declarations, so they cannot disagree.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shell.errors import UsageError
from shell.render import Fragments


@dataclass(frozen=True)
class Param:
    """`SYMBOL` (positional) or `--limit` (flag taking one value; `flag_only` for a bare switch)."""

    name: str
    help: str = ""
    source: str | None = None  # completion source, see shell.completion.Catalog
    choices: tuple[str, ...] = ()
    required: bool = False
    repeat: bool = False  # positional that takes every remaining word
    convert: Callable[[str], Any] = str
    metavar: str = ""

    @property
    def is_flag(self) -> bool:
        return self.name.startswith("--")

    @property
    def key(self) -> str:
        return self.name.lstrip("-").lower().replace("-", "_")

    def usage(self) -> str:
        if self.is_flag:
            text = f"{self.name} {self.metavar or self.key.upper()}"
            return text if self.required else f"[{text}]"
        text = self.name + (" ..." if self.repeat else "")
        if self.choices and not self.metavar:
            text = "|".join(self.choices)
        return text if self.required else f"[{text}]"


@dataclass
class Result:
    """What a command produced: `data` for --json, `view` for people."""

    data: dict[str, Any]
    view: Fragments = field(default_factory=list)


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    summary: str
    run: Callable[..., Result]  # (ctx, args) -> Result; blocking, runs in a worker thread
    params: tuple[Param, ...] = ()
    detail: str = ""
    live: bool = False  # a `watch` view: refreshed in place in the interactive shell

    @property
    def name(self) -> str:
        return " ".join(self.words)

    @property
    def usage(self) -> str:
        return " ".join([self.name, *(p.usage() for p in self.params)])

    def flags(self) -> dict[str, Param]:
        return {p.name: p for p in self.params if p.is_flag}

    def positionals(self) -> list[Param]:
        return [p for p in self.params if not p.is_flag]

    def parse(self, words: Sequence[str]) -> dict[str, Any]:
        """Arguments by key; raises UsageError naming the problem and showing the usage line."""
        flags, positionals = self.flags(), self.positionals()
        args: dict[str, Any] = {}
        loose: list[str] = []
        i = 0
        while i < len(words):
            word = words[i]
            if word.startswith("--") and len(word) > 2:
                name, eq, value = word.partition("=")
                param = flags.get(name)
                if param is None:
                    hint = difflib.get_close_matches(name, list(flags), n=1)
                    self._fail(f"unknown option {name}" + (f" (did you mean {hint[0]}?)" if hint else ""))
                if not eq:
                    i += 1
                    if i >= len(words):
                        self._fail(f"{name} needs a value")
                    value = words[i]
                args[param.key] = self._convert(param, value)
            else:
                loose.append(word)
            i += 1
        for param in positionals:
            if not loose:
                break
            if param.repeat:
                args[param.key] = [self._convert(param, w) for w in loose]
                loose = []
            else:
                args[param.key] = self._convert(param, loose.pop(0))
        if loose:
            self._fail(f"unexpected argument {loose[0]!r}")
        missing = [p.name for p in self.params if p.required and p.key not in args]
        if missing:
            self._fail(f"missing {', '.join(missing)}")
        return args

    def _convert(self, param: Param, value: str) -> Any:
        if param.choices and value not in param.choices:
            self._fail(f"{param.name} must be one of {', '.join(param.choices)}, not {value!r}")
        try:
            return param.convert(value)
        except (TypeError, ValueError) as exc:
            self._fail(f"bad {param.name} {value!r}: {exc}")

    def _fail(self, message: str) -> None:
        raise UsageError(f"{message}\nusage: {self.usage}")


class Table:
    """Commands by their words; finds the longest match for a typed line."""

    def __init__(self, commands: Sequence[Command]) -> None:
        self.commands = list(commands)
        self._by_words = {c.words: c for c in commands}
        if len(self._by_words) != len(commands):
            raise ValueError("two commands with the same words")

    def get(self, name: str) -> Command | None:
        return self._by_words.get(tuple(name.split()))

    def children(self, prefix: Sequence[str]) -> list[str]:
        """Words that may follow `prefix` in some command name."""
        n = len(prefix)
        return sorted({c.words[n] for c in self.commands if len(c.words) > n and c.words[:n] == tuple(prefix)})

    def split(self, line: str) -> list[str]:
        try:
            return shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot parse the line: {exc}") from None

    def lookup(self, words: Sequence[str]) -> tuple[Command, list[str]]:
        """(command, its remaining words) for the longest command name `words` starts with."""
        for n in range(min(len(words), 4), 0, -1):
            command = self._by_words.get(tuple(words[:n]))
            if command is not None:
                return command, list(words[n:])
        raise UsageError(self.unknown(words))

    def unknown(self, words: Sequence[str]) -> str:
        if not words:
            return "empty command"
        subs = self.children(words[:1])
        if subs:
            close = difflib.get_close_matches(words[1], subs, n=1) if len(words) > 1 else []
            hint = f"; did you mean `{words[0]} {close[0]}`?" if close else ""
            return f"`{words[0]}` needs one of: {', '.join(subs)}" + (
                f" (not {words[1]!r}{hint})" if len(words) > 1 else "")
        names = sorted({c.words[0] for c in self.commands} | {c.name for c in self.commands})
        close = difflib.get_close_matches(" ".join(words[:2]), names, n=1) or difflib.get_close_matches(words[0], names, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        return f"unknown command {words[0]!r}{hint} (`help` lists the commands)"

"""Run one typed line: split, find the command in the table, parse its arguments, call it.

Blocking (the command talks to a node); both `-c` and the interactive prompt come through here,
so scripts and people share one code path.
"""

from __future__ import annotations

from shell.context import Context
from shell.errors import UsageError
from shell.table import Command, Result


def prepare(ctx: Context, line: str) -> tuple[Command, dict]:
    """The command a line names and its parsed arguments (raises UsageError). No network."""
    words = ctx.table.split(line)
    if not words:
        raise UsageError("empty command (`help` lists the commands)")
    command, rest = ctx.table.lookup(words)
    if command.name in ("help",):
        return command, {"command": rest}
    return command, command.parse(rest)


def execute(ctx: Context, line: str) -> Result:
    command, args = prepare(ctx, line)
    return command.run(ctx, args)

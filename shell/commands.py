"""The command table: the single list that help, completion and dispatch all read.

Each command is one small function in `cmd_node`, `cmd_pipeline`, `cmd_ledger` or `cmd_watch`;
this module adds `help` and assembles `TABLE`.
"""

from __future__ import annotations

from typing import Any

from shell import cmd_ledger, cmd_node, cmd_pipeline, cmd_watch
from shell import render as r
from shell.context import Context
from shell.errors import UsageError
from shell.table import Command, Param, Result, Table


def help_(ctx: Context, args: dict[str, Any]) -> Result:
    words = args.get("command") or []
    if not words:
        width = max(len(c.name) for c in ctx.table.commands)
        view: r.Fragments = []
        for c in ctx.table.commands:
            view += r.line(("class:name", f"{c.name:<{width}}  "), c.summary)
        view += r.line(("class:dim", "`help COMMAND` for its arguments; Tab completes; Ctrl-C cancels; Ctrl-D leaves."))
        return Result({"commands": {c.name: c.summary for c in ctx.table.commands}}, view)
    command = ctx.table.get(" ".join(words))
    if command is None:
        subs = ctx.table.children(words)
        if subs:
            found = [ctx.table.get(" ".join([*words, s])) for s in subs]
            view = []
            for c in [c for c in found if c is not None]:
                view += r.line(("class:name", c.usage), "  ", ("class:dim", c.summary))
            return Result({"commands": {c.name: c.summary for c in found if c}}, view)
        raise UsageError(ctx.table.unknown(words))
    view = r.line(("class:head", "usage: "), command.usage) + r.line(command.summary)
    for p in command.params:
        extra = f" (one of {', '.join(p.choices)})" if p.choices else ""
        view += r.line(("class:name", f"  {p.name:<12} "), p.help + extra)
    if command.detail:
        view += r.line(("class:dim", command.detail))
    data = {"name": command.name, "usage": command.usage, "summary": command.summary,
            "params": [{"name": p.name, "help": p.help, "required": p.required, "choices": list(p.choices)}
                       for p in command.params]}
    return Result(data, view)


HELP = Command(("help",), "list the commands, or show one command's arguments", help_,
               (Param("COMMAND", "a command name", source="commands", repeat=True),))

TABLE = Table([HELP, *cmd_node.COMMANDS, *cmd_pipeline.COMMANDS, *cmd_ledger.COMMANDS, *cmd_watch.COMMANDS])

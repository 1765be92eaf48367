"""The interactive prompt: prompt-toolkit on asyncio, every node call in a worker thread.

The ControlClient's trio loop lives in its own thread (node.control_client); here commands run
through `asyncio.to_thread`, so the prompt stays responsive and Ctrl-C can abandon a slow
command. A background task refreshes the toolbar and warms the completion catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application
from prompt_toolkit.completion import ThreadedCompleter
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.layout import FormattedTextControl, HSplit, Layout, Window
from prompt_toolkit.output import ColorDepth

from shell import render as r
from shell.completion import Catalog, ShellCompleter
from shell.context import Context, ExitShell
from shell.dispatch import prepare
from shell.errors import ShellError
from shell.table import Command
from shell.toolbar import REFRESH_S, ToolbarState

T = TypeVar("T")
CATALOG_EVERY = 3  # warm the completion catalog every N toolbar refreshes
DEFAULT_WATCH_S = 2.0


class Cancelled(Exception):
    """The operator pressed Ctrl-C while a command ran."""


def error_view(exc: ShellError) -> r.Fragments:
    first, *rest = str(exc).splitlines() or [""]
    out = r.line(("class:err", "error: "), first)
    for extra in rest:
        out += r.line(("class:dim", extra))
    return out


async def run_cancellable(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in a thread; Ctrl-C abandons it (its answer, if any, is dropped)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        if task.cancelled() and not _current_cancelling():
            raise Cancelled() from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _current_cancelling() -> int:
    current = asyncio.current_task()
    return current.cancelling() if current is not None else 0


async def live_view(ctx: Context, command: Command, args: dict[str, Any]) -> None:
    """Redraw `command`'s frame every few seconds until any key is pressed."""
    every = max(0.5, float(args.get("every", DEFAULT_WATCH_S)))
    frame: list[r.Fragments] = [r.line(("class:dim", "loading…"))]
    footer = [("class:dim", f"{command.name} on {ctx.session.target.label}, every {every:g} s; press any key to stop")]
    keys = KeyBindings()

    @keys.add("<any>")
    @keys.add("c-c")
    def _stop(event: Any) -> None:
        event.app.exit()

    app: Application[None] = Application(
        layout=Layout(HSplit([Window(FormattedTextControl(lambda: frame[0]), wrap_lines=False),
                              Window(FormattedTextControl(footer), height=1)])),
        key_bindings=keys, style=r.STYLE, full_screen=False)

    async def refresh() -> None:
        while True:
            try:
                frame[0] = (await asyncio.to_thread(command.run, ctx, args)).view
            except ShellError as exc:
                frame[0] = error_view(exc)
            app.invalidate()
            await asyncio.sleep(every)  # the view's refresh cadence, not synchronisation

    task = asyncio.create_task(refresh())
    try:
        await app.run_async()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _background(prompt: PromptSession, toolbar: ToolbarState, catalog: Catalog) -> None:
    n = 0
    while True:
        await asyncio.to_thread(toolbar.refresh)
        if n % CATALOG_EVERY == 0:
            await asyncio.to_thread(catalog.warm)
        n += 1
        if prompt.app.is_running:
            prompt.app.invalidate()
        await asyncio.sleep(REFRESH_S)  # toolbar cadence


def history_for(path: Path | None) -> FileHistory | InMemoryHistory:
    if path is None:
        return InMemoryHistory()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    except OSError:
        return InMemoryHistory()
    return FileHistory(str(path))


async def interact(ctx: Context, history: Path | None) -> int:
    catalog = Catalog(ctx)
    toolbar = ToolbarState(ctx.session)
    prompt: PromptSession[str] = PromptSession(
        history=history_for(history), completer=ThreadedCompleter(ShellCompleter(ctx, catalog)),
        complete_while_typing=False, bottom_toolbar=toolbar.fragments, style=r.STYLE,
        color_depth=None if r.colour_wanted(sys.stdout) else ColorDepth.DEPTH_1_BIT)
    r.emit(r.line("attached to ", ("class:name", ctx.session.target.label), f" ({', '.join(ctx.session.target.roles)}); ",
                  ("class:dim", "`help` lists the commands, Tab completes, Ctrl-D leaves")))
    background = asyncio.create_task(_background(prompt, toolbar, catalog))
    try:
        while True:
            try:
                line = await prompt.prompt_async(lambda: [("class:name", ctx.session.target.label), ("", "> ")])
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            if not line.strip():
                continue
            try:
                command, args = prepare(ctx, line)
                if command.live:
                    await live_view(ctx, command, args)
                    continue
                result = await run_cancellable(command.run, ctx, args)
                r.emit(result.view)
                if command.name == "connect":
                    toolbar.status = None
            except ExitShell:
                break
            except Cancelled:
                r.emit(r.line(("class:warn", "cancelled")))
            except ShellError as exc:
                r.emit(error_view(exc))
    finally:
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await background
    return 0

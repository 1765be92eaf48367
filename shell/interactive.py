"""The interactive prompt: prompt-toolkit on asyncio, every node call in a worker thread.

The ControlClient's trio loop lives in its own thread (node.control_client); here commands run
in worker threads (`in_thread`), so the prompt stays responsive and Ctrl-C can abandon a slow
command. A background task refreshes the toolbar and warms the completion catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
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
SLOW_HINT_S = 1.0


class Cancelled(Exception):
    """The operator pressed Ctrl-C while a command ran."""


def error_view(exc: ShellError) -> r.Fragments:
    first, *rest = str(exc).splitlines() or [""]
    out = r.line(("class:err", "error: "), first)
    for extra in rest:
        out += r.line(("class:dim", extra))
    return out


def in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """`fn(*args)` in a daemon thread, as a future of this loop.

    Not `asyncio.to_thread`: its executor is joined when the loop closes, so one command
    abandoned with Ctrl-C (still dialling a dead node) would hold up leaving the shell."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def work() -> None:
        try:
            outcome = (True, fn(*args))
        except BaseException as exc:  # handed to the awaiting coroutine, which decides
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: the shell has left, nobody waits for this
            pass

    threading.Thread(target=work, name="quantian-shell-call", daemon=True).start()
    return future


class CommandRunner:
    """Runs one blocking command at a time in a thread; SIGINT (Ctrl-C while it runs) abandons it.

    One SIGINT handler is installed for the whole session (prompt-toolkit's own is turned off:
    at the prompt Ctrl-C is a key, not a signal), so there is no moment where Ctrl-C could
    escape as a KeyboardInterrupt. An abandoned call finishes or times out in its thread and
    its answer is dropped.
    """

    def __init__(self) -> None:
        self._task: asyncio.Future[Any] | None = None

    def install(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._interrupt)

    def uninstall(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    def _interrupt(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        task = self._task = in_thread(fn, *args)
        try:
            done, _ = await asyncio.wait({task}, timeout=SLOW_HINT_S)
            if not done:
                r.emit(r.line(("class:dim", "waiting for the node… (Ctrl-C cancels)")))
            return await task
        except asyncio.CancelledError:
            if task.cancelled() and not _current_cancelling():
                raise Cancelled() from None
            raise
        finally:
            self._task = None


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
                frame[0] = (await in_thread(command.run, ctx, args)).view
            except ShellError as exc:
                frame[0] = error_view(exc)
            app.invalidate()
            await asyncio.sleep(every)  # the view's refresh cadence, not synchronisation

    task = asyncio.create_task(refresh())
    try:
        await app.run_async(handle_sigint=False)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _background(prompt: PromptSession, toolbar: ToolbarState, catalog: Catalog) -> None:
    n = 0
    while True:
        await in_thread(toolbar.refresh)
        if n % CATALOG_EVERY == 0:
            await in_thread(catalog.warm)
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
    runner = CommandRunner()
    runner.install()
    try:
        while True:
            try:
                line = await prompt.prompt_async(lambda: [("class:name", ctx.session.target.label), ("", "> ")],
                                                 handle_sigint=False)
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
                result = await runner.run(command.run, ctx, args)
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
        runner.uninstall()
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await background
    return 0

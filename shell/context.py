"""What a command function receives: the session and a few facts about how the shell runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shell.session import Session
    from shell.table import Table


class ExitShell(Exception):
    """Raised by `quit`; not an error."""


@dataclass
class Context:
    session: Session
    table: Table
    interactive: bool = False

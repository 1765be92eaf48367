"""The bottom toolbar: attached node, roles, peers online, ledger height and verification.

`refresh` (blocking, run in a thread by the interactive loop every REFRESH_S) asks the node
for `status`; `fragments` is what prompt-toolkit draws and only reads the last answer, so
redrawing never waits on the network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from shell.errors import ShellError
from shell.session import Session

REFRESH_S = 2.0


@dataclass
class ToolbarState:
    session: Session
    status: dict[str, Any] | None = None
    error: str | None = None
    updated: float = field(default=0.0)

    def refresh(self) -> None:
        try:
            self.status = self.session.call("status", timeout=10.0)
            self.error = None
        except ShellError as exc:
            self.error = str(exc).splitlines()[0]
        self.updated = time.monotonic()

    def fragments(self) -> list[tuple[str, str]]:
        target = self.session.target
        out = [("class:bottom-toolbar", f" {target.label} ")]
        if self.error:
            return out + [("class:bottom-toolbar.err", f" {self.error} ")]
        s = self.status
        if s is None or s.get("peer_id") not in (None, target.peer_id):
            return out + [("class:bottom-toolbar", " connecting… ")]
        ledger = s.get("ledger") or {}
        verified = ledger.get("verified")
        height = ledger.get("height")
        out += [("class:bottom-toolbar", f"│ {','.join(s.get('roles', []))} │ peers {s.get('peers_online', 0)} online "
                                         f"│ ledger {'-' if height is None else height} ")]
        if verified is True:
            out.append(("class:bottom-toolbar.ok", "✓ verified "))
        elif verified is False:
            out.append(("class:bottom-toolbar.err", "✗ VERIFICATION FAILED "))
        else:
            out.append(("class:bottom-toolbar", "… not verified yet "))
        return out

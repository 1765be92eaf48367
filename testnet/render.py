"""Human-readable output: the status table and the `run` banner."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def _num(value) -> str:
    return "-" if value is None else str(value)


def status_table(summary: dict) -> str:
    header = ("NAME", "ROLES", "PID", "ALIVE", "ONLINE", "STALE", "LISTEN / NOTE")
    rows = [header]
    for n in summary["nodes"]:
        alive = "stopped" if n.get("stopped") else ("yes" if n["alive"] else "no")
        note = n.get("error") or (n["listen"][0] if n["listen"] else "")
        rows.append((n["name"], ",".join(n["roles"]), _num(n["pid"]), alive, _num(n["peers_online"]), _num(n["peers_stale"]), note))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r[:-1], widths)) + "  " + str(r[-1]) for r in rows]
    extra = []
    if summary.get("broker"):
        b = summary["broker"]
        extra.append(f"broker   {b.get('kind') or ''} {summary['broker_url']}  pid {b['pid']}  {'alive' if b['alive'] else 'NOT RUNNING'}")
    else:
        extra.append("broker   none")
    if summary.get("sim"):
        s = summary["sim"]
        extra.append(f"sim      pid {s['pid']}  {'alive' if s['alive'] else 'NOT RUNNING'}  log {s['log']}")
    else:
        extra.append("sim      none")
    return "\n".join(lines + [""] + extra)


def _tool(name: str) -> str:
    """How the user types our console script: bare if on PATH, else the venv path."""
    beside = Path(sys.executable).parent / name
    if shutil.which(name) == str(beside) or not beside.exists():
        return name
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def attach_help(directory: str, shell_available: bool) -> str:
    d = Path(directory)
    try:
        d = d.relative_to(Path.cwd())
    except ValueError:
        pass
    node, tn = _tool("quantian-node"), _tool("quantian-testnet")
    lines = [
        "Attach to a node (as the testnet operator):",
        f"  {node} ctl --data-dir {d}/nodes/ingestion-1 status",
        f"  {node} ctl --data-dir {d}/nodes/ingestion-1 peers",
    ]
    if shell_available:
        lines.append(f"  {node} shell --data-dir {d}/nodes/ingestion-1")
    else:
        lines.append("  (interactive shell: not yet available)")
    lines += [
        "From another terminal:",
        f"  {tn} status --dir {d}          {tn} logs NAME --dir {d}",
        f"  {tn} kill NAME --dir {d}       {tn} restart NAME --dir {d}",
        "Ctrl-C stops every process of this testnet.",
    ]
    return "\n".join(lines)

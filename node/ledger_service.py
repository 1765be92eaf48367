"""The node's ledger: its own signed chain, replicas of every other chain, and their commands.

Composes `chain.Ledger` (storage, batching, verification) with the ledger-sync protocol
(replication) and exposes `ledger ...` control commands backed by `chain.queries`, the same
code the offline CLI uses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio

from chain import queries
from chain.errors import LedgerError
from chain.ledger import Ledger, LedgerConfig, Receipt
from node.admission import Admission
from node.host import Host
from node.identity import Identity
from node.metrics import Metrics
from node.protocols.control import CommandError, CommandRegistry
from node.protocols.ledger_sync import Replicator

log = logging.getLogger("quantian.ledger")


def _int_arg(args: dict, name: str, default: int | None = None, *, minimum: int = 0) -> int:
    value = args.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CommandError(f"{name} must be an integer >= {minimum}")
    return value


def _str_arg(args: dict, name: str, required: bool = False) -> str | None:
    value = args.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise CommandError(f"{name} must be a non-empty string")
    return value


class LedgerService:
    def __init__(self, data_dir: Path, identity: Identity, host: Host, admission: Admission, metrics: Metrics,
                 control: CommandRegistry, *, announce_interval_s: float, config: LedgerConfig = LedgerConfig()) -> None:
        self.ledger = Ledger(data_dir, identity, config)
        self.replicator = Replicator(host, self.ledger, admission, metrics, announce_interval_s=announce_interval_s)
        self._metrics = metrics
        self._nursery: trio.Nursery | None = None
        self._register(control)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.ledger.run)
            await nursery.start(self.replicator.run)
            self._nursery = nursery
            task_status.started()

    async def record(self, record_type: str, payload: dict[str, Any], actor: str) -> Receipt:
        """Append and wait until durable (raises LedgerError)."""
        return await self.ledger.append(record_type, payload, actor)

    def record_soon(self, record_type: str, payload: dict[str, Any], actor: str) -> None:
        """Append in the background; a failure is logged and counted (audit of non-critical events)."""
        if self._nursery is None:
            return
        try:
            self._nursery.start_soon(self._record_logged, record_type, payload, actor)
        except RuntimeError:  # the node is stopping and the ledger's nursery has closed
            self._metrics.inc("ledger.record_dropped_stopping")
            log.info("not recorded (ledger stopped): %s", record_type)

    async def _record_logged(self, record_type: str, payload: dict[str, Any], actor: str) -> None:
        try:
            await self.ledger.append(record_type, payload, actor)
        except LedgerError as exc:
            self._metrics.inc("ledger.append_failed")
            log.error("could not record %s: %s", record_type, exc)

    # --- control commands --------------------------------------------------------------------

    def _register(self, control: CommandRegistry) -> None:
        control.register("ledger status", self._status, "own chain height, verification state, failures, forks")
        control.register("ledger heads", self._heads, "head of every chain held (and fork flags)")
        control.register("ledger tail", self._tail, "newest records (args: author, n)")
        control.register("ledger show", self._show, "one block with its records (args: author, height)")
        control.register("ledger find", self._find, "records by type / actor / author / record_hash (args, limit)")
        control.register("ledger verify", self._verify, "re-verify every stored chain now")
        control.register("ledger prove", self._prove, "inclusion proof (args: author, height, index | record_hash)")

    async def _query(self, fn, *args, **kwargs) -> dict:
        try:
            return await self.ledger.query(fn, *args, **kwargs)
        except LedgerError as exc:
            raise CommandError(str(exc), code=exc.code) from None

    async def _status(self, args: dict, operator: str) -> dict:
        return self.ledger.status()

    async def _heads(self, args: dict, operator: str) -> dict:
        return await self._query(queries.heads)

    async def _tail(self, args: dict, operator: str) -> dict:
        return await self._query(queries.tail, _str_arg(args, "author"), _int_arg(args, "n", 10, minimum=1))

    async def _show(self, args: dict, operator: str) -> dict:
        return await self._query(queries.show, _str_arg(args, "author", True), _int_arg(args, "height"))

    async def _find(self, args: dict, operator: str) -> dict:
        return await self._query(queries.find, record_type=_str_arg(args, "type"), actor=_str_arg(args, "actor"),
                                 author=_str_arg(args, "author"), record_hash=_str_arg(args, "record_hash"),
                                 limit=_int_arg(args, "limit", 50, minimum=1))

    async def _verify(self, args: dict, operator: str) -> dict:
        reports = await self.ledger.verify_now()
        failures = [r.error.to_dict() for r in reports if r.error is not None]
        return {"ok": not failures and not self.ledger.status()["forks"], "chains": [r.to_dict() for r in reports],
                "first_failure": failures[0] if failures else None, "forks": self.ledger.status()["forks"]}

    async def _prove(self, args: dict, operator: str) -> dict:
        record_hash = _str_arg(args, "record_hash")
        if record_hash is not None:
            return await self._query(queries.prove_hash, record_hash)
        return await self._query(queries.prove, _str_arg(args, "author", True), _int_arg(args, "height"),
                                 _int_arg(args, "index"))

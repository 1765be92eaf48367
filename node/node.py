"""A QuantIAN node: one host, the shared protocols, and the roles its configuration enables.

Start-up order matters (LIBP2P-NOTES §2): host and pubsub first, then handlers, then dialling.
The node reports readiness through `task_status.started()` and an atomically written
DATA_DIR/node.json that the testnet and supervisors read.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from pathlib import Path
from typing import Any

import trio

from node import __version__
from node.admission import Admission
from node.config import NodeConfig
from node.discovery import Discovery
from node.errors import ConfigError
from node.host import Host
from node.identity import load_or_create_identity
from node.ledger_service import LedgerService
from node.membership import CertificateError, parse_authority_public_key, read_certificate, verify_certificate
from node.metrics import Metrics
from node.peers import PeerTable
from node.delivery import Dispatcher
from node.protocols import adverts, control, ticks
from node.protocols.control import CommandError, CommandRegistry
from node.roles import ROLES, RoleContext, capabilities_of
from node import views

log = logging.getLogger("quantian.node")

READY_FILE = "node.json"
ROUTED_CAPABILITIES = ("ingest_market_data", "detect_anomalies", "compute_risk")


def write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = load_or_create_identity(config.data_dir)
        self.peer_id = self.identity.peer_id
        self.name = config.name or f"{'+'.join(config.roles)}-{self.peer_id[-6:]}"
        try:
            self.authority_key = parse_authority_public_key(config.authority_source)
        except (CertificateError, OSError) as exc:
            raise ConfigError(f"network authority key: {exc} (pass --authority HEX|FILE)") from None
        try:
            self.certificate = read_certificate(config.cert_path)
            verify_certificate(self.certificate, self.authority_key, self.peer_id)
        except CertificateError as exc:
            raise ConfigError(
                f"this node's certificate ({config.cert_path}) is not usable: {exc}. "
                f"Ask the network authority: quantian-node network admit {self.peer_id} --roles {','.join(config.roles)}"
            ) from None
        missing = [r for r in config.roles if not self.certificate.allows(r)]
        if missing:
            raise ConfigError(f"the certificate allows roles {', '.join(self.certificate.roles)}, not {', '.join(missing)}")
        self.capabilities = capabilities_of(config.roles)
        self.metrics = Metrics()
        self.peers = PeerTable()
        self.admission = Admission(self.authority_key, self.metrics,
                                   handshake_timeout_s=config.handshake_timeout_s, ban_s=config.ban_s)
        self.control = CommandRegistry()
        self.started_at = time.time()
        self._seq = adverts.SequenceClock()
        # Everything is wired here, before any I/O, so a bad role setting is a clean ConfigError.
        host = self.host = Host(self.identity, announce=list(self.config.announce) or None)
        self.discovery = Discovery(host, self.admission, self.certificate, self.peers, self.metrics,
                                   self.config.bootstrap)
        host.set_stream_handler(control.PROTOCOL_ID, control.Handler(self.admission, self.control, self.metrics))
        host.set_topic_validator(adverts.TOPIC, adverts.Validator(self.peer_id, self.admission, self.peers, self.metrics))
        self._register_commands()
        self.ledger = LedgerService(self.config.data_dir, self.identity, host, self.admission, self.metrics,
                                    self.control, announce_interval_s=2 * self.config.heartbeat_s)
        views.register(self.control, self.ledger, self.identity)
        batch_handlers: dict = {}  # batch kind -> role function; roles fill it in their __init__
        host.set_stream_handler(ticks.PROTOCOL_ID, ticks.Handler(self.admission, self.metrics, batch_handlers))
        self.dispatcher = Dispatcher(host, self.peers, self.capabilities, batch_handlers, self.metrics)
        ctx = RoleContext(self.config, self.identity, host, self.peers, self.admission, self.control, self.metrics,
                          {"ledger": self.ledger, "batch_handlers": batch_handlers, "dispatcher": self.dispatcher})
        self.roles = [ROLES[name](ctx) for name in self.config.roles]

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        host = self.host
        async with host.running(list(self.config.listen)):
            async with trio.open_nursery() as nursery:
                advert_messages = await host.subscribe(adverts.TOPIC)
                nursery.start_soon(self._receive_adverts, advert_messages)
                await nursery.start(self.ledger.run)
                for role in self.roles:
                    await nursery.start(role.run)
                await nursery.start(self.discovery.run)
                nursery.start_soon(self._advertise)
                self._write_ready_file()
                log.info("node %s ready: peer %s roles %s listening on %s", self.name, self.peer_id,
                         ",".join(self.config.roles), " ".join(self.announce_addrs()))
                task_status.started(self)
                try:
                    await trio.sleep_forever()
                finally:
                    (self.config.data_dir / READY_FILE).unlink(missing_ok=True)  # not ready any more

    # --- adverts -----------------------------------------------------------------------------

    def announce_addrs(self) -> list[str]:
        if self.config.announce:
            return [a if "/p2p/" in a else f"{a}/p2p/{self.peer_id}" for a in self.config.announce]
        return self.host.listen_addrs() if self.host else []

    def load_figures(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "rss_mb": round(usage.ru_maxrss / 1024, 1),
            "connections": len(self.host.connected_peers()) if self.host else 0,
        }

    async def _advertise(self) -> None:
        assert self.host is not None
        while True:
            advert = adverts.Advert(
                peer_id=self.peer_id, name=self.name, roles=self.config.roles, capabilities=self.capabilities,
                addrs=tuple(self.announce_addrs()), version=__version__, seq=self._seq.next(), ts=time.time(),
                heartbeat_s=self.config.heartbeat_s, load=self.load_figures(), cert=self.certificate.encode(),
            )
            await self.host.publish(adverts.TOPIC, adverts.encode(advert, self.identity))
            self.metrics.inc("adverts.published")
            self._write_health_file()
            await trio.sleep(self.config.heartbeat_s)

    async def _receive_adverts(self, messages) -> None:
        assert self.host is not None and self.discovery is not None
        async for message in messages:
            if message.origin == self.peer_id:
                continue
            try:
                advert, _, _ = adverts.decode(message.data)
            except adverts.AdvertRejected:  # validated already; defensive against library changes
                self.metrics.inc("adverts.dropped.bad_cbor")
                continue
            self.metrics.inc("adverts.received")
            became_online = self.peers.observe(
                advert.peer_id, name=advert.name, roles=advert.roles, capabilities=advert.capabilities,
                addrs=advert.addrs, version=advert.version, load=advert.load, heartbeat_s=advert.heartbeat_s,
                seq=advert.seq)
            self.host.add_peer_addrs(advert.peer_id, list(advert.addrs))
            self.discovery.learn(advert.peer_id, advert.addrs)
            if became_online:
                log.info("peer online: %s (%s) roles %s", advert.name, advert.peer_id, ",".join(advert.roles))

    # --- files -------------------------------------------------------------------------------

    def _write_ready_file(self) -> None:
        write_json_atomic(self.config.data_dir / READY_FILE, {
            "name": self.name, "peer_id": self.peer_id, "roles": list(self.config.roles),
            "capabilities": list(self.capabilities), "listen": self.announce_addrs(),
            "pid": os.getpid(), "started_at": self.started_at, "version": __version__,
        })

    def _write_health_file(self) -> None:
        if self.config.health_file:
            counts = self.peers.counts()
            ledger = self.ledger.ledger.status() if self.ledger else {}
            write_json_atomic(Path(self.config.health_file), {
                "ok": bool(ledger.get("running")) and ledger.get("verified", False), "ts": time.time(),
                "peer_id": self.peer_id, "peers_online": counts["online"], "peers_stale": counts["stale"],
                "ledger_height": ledger.get("height"), "ledger_verified": ledger.get("verified")})

    # --- control commands --------------------------------------------------------------------

    def _register_commands(self) -> None:
        self.control.register("status", self._cmd_status, "node identity, roles, peers and counters")
        self.control.register("peers", self._cmd_peers, "the peer table")
        self.control.register("caps", self._cmd_caps, "live peers by capability (args: capability)")
        self.control.register("metrics", self._cmd_metrics, "all counters")
        self.control.register("commands", self._cmd_commands, "the commands this node serves")
        self.control.register("route", self._cmd_route, "which peers own a symbol, per pipeline capability (args: symbol)")

    def status(self) -> dict[str, Any]:
        counts = self.peers.counts()
        return {
            "name": self.name, "peer_id": self.peer_id, "roles": list(self.config.roles),
            "capabilities": list(self.capabilities), "listen": self.announce_addrs(), "version": __version__,
            "pid": os.getpid(), "uptime_s": round(time.time() - self.started_at, 1),
            "heartbeat_s": self.config.heartbeat_s,
            "peers_online": counts["online"], "peers_stale": counts["stale"], "peers_gone": counts["gone"],
            "peers_total": sum(counts.values()), "load": self.load_figures(),
            "admission": self.admission.counts(),
            "discovery": self.discovery.status() if self.discovery else {},
            "roles_status": {role.name: role.status() for role in self.roles},
            "ledger": self.ledger.ledger.status() if self.ledger else None,
            "counters": self.metrics.snapshot(), "stream_errors": dict(self.host.handler_errors),
            "peers": self.peers.to_json(),
        }

    async def _cmd_status(self, args: dict, operator: str) -> dict:
        return self.status()

    async def _cmd_peers(self, args: dict, operator: str) -> dict:
        return {"peers": self.peers.to_json()}

    async def _cmd_caps(self, args: dict, operator: str) -> dict:
        wanted = args.get("capability")
        if wanted is not None and not isinstance(wanted, str):
            raise CommandError("capability must be a string")
        by_cap: dict[str, list[dict]] = {}
        for entry in self.peers.online():
            for cap in entry.capabilities:
                if wanted is None or cap == wanted:
                    by_cap.setdefault(cap, []).append({"peer_id": entry.peer_id, "name": entry.name})
        if wanted is not None:
            by_cap.setdefault(wanted, [])
        return {"capabilities": dict(sorted(by_cap.items()))}

    async def _cmd_route(self, args: dict, operator: str) -> dict:
        symbol = args.get("symbol")
        if not isinstance(symbol, str) or not symbol:
            raise CommandError("usage: route SYMBOL")
        dispatcher = self.dispatcher
        names = {e.peer_id: e.name for e in self.peers.entries()} | {self.peer_id: self.name}
        return {"symbol": symbol, "routes": {
            cap: [{"peer_id": p, "name": names.get(p, "")} for p in dispatcher.candidates(cap, symbol)]
            for cap in ROUTED_CAPABILITIES}}

    async def _cmd_metrics(self, args: dict, operator: str) -> dict:
        return {"counters": self.metrics.snapshot()}

    async def _cmd_commands(self, args: dict, operator: str) -> dict:
        return {"commands": self.control.describe()}

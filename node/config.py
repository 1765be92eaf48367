"""Node settings: TOML file < QUANTIAN_* environment < command-line flags.

One frozen dataclass; `load_config` merges the three sources and validates, raising ConfigError
with the name of the offending setting and where it came from.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from node.errors import ConfigError
from node.membership import NODE_ROLES

ENV_PREFIX = "QUANTIAN_"
LIST_SEPARATOR = ","
MAX_HEARTBEAT_S = 300.0  # also bounds the interval a peer may claim in its adverts (node/protocols/adverts.py)


@dataclass(frozen=True)
class NodeConfig:
    roles: tuple[str, ...] = ()
    data_dir: Path = Path("./quantian-data")
    name: str = ""
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    announce: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    heartbeat_s: float = 5.0
    authority: str = ""  # hex public key or file; default DATA_DIR/authority.pub
    cert: str = ""  # default DATA_DIR/node.cert
    mqtt_url: str = ""
    handshake_timeout_s: float = 5.0
    ban_s: float = 30.0
    log_format: str = "text"
    log_level: str = "info"
    health_file: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # role-specific settings, by role name

    @property
    def cert_path(self) -> Path:
        return Path(self.cert) if self.cert else self.data_dir / "node.cert"

    @property
    def authority_source(self) -> str:
        return self.authority or str(self.data_dir / "authority.pub")


_TUPLE_FIELDS = {"roles", "listen", "announce", "bootstrap"}
_FLOAT_FIELDS = {"heartbeat_s", "handshake_timeout_s", "ban_s"}
_KNOWN = {f.name for f in fields(NodeConfig)} - {"extra"}


def _coerce(name: str, value: Any, source: str) -> Any:
    try:
        if name in _TUPLE_FIELDS:
            if isinstance(value, str):
                value = [v for v in (p.strip() for p in value.split(LIST_SEPARATOR)) if v]
            return tuple(str(v) for v in value)
        if name in _FLOAT_FIELDS:
            return float(value)
        if name == "data_dir":
            return Path(value).expanduser()
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot use {value!r} from {source}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    node_section = dict(data.get("node", data))
    # Role settings live in [role.NAME] (a [bootstrap] table would collide with `bootstrap = [...]`);
    # a bare [NAME] table is accepted where it does not collide.
    for role_name, settings in dict(node_section.pop("role", {})).items():
        node_section[role_name] = settings
    unknown = sorted(set(node_section) - _KNOWN - set(NODE_ROLES))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
    return node_section


def load_config(flags: Mapping[str, Any], *, config_file: str | None = None,
                environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Merge TOML < environment < flags (flags whose value is None are unset) and validate."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        for key, value in _read_toml(Path(config_file)).items():
            if key in NODE_ROLES and isinstance(value, dict):
                extra[key] = value
            else:
                values[key] = _coerce(key, value, f"config file {config_file}")
    for name in _KNOWN:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None and env_value != "":
            values[name] = _coerce(name, env_value, f"${ENV_PREFIX}{name.upper()}")
    for name, value in flags.items():
        if name in _KNOWN and value is not None and value != () and value != []:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    config = replace(NodeConfig(), **values, extra=extra)
    return validate(config)


def validate(config: NodeConfig) -> NodeConfig:
    if not config.roles:
        raise ConfigError(f"no role given: pass --role with one or more of {', '.join(NODE_ROLES)}")
    unknown = sorted(set(config.roles) - set(NODE_ROLES))
    if unknown:
        raise ConfigError(f"unknown role(s) {', '.join(unknown)}; choose from {', '.join(NODE_ROLES)}")
    if config.heartbeat_s <= 0 or config.heartbeat_s > MAX_HEARTBEAT_S:
        raise ConfigError(f"heartbeat_s must be in (0, {MAX_HEARTBEAT_S:.0f}], got {config.heartbeat_s}")
    if config.log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be text or json, got {config.log_format!r}")
    for addr in config.bootstrap:
        if "/p2p/" not in addr:
            raise ConfigError(f"bootstrap address {addr!r} must end with /p2p/PEER_ID")
    for addr in config.listen + config.announce:
        if not addr.startswith("/"):
            raise ConfigError(f"{addr!r} is not a multiaddr (expected e.g. /ip4/127.0.0.1/tcp/4001)")
    return replace(config, roles=tuple(dict.fromkeys(config.roles)))

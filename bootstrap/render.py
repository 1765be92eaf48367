"""Render a bootstrap node's deployment files: node.toml, the cloud-init user-data, the unit.

    python -m bootstrap.render config    --name aws-1 --authority authority/authority.pub \\
        --announce /ip4/203.0.113.10/tcp/4001 --bootstrap /ip4/198.51.100.20/tcp/4001/p2p/12D3KooW... > node.toml
    python -m bootstrap.render user-data --name aws-1 ... --package 'quantian @ https://.../quantian-0.1.0.tar.gz' \\
        [--cert aws-1.cert [--key aws-1.key]] > user-data.yaml
    python -m bootstrap.render unit > quantian-bootstrap.service

The templates sit next to this module (node.toml.in, user-data.yaml.in, quantian-bootstrap.service)
and use `{{name}}` placeholders; every placeholder must be filled and every value used. No libp2p
import: rendering is instant and runs on the operator's machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from node.membership import CertificateError, parse_authority_public_key

TEMPLATE_DIR = Path(__file__).resolve().parent
CONFIG_TEMPLATE = TEMPLATE_DIR / "node.toml.in"
USER_DATA_TEMPLATE = TEMPLATE_DIR / "user-data.yaml.in"
UNIT_FILE = TEMPLATE_DIR / "quantian-bootstrap.service"
UNIT_NAME = UNIT_FILE.name

INSTALL_PREFIX = "/opt/quantian"
PROGRAM = f"{INSTALL_PREFIX}/bin/quantian-node"
CONFIG_PATH = "/etc/quantian/node.toml"
CERT_PATH = "/etc/quantian/node.cert"
KEY_DROP_PATH = "/etc/quantian/identity.key.init"  # shipped key, moved into the state dir at first boot
DATA_DIR = "/var/lib/quantian"
HEALTH_FILE = "/run/quantian/health.json"
DEFAULT_PORT = 4001
WILDCARDS = ("/ip4/0.0.0.0/", "/ip6/::/")

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class RenderError(ValueError):
    """The settings cannot make a working deployment; the message says which and why."""

    code = "render_error"


@dataclass(frozen=True)
class Settings:
    name: str
    authority: str  # 64 hex characters
    announce: tuple[str, ...]
    bootstrap: tuple[str, ...] = ()
    listen: tuple[str, ...] = (f"/ip4/0.0.0.0/tcp/{DEFAULT_PORT}",)
    cert: str = CERT_PATH
    data_dir: str = DATA_DIR
    health_file: str = HEALTH_FILE
    heartbeat_s: float = 5.0

    def validate(self) -> "Settings":
        if not re.fullmatch(r"[0-9a-f]{64}", self.authority):
            raise RenderError(f"authority must be the 64-hex-character public key, got {self.authority!r}")
        if not self.name:
            raise RenderError("name is empty")
        if not self.listen:
            raise RenderError("give at least one listen address")
        if any(a.startswith(WILDCARDS) for a in self.listen) and not self.announce:
            raise RenderError("listening on a wildcard address needs --announce with the VM's public address: "
                              "peers would otherwise be told to dial 0.0.0.0")
        for addr in self.listen + self.announce:
            if not addr.startswith("/") or "/tcp/" not in addr:
                raise RenderError(f"{addr!r} is not a TCP multiaddr like /ip4/203.0.113.10/tcp/4001")
        for addr in self.bootstrap:
            if "/p2p/" not in addr:
                raise RenderError(f"bootstrap address {addr!r} must end with /p2p/PEER_ID")
        return self

    @property
    def port(self) -> int:
        return int(self.listen[0].split("/tcp/", 1)[1].split("/")[0])


def fill(template: str, values: Mapping[str, str], *, source: str = "template") -> str:
    """Replace every {{key}}; RenderError for a placeholder without a value or a value without a place."""
    wanted = set(_PLACEHOLDER.findall(template))
    missing, unused = wanted - set(values), set(values) - wanted
    if missing or unused:
        raise RenderError(f"{source}: missing values for {sorted(missing)}; unused values {sorted(unused)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def toml_value(value: object) -> str:
    """A TOML literal for a string, number or list of strings (JSON string escapes are valid TOML)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return json.dumps(str(value))


def render_config(settings: Settings) -> str:
    settings.validate()
    values = {key: toml_value(getattr(settings, key)) for key in (
        "name", "listen", "announce", "bootstrap", "authority", "cert", "data_dir", "health_file", "heartbeat_s")}
    return fill(CONFIG_TEMPLATE.read_text(), values, source=CONFIG_TEMPLATE.name)


def unit_text() -> str:
    return UNIT_FILE.read_text()


def unit_directives(unit: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit, by key (repeatable keys keep every value), sections ignored."""
    out: dict[str, list[str]] = {}
    for raw in unit.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;[":
            continue
        key, sep, value = line.partition("=")
        if sep:
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def exec_start(unit: str | None = None) -> list[str]:
    """The unit's ExecStart as an argument vector (the unit has exactly one, without prefixes)."""
    values = unit_directives(unit if unit is not None else unit_text()).get("ExecStart", [])
    if len(values) != 1:
        raise RenderError(f"expected one ExecStart line, found {len(values)}")
    return shlex.split(values[0])


def service_argv(*, program: str, config: str, unit: str | None = None) -> list[str]:
    """The unit's ExecStart with the installed paths swapped for local ones (tests, dry runs):
    the same arguments the service manager would run, nothing added or dropped."""
    argv = exec_start(unit)
    swap = {PROGRAM: program, CONFIG_PATH: config}
    return [swap.get(arg, arg) for arg in argv]


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else "" for line in text.rstrip("\n").splitlines())


def _b64_file(path: str, data: bytes, permissions: str) -> str:
    return (f"  - path: {path}\n    owner: root:root\n    permissions: \"{permissions}\"\n"
            f"    encoding: b64\n    content: {base64.b64encode(data).decode()}")


def render_user_data(settings: Settings, *, package: str, cert: bytes | None = None, key: bytes | None = None) -> str:
    """cloud-init user-data for one VM. Without `cert` the VM creates its key, prints its peer ID
    and waits for the operator to install the certificate; with `cert` (and the offline-made
    `key`) it joins at first boot."""
    if key is not None and cert is None:
        raise RenderError("a pre-generated key needs its certificate too (--cert)")
    if not package.strip() or "\n" in package or '"' in package:
        raise RenderError(f"package must be one pip requirement (no quotes or newlines), got {package!r}")
    files, commands = [], []
    if cert is not None:
        files.append(_b64_file(CERT_PATH, cert, "0644"))
    if key is not None:
        files.append(_b64_file(KEY_DROP_PATH, key, "0600"))
        commands.append(f"  - [install, -o, quantian, -g, quantian, -m, \"0600\", {KEY_DROP_PATH}, {DATA_DIR}/identity.key]")
        commands.append(f"  - [shred, -u, {KEY_DROP_PATH}]")
    values = {
        "config": _indent(render_config(settings), 6),
        "unit": _indent(unit_text(), 6),
        "credential_files": "\n".join(files),
        "key_commands": "\n".join(commands),
        "package": package.strip(),
        "port": str(settings.port),
    }
    text = fill(USER_DATA_TEMPLATE.read_text(), values, source=USER_DATA_TEMPLATE.name)
    return re.sub(r"\n{3,}", "\n\n", text)


# --- CLI ---------------------------------------------------------------------------------------


def _settings_from(args: argparse.Namespace) -> Settings:
    try:
        authority = parse_authority_public_key(args.authority).hex()
    except CertificateError as exc:
        raise RenderError(f"--authority: {exc}") from None
    return Settings(
        name=args.name, authority=authority, announce=tuple(args.announce or ()), bootstrap=tuple(args.bootstrap or ()),
        listen=tuple(args.listen or Settings.listen), heartbeat_s=args.heartbeat,
    ).validate()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bootstrap.render", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("unit", help=f"print the systemd unit ({UNIT_NAME})")
    for what in ("config", "user-data"):
        p = sub.add_parser(what, help=f"print {'node.toml' if what == 'config' else 'cloud-init user-data'}")
        p.add_argument("--name", required=True, help="node name shown to peers, e.g. aws-1")
        p.add_argument("--authority", required=True, metavar="HEX|FILE", help="network authority public key")
        p.add_argument("--announce", action="append", metavar="MULTIADDR",
                       help="this VM's public address, e.g. /ip4/203.0.113.10/tcp/4001 (repeatable)")
        p.add_argument("--bootstrap", action="append", metavar="MULTIADDR", help="another bootstrap, with /p2p/ (repeatable)")
        p.add_argument("--listen", action="append", metavar="MULTIADDR", help=f"default /ip4/0.0.0.0/tcp/{DEFAULT_PORT}")
        p.add_argument("--heartbeat", type=float, default=5.0, help="seconds between adverts (default 5)")
        if what == "user-data":
            p.add_argument("--package", required=True, help="pip requirement for QuantIAN (wheel/sdist URL or name==version)")
            p.add_argument("--cert", type=Path, help="the node's certificate (from `quantian-node network admit`)")
            p.add_argument("--key", type=Path, help="the node's identity.key made offline (less safe: see README)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.what == "unit":
            sys.stdout.write(unit_text())
        elif args.what == "config":
            sys.stdout.write(render_config(_settings_from(args)))
        else:
            cert = args.cert.read_bytes() if args.cert else None
            key = args.key.read_bytes() if args.key else None
            sys.stdout.write(render_user_data(_settings_from(args), package=args.package, cert=cert, key=key))
    except (RenderError, OSError) as exc:
        print(f"bootstrap.render: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

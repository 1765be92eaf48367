"""Deployment files of a bootstrap node: the systemd unit, node.toml, cloud-init user-data, the
Containerfile. Checked with the real tools when installed (systemd-analyze from Debian package
`systemd`, cloud-init from `cloud-init`), and always structurally: required keys present, the
ExecStart line parsed by the node's own argparse parser, the rendered TOML loaded by node.config.
"""

from __future__ import annotations

import base64
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from bootstrap import health, render
from bootstrap.local import OfflineAuthority, quantian_node
from node.cli import build_parser
from node.config import load_config

BOOTSTRAP_DIR = Path(render.__file__).parent
REPO = BOOTSTRAP_DIR.parent
PEER_A = "12D3KooWECg9eQ2NbEVCMSh28AXk9rSsR5qhvKf8VKQuzF6AchW1"


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """An authority, and one node key + certificate made offline (as the README describes)."""
    base = tmp_path_factory.mktemp("offline")
    net = OfflineAuthority.create(base, via_cli=False)  # the CLI flow runs in test_bootstrap_service
    data_dir = base / "aws-1"
    peer_id = net.admit(data_dir, ["bootstrap"])
    return net, data_dir, peer_id


def settings_for(net: OfflineAuthority, **overrides) -> render.Settings:
    base = dict(name="aws-1", authority=net.public_key_hex, announce=("/ip4/203.0.113.10/tcp/4001",),
                bootstrap=(f"/ip4/198.51.100.20/tcp/4001/p2p/{PEER_A}",))
    return render.Settings(**{**base, **overrides})


# --- systemd unit ------------------------------------------------------------------------------


def test_unit_has_user_state_restart_and_hardening():
    unit = render.unit_text()
    sections = re.findall(r"^\[(\w+)\]", unit, re.M)
    assert sections == ["Unit", "Service", "Install"]
    d = {k: v[-1] for k, v in render.unit_directives(unit).items()}
    required = {
        "Type": "simple", "User": "quantian", "Group": "quantian", "StateDirectory": "quantian",
        "RuntimeDirectory": "quantian", "Restart": "on-failure", "RestartPreventExitStatus": "2",
        "KillSignal": "SIGTERM", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
        "RestrictSUIDSGID": "yes", "RestrictNamespaces": "yes", "LockPersonality": "yes", "UMask": "0077",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
        "SystemCallArchitectures": "native", "WantedBy": "multi-user.target",
        "ConditionPathExists": render.CERT_PATH,
    }
    wrong = {k: (d.get(k), v) for k, v in required.items() if d.get(k) != v}
    assert not wrong, f"unit directives (found, wanted): {wrong}"
    assert set(d["RestrictAddressFamilies"].split()) <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert "@system-service" in render.unit_directives(unit)["SystemCallFilter"]
    # ProcSubset=pid would hide /proc/loadavg, which the node reads for its adverts.
    assert "ProcSubset" not in d


def test_unit_exec_start_parses_with_the_node_parser():
    argv = render.exec_start()
    assert argv[0] == render.PROGRAM
    args = build_parser().parse_args(argv[1:])
    assert args.command == "start"
    assert args.config == render.CONFIG_PATH
    # Everything else comes from the config file: no flag silently overrides node.toml.
    assert all(getattr(args, k) is None for k in ("roles", "data_dir", "listen", "announce", "bootstrap", "log_format"))
    local = render.service_argv(program="/x/quantian-node", config="/tmp/n.toml")
    assert local == ["/x/quantian-node", *argv[1:-1], "/tmp/n.toml"]


def _unit_with_local_program(tmp_path: Path) -> Path:
    # systemd-analyze verify insists the ExecStart binary exists; everything else stays byte for byte.
    text = render.unit_text().replace(render.PROGRAM, quantian_node())
    path = tmp_path / render.UNIT_NAME
    path.write_text(text)
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian package: systemd); structural checks above still ran")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    path = _unit_with_local_program(tmp_path)
    proc = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    mentions = [line for line in proc.stderr.splitlines() if render.UNIT_NAME in line]
    assert not mentions, f"systemd-analyze complained about the unit: {mentions}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian package: systemd)")
def test_unit_exposure_level_is_low(tmp_path):
    path = _unit_with_local_program(tmp_path)
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(path)],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout)
    if match is None:
        pytest.skip(f"this systemd-analyze has no offline security report: {proc.stderr.strip()[:200]}")
    assert float(match.group(1)) <= 2.5, proc.stdout


# --- node.toml ---------------------------------------------------------------------------------


def test_rendered_config_is_what_the_node_loads(offline, tmp_path):
    net, _, _ = offline
    settings = settings_for(net, data_dir=str(tmp_path / "data"), health_file=str(tmp_path / "health.json"),
                            heartbeat_s=1.5)
    path = tmp_path / "node.toml"
    path.write_text(render.render_config(settings))
    tomllib.loads(path.read_text())
    config = load_config({}, config_file=str(path), environ={})
    assert config.roles == ("bootstrap",)
    assert config.name == "aws-1"
    assert config.listen == ("/ip4/0.0.0.0/tcp/4001",)
    assert config.announce == ("/ip4/203.0.113.10/tcp/4001",)
    assert config.bootstrap == settings.bootstrap
    assert config.authority == net.public_key_hex
    assert config.cert_path == Path(render.CERT_PATH)
    assert config.data_dir == tmp_path / "data"
    assert config.health_file == str(tmp_path / "health.json")
    assert config.heartbeat_s == 1.5 and config.log_format == "json"
    assert config.extra == {}


@pytest.mark.parametrize("change, message", [
    ({"announce": ()}, "wildcard address needs --announce"),
    ({"authority": "abc"}, "64-hex"),
    ({"bootstrap": ("/ip4/198.51.100.20/tcp/4001",)}, "/p2p/PEER_ID"),
    ({"announce": ("/dns4/example.net/udp/4001",)}, "not a TCP multiaddr"),
])
def test_render_refuses_settings_that_cannot_work(offline, change, message):
    with pytest.raises(render.RenderError, match=re.escape(message)):
        render.render_config(settings_for(offline[0], **change))


def test_fill_names_missing_and_unused_values():
    with pytest.raises(render.RenderError, match=r"missing values for \['b'\]; unused values \['c'\]"):
        render.fill("{{a}} {{b}}", {"a": "1", "c": "3"})


# --- cloud-init user-data ----------------------------------------------------------------------


def _user_data(offline, *, with_key: bool) -> tuple[str, bytes, bytes]:
    net, data_dir, _ = offline
    cert = (data_dir / "node.cert").read_bytes()
    key = (data_dir / "identity.key").read_bytes()
    text = render.render_user_data(settings_for(net), package="quantian==0.1.0", cert=cert if with_key else None,
                                   key=key if with_key else None)
    return text, cert, key


def _files(doc: dict) -> dict[str, dict]:
    return {f["path"]: f for f in doc["write_files"]}


@pytest.mark.parametrize("with_key", [False, True], ids=["key-made-on-vm", "key-made-offline"])
def test_user_data_structure(offline, with_key):
    text, cert, key = _user_data(offline, with_key=with_key)
    assert text.startswith("#cloud-config\n")
    assert "{{" not in text
    doc = yaml.safe_load(text)
    assert {"packages", "users", "write_files", "runcmd"} <= set(doc)
    assert "default" in doc["users"], "the cloud's own login user must stay"
    assert any(u != "default" and u["name"] == "quantian" and u["system"] for u in doc["users"])
    files = _files(doc)
    assert files[render.CONFIG_PATH]["content"] == render.render_config(settings_for(offline[0]))
    assert files[f"/etc/systemd/system/{render.UNIT_NAME}"]["content"] == render.unit_text()
    commands = [" ".join(c) if isinstance(c, list) else c for c in doc["runcmd"]]
    assert any(render.PROGRAM.rsplit("/", 2)[0] in c and "pip install" in c.replace(",", "") for c in commands)
    assert commands[-1] == f"systemctl enable --now {render.UNIT_NAME}"
    assert any("quantian-node id --data-dir /var/lib/quantian" in c for c in commands)
    if with_key:
        assert base64.b64decode(files[render.CERT_PATH]["content"]) == cert
        shipped = files[render.KEY_DROP_PATH]
        assert shipped["permissions"] == "0600" and base64.b64decode(shipped["content"]) == key
        moved = [c for c in commands if c.startswith("install ") and render.KEY_DROP_PATH in c]
        assert moved and "0600" in moved[0]
        assert commands.index(moved[0]) < next(i for i, c in enumerate(commands) if "quantian-node id" in c)
        assert f"shred -u {render.KEY_DROP_PATH}" in commands
    else:
        assert render.CERT_PATH not in files and render.KEY_DROP_PATH not in files


@pytest.mark.skipif(shutil.which("cloud-init") is None,
                    reason="cloud-init not installed (Debian package: cloud-init); structural checks above still ran")
@pytest.mark.parametrize("with_key", [False, True], ids=["key-made-on-vm", "key-made-offline"])
def test_user_data_passes_cloud_init_schema(offline, tmp_path, with_key):
    text, _, _ = _user_data(offline, with_key=with_key)
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    proc = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Valid cloud-config" in proc.stdout
    if not with_key:
        return
    # The validator does validate: the same document with a broken write_files entry is refused.
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("  - path: /etc/quantian/node.toml", "  - pathh: /etc/quantian/node.toml", 1))
    assert subprocess.run(["cloud-init", "schema", "--config-file", str(broken)], capture_output=True,
                          timeout=120).returncode != 0


def test_render_cli_matches_the_library(offline, tmp_path):
    net, data_dir, _ = offline
    s = settings_for(net)
    base = [sys.executable, "-m", "bootstrap.render"]
    common = ["--name", s.name, "--authority", str(net.authority_dir / "authority.pub"), "--announce", s.announce[0],
              "--bootstrap", s.bootstrap[0]]
    out = subprocess.run(base + ["config", *common], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out == render.render_config(s)
    out = subprocess.run(base + ["user-data", *common, "--package", "quantian==0.1.0", "--cert", str(data_dir / "node.cert")],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out == render.render_user_data(s, package="quantian==0.1.0", cert=(data_dir / "node.cert").read_bytes())
    bad = subprocess.run(base + ["config", "--name", "x", "--authority", "zz"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "--authority" in bad.stderr


# --- container image ---------------------------------------------------------------------------


def _containerfile_instructions() -> list[tuple[str, str]]:
    text = (BOOTSTRAP_DIR / "Containerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_containerfile_runs_as_non_root_with_a_data_volume():
    instructions = _containerfile_instructions()
    stages = [rest for word, rest in instructions if word == "FROM"]
    assert len(stages) == 2, "build stage with the compiler, runtime stage without"
    runtime = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM"):]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(word == "VOLUME" and "/var/lib/quantian" in rest for word, rest in runtime)
    assert ("EXPOSE", "4001/tcp") in runtime
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    for word, rest in instructions:
        if word == "COPY" and not rest.startswith("--from"):
            for source in shlex.split(rest)[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    import json

    entry = json.loads(next(rest for word, rest in runtime if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in runtime if word == "CMD"))
    assert entry == [render.PROGRAM]
    args = build_parser().parse_args(cmd)
    assert args.command == "start" and args.config == render.CONFIG_PATH
    healthcheck = next(rest for word, rest in runtime if word == "HEALTHCHECK")
    assert "bootstrap.health" in healthcheck and render.HEALTH_FILE in healthcheck


# --- health check ------------------------------------------------------------------------------


def test_health_check_needs_a_fresh_ok_file(tmp_path):
    path = tmp_path / "health.json"
    assert health.check(path)[0] is False and "missing" in health.check(path)[1]
    path.write_text('{"ok": true, "ts": 1000.0, "peer_id": "12D3", "peers_online": 4}')
    assert health.check(path, 30, now=1010.0) == (True, "ok: peer 12D3, 4 peers online, written 10.0 s ago")
    assert health.check(path, 30, now=1031.0)[1].endswith("stale, last written 31 s ago (limit 30 s)")
    path.write_text('{"ok": false, "ts": 1000.0}')
    assert health.check(path, 30, now=1000.0) == (False, f"{path}: node reports not ok")
    path.write_text("{")
    assert "unreadable" in health.check(path)[1]
    path.write_text(f'{{"ok": true, "ts": {time.time()}}}')
    proc = subprocess.run([sys.executable, "-m", "bootstrap.health", str(path)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.startswith("ok")

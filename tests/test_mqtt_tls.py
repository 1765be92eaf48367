"""mqtts:// with a self-signed CA and a Mosquitto password file; broker URLs and credentials."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import time
from functools import partial
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mqtt_fixtures import require_kind

from node.mqtt import BadBrokerUrl, Bridge, BridgeConfig, BrokerUnreachable, ConnectRefused, parse_broker_url
from sim.market import MarketSim
from sim.publisher import PublishError, publish_ticks
from testnet.broker import TlsFiles, start_broker

PASSWORD = "s3cret-pw"


def test_broker_url_parsing_and_credentials():
    a = parse_broker_url("mqtts://bob:p%40ss@broker.example", environ={})
    assert (a.host, a.port, a.tls, a.username, a.password) == ("broker.example", 8883, True, "bob", "p@ss")
    assert "p@ss" not in repr(a) and a.display == "mqtts://bob@broker.example:8883"
    b = parse_broker_url("mqtt://h:1884", environ={"QUANTIAN_MQTT_USERNAME": "u", "QUANTIAN_MQTT_PASSWORD": "pw"})
    assert (b.port, b.tls, b.username, b.password) == (1884, False, "u", "pw")
    assert parse_broker_url("mqtt://h", environ={}).port == 1883
    for bad in ("http://h", "mqtt://", "mqtt://h:99999", "mqtt://h/path"):
        with pytest.raises(BadBrokerUrl):
            parse_broker_url(bad, environ={})


def _cert(subject: str, key, issuer_key, issuer: x509.Name | None, *, ca: bool) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _cert("quantian test CA", ca_key, ca_key, None, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("127.0.0.1", key, ca_key, ca_cert.subject, ca=False)
    files = TlsFiles(directory / "server.crt", directory / "server.key", directory / "ca.crt")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


@pytest.fixture
def tls_broker(tmp_path):
    require_kind("mosquitto")
    tls = make_tls_files(tmp_path / "pki")
    broker = start_broker(tmp_path / "broker", kind="mosquitto", tls=tls, users={"alice": PASSWORD})
    try:
        yield broker
    finally:
        broker.stop()


async def test_tls_and_password_end_to_end(tls_broker, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    assert tls_broker.url.startswith("mqtts://127.0.0.1:")
    ca = str(tls_broker.tls.ca_file)
    monkeypatch.setenv("QUANTIAN_MQTT_USERNAME", "alice")
    monkeypatch.setenv("QUANTIAN_MQTT_PASSWORD", PASSWORD)
    bridge = Bridge(BridgeConfig(url=tls_broker.url, client_id="iot-tls", ca_file=ca))
    ticks = list(MarketSim(seed=2, start_time_us=int(time.time() * 1e6)).ticks(50))
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        summary = await trio.to_thread.run_sync(partial(publish_ticks, tls_broker.url, ticks, ca_file=ca))
        assert summary.acked == 50
        got = []
        with trio.fail_after(20):
            async for msg in bridge.messages:
                got.append(msg)
                if len(got) == 50:
                    break
        assert bridge.ack(got) == 50
        nursery.cancel_scope.cancel()
    assert PASSWORD not in caplog.text


async def test_tls_rejects_wrong_password_and_unknown_ca(tls_broker, monkeypatch):
    monkeypatch.delenv("QUANTIAN_MQTT_USERNAME", raising=False)
    monkeypatch.delenv("QUANTIAN_MQTT_PASSWORD", raising=False)
    ca = str(tls_broker.tls.ca_file)
    wrong = tls_broker.url.replace("mqtts://", "mqtts://alice:wrong@")
    with pytest.raises(ConnectRefused) as refused:
        await Bridge(BridgeConfig(url=wrong, client_id="iot-bad", ca_file=ca, connect_timeout_s=10)).run()
    assert "wrong" not in str(refused.value)
    good = tls_broker.url.replace("mqtts://", f"mqtts://alice:{PASSWORD}@")
    with pytest.raises(BrokerUnreachable, match="TLS"):
        await Bridge(BridgeConfig(url=good, client_id="iot-noca", connect_timeout_s=10)).run()
    with pytest.raises(PublishError, match="refused"):
        await trio.to_thread.run_sync(partial(publish_ticks, wrong, [], ca_file=ca))

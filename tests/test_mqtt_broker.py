"""testnet.broker: start, readiness, restart, stop by pid, clear failures."""

from __future__ import annotations

import os
import socket

import pytest
from mqtt_fixtures import mqtt_broker, require_kind  # noqa: F401

from testnet import broker as broker_mod
from testnet.broker import BrokerNotFound, BrokerStartError, probe_mqtt, start_broker, stop_broker_pid


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("mqtt_broker", ["mosquitto", "embedded"], indirect=True)
def test_broker_starts_restarts_on_the_same_port_and_stops(mqtt_broker):
    b = mqtt_broker
    assert b.url == f"mqtt://127.0.0.1:{b.port}" and b.log_path.exists()
    assert probe_mqtt("127.0.0.1", b.port)
    first = b.pid
    b.restart()
    assert b.pid != first and _gone(first)
    assert probe_mqtt("127.0.0.1", b.port)
    pid = b.pid
    b.stop()
    assert b.pid is None and _gone(pid)
    assert not probe_mqtt("127.0.0.1", b.port, timeout=0.5)


def test_stop_by_pid_and_context_manager(tmp_path):
    with start_broker(tmp_path, kind="auto") as b:
        pid = b.pid
        assert stop_broker_pid(pid)
        assert _gone(pid)
        assert stop_broker_pid(pid)  # already gone is fine
    assert b.pid is None


def test_port_in_use_fails_with_the_log_tail(tmp_path):
    require_kind("mosquitto")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(BrokerStartError) as info:
            start_broker(tmp_path, kind="mosquitto", port=port, timeout=5)
    assert "exited" in str(info.value) and "mosquitto.log" in str(info.value)
    assert "in use" in str(info.value).lower()


def test_missing_mosquitto_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(broker_mod, "mosquitto_path", lambda: None)
    with pytest.raises(BrokerNotFound, match="apt-get install -y mosquitto"):
        start_broker(tmp_path, kind="mosquitto")

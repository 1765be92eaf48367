"""MQTT broker fixtures (real broker processes on free 127.0.0.1 ports).

Import into a test module with ``from mqtt_fixtures import mqtt_broker  # noqa: F401``. The
broker kind is Mosquitto when installed, else the embedded amqtt broker; choose it with
``@pytest.mark.parametrize("mqtt_broker", ["mosquitto", "embedded"], indirect=True)``. A missing
Mosquitto fails the test under CI=true and skips it elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from testnet.broker import Broker, mosquitto_path, start_broker


def require_kind(kind: str) -> None:
    if kind == "mosquitto" and not mosquitto_path():
        message = "mosquitto is not installed (apt-get install -y mosquitto)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def mqtt_broker(request: pytest.FixtureRequest, tmp_path) -> Iterator[Broker]:
    kind = getattr(request, "param", "auto")
    require_kind(kind)
    broker = start_broker(tmp_path / f"broker-{kind}", kind=kind)
    try:
        yield broker
    finally:
        broker.stop()

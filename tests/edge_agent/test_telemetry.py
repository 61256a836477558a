"""Telemetry on a real broker: percentiles, counts and process load from real requests, every N seconds."""

from __future__ import annotations

import queue

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.mqtt.link import AgentLink
from edge_agent.reconcile import Reconciler
from edge_agent.runtime.errors import InputError
from edge_agent.runtime.host import ModelHost
from edge_agent.settings import AgentSettings
from edge_agent.telemetry import TelemetryLoop
from fleet_protocol.messages import Telemetry
from fleet_protocol.topics import Topics
from tests.edge_agent.conftest import load_checked


def test_telemetry_reaches_the_broker_every_interval_with_real_numbers(broker, keys, store, digits, images, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S", "0.3")
    settings = AgentSettings(device_id="dev-m", broker_url=broker.url, data_dir=store.root, trusted_keys=str(keys.public_path))
    assert settings.telemetry_interval_s == 0.3
    host = ModelHost()
    host.swap(load_checked(digits["2.0.0"], store.cache))
    link = AgentLink(settings, Reconciler(settings, store, host))
    received: queue.Queue[Telemetry] = queue.Queue()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda _c, _u, msg: received.put(Telemetry.parse(msg.payload))
    port = int(broker.url.rsplit(":", 1)[1])
    sub.connect("127.0.0.1", port)
    sub.subscribe(Topics().telemetry("dev-m"), qos=0)
    sub.loop_start()
    link.start()
    loop = TelemetryLoop(host, link.send_telemetry, settings.telemetry_interval_s)
    try:
        import time

        deadline = time.monotonic() + 10
        while not link.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        loop.start()
        model = host.get("digits")
        for i in range(200):
            model.run({"image": images[i % 64:i % 64 + 1]})
        for _ in range(3):
            with pytest.raises(InputError):
                model.run({"image": images[:1].astype(np.float64)})
        windows = [received.get(timeout=5) for _ in range(3)]
    finally:
        loop.stop()
        link.stop()
        sub.loop_stop()
        sub.disconnect()
    busy = next(w.models["digits"] for w in windows if w.models["digits"].requests)
    assert busy.requests == 203 and busy.errors == 3
    assert 0 < busy.latency_ms_p50 <= busy.latency_ms_p95 <= busy.latency_ms_p99 < 50
    assert busy.version == "2.0.0" and busy.provider == "CPUExecutionProvider"
    assert all(0.2 < w.window_s < 1.5 for w in windows)
    quiet = windows[-1].models["digits"]  # later windows count only their own requests
    assert quiet.requests == 0 and quiet.latency_ms_p95 is None

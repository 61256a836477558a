"""End to end: a real agent process sends its health in every telemetry window (disk, memory, RSS, uptime,
restarts, as edge_agent.health collects them), a real fleet API process evaluates it, and the alert reaches a
webhook receiver started by this test, in Alertmanager's format. Real mosquitto, real processes.

The disk rule's threshold is set below any real disk's use (1 %) and its history needs are lowered (telemetry
every 0.2 s here, not every 10 s), so the alert is certain and quick; what is tested is the path, not the rule
(tests/fleet_api/insights/test_simulated_fleet.py tests the rules)."""

from __future__ import annotations

import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from demo.cluster import Broker, EdgeAgent, FleetApi, wait_for
from fleet_cli.app import main as cli_main
from fleet_protocol.messages import Telemetry
from fleet_protocol.topics import Topics

pytestmark = pytest.mark.e2e


class Receiver:
    """An Alertmanager webhook receiver: every POSTed JSON body lands in `bodies`."""

    def __init__(self) -> None:
        self.bodies: queue.Queue[dict] = queue.Queue()
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.put(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def first_telemetry(broker_url: str, device_id: str, timeout: float = 30) -> Telemetry:
    url = urlparse(broker_url)
    got: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-health-listener")
    client.on_connect = lambda c, *_: c.subscribe(Topics().telemetry(device_id), qos=0)
    client.on_message = lambda _c, _u, m: got.put(m.payload)
    client.connect(url.hostname, url.port)
    client.loop_start()
    try:
        return Telemetry.parse(got.get(timeout=timeout))
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_real_agents_health_reaches_a_webhook_as_an_alert(tmp_path, keys, monkeypatch, capsys):
    with Receiver() as receiver:
        broker = Broker(tmp_path / "broker")
        api = FleetApi(tmp_path / "api", broker.url, keys.public_path, env={
            "EDGEFLEET_API_ALERT_WEBHOOK_URL": receiver.url, "EDGEFLEET_API_ALERT_EXTERNAL_URL": "http://fleet.example",
            "EDGEFLEET_API_ALERT_EVAL_INTERVAL_S": "0.5", "EDGEFLEET_API_ALERT_FOR_S": "0",
            "EDGEFLEET_API_ALERT_DISK_USED_RATIO": "0.01", "EDGEFLEET_API_ALERT_TREND_MIN_POINTS": "3",
            "EDGEFLEET_API_ALERT_TREND_MIN_SPAN_S": "0"})
        agent = EdgeAgent(tmp_path / "cam-h", "cam-h", broker.url, keys.public_path,
                          env={"EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "0.2"})
        broker.start()
        try:
            api.start()
            with api.client() as client:
                client.post("/v1/devices", json={"id": "cam-h", "labels": {"site": "lab"}}).raise_for_status()
                agent.start()
                health = first_telemetry(broker.url, "cam-h").health
                assert health is not None
                assert health.disk_total_bytes and health.disk_free_bytes is not None and health.memory_total_mb
                assert health.agent_rss_mb and health.uptime_s is not None and health.agent_restarts == 0

                body = receiver.bodies.get(timeout=60)
                alert = body["alerts"][0]
                assert body["status"] == "firing" and body["version"] == "4"
                assert alert["labels"]["alertname"] and alert["labels"]["device"] == "cam-h"
                assert "above the 1% threshold" in alert["annotations"]["summary"]
                assert alert["generatorURL"].startswith("http://fleet.example/v1/alerts/")
                # the same alert through the API, and on the device's dashboard page
                listed = wait_for(lambda: client.get("/v1/alerts", params={"device": "cam-h"}).json()["alerts"], 10,
                                  "the alert listed")
                assert listed[0]["kind"] == "disk_full" and listed[0]["state"] == "firing"
                page = client.get("/devices/cam-h", headers={"Cookie": f"edgefleet_token={api.admin_token}"}).text
                assert f'data-alert="{listed[0]["id"]}"' in page and "disk_full" in page
                fleet_page = client.get("/alerts", headers={"Cookie": f"edgefleet_token={api.admin_token}"}).text
                assert f'data-alert="{listed[0]["id"]}"' in fleet_page and "cam-h" in fleet_page
                # and through the CLI
                monkeypatch.setenv("EDGEFLEET_SERVER", api.url)
                monkeypatch.setenv("EDGEFLEET_TOKEN", api.admin_token)
                monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
                capsys.readouterr()
                assert cli_main(["alerts", "list", "--device", "cam-h", "--json"]) == 0
                assert [a["id"] for a in json.loads(capsys.readouterr().out)] == [listed[0]["id"]]
        finally:
            agent.stop()
            api.stop()
            broker.stop()

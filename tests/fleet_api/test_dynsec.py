"""Per-device broker credentials, checked against a real mosquitto running the dynamic security plugin."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from demo.cluster import wait_for
from fleet_api.app import create_app
from fleet_api.settings import ApiSettings
from fleet_protocol.messages import Desired
from fleet_protocol.topics import Topics

ADMIN = "eft_dynsec-admin"
TOPICS = Topics()


class DeviceConn:
    """A device's MQTT session that records what the broker granted, refused and delivered."""

    def __init__(self, port: int, creds: dict) -> None:
        self.subacks: dict[int, list[str]] = {}
        self.pubacks: dict[int, str] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.connect_rc: str | None = None
        self.disconnected = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=creds["client_id"], protocol=mqtt.MQTTv5)
        self.c.username_pw_set(creds["username"], creds["password"])
        self.c.on_connect = lambda *a: setattr(self, "connect_rc", str(a[3]))
        self.c.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.__setitem__(mid, [str(r) for r in rcs])
        self.c.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, str(rc))
        self.c.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.c.on_disconnect = lambda *a: self.disconnected.set()
        self.c.reconnect_delay_set(60, 120)  # no quiet reconnects during the test
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_for(lambda: self.connect_rc is not None, 5, "CONNACK")

    def subscribe(self, topic: str) -> str:
        _, mid = self.c.subscribe(topic, qos=1)
        return wait_for(lambda: self.subacks.get(mid), 5, f"SUBACK for {topic}")[0]

    def publish(self, topic: str, payload: bytes = b"{}") -> str:
        mid = self.c.publish(topic, payload, qos=1).mid
        return wait_for(lambda: self.pubacks.get(mid), 5, f"PUBACK for {topic}")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def api(dynsec_broker, tmp_path, keys):
    settings = ApiSettings(database_url=f"sqlite:///{tmp_path / 'api.db'}", broker_url=dynsec_broker.url, dynsec=True,
                           mqtt_username=dynsec_broker.admin_username, mqtt_password=dynsec_broker.admin_password,
                           artifact_dir=tmp_path / "artifacts", trusted_keys=str(keys.public_path), admin_token=ADMIN,
                           tick_interval_s=0.2)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, 10, "the API to connect")
        yield client


def test_devices_get_own_credentials_limited_to_their_own_topics(api, dynsec_broker, bundles):
    a = api.post("/v1/devices", json={"id": "cam-a", "labels": {"site": "x"}}).json()
    b = api.post("/v1/devices", json={"id": "cam-b", "labels": {"site": "y"}}).json()
    creds = a["credentials"]
    assert creds["username"] == "cam-a" and creds["client_id"] == "device-cam-a" and len(creds["password"]) >= 24
    assert "credentials" not in api.get("/v1/devices/cam-a").json()  # shown once
    assert api.get("/v1/devices/cam-a").json()["broker_username"] == "cam-a"

    wrong = DeviceConn(dynsec_broker.port, {**creds, "password": "guess"})
    assert wrong.connect_rc != "Success"
    wrong.close()
    other_client_id = DeviceConn(dynsec_broker.port, {**creds, "client_id": "device-cam-b"})
    assert other_client_id.connect_rc != "Success"  # cannot take over another device's session
    other_client_id.close()

    dev = DeviceConn(dynsec_broker.port, creds)
    try:
        assert dev.connect_rc == "Success"
        assert dev.subscribe(TOPICS.desired("cam-a")) == "Granted QoS 1"
        assert dev.subscribe(TOPICS.artifact_chunks("ab" * 32)) == "Granted QoS 1"
        assert dev.subscribe(TOPICS.desired("cam-b")) == "Not authorized"
        assert dev.subscribe(TOPICS.all_devices("desired")) == "Not authorized"
        assert dev.subscribe(TOPICS.all_devices("telemetry")) == "Not authorized"
        assert dev.subscribe("#") == "Not authorized"
        for channel in ("reported", "telemetry", "status", "fetch", "events"):
            assert dev.publish(TOPICS.device("cam-b", channel)) == "Not authorized", channel
        assert dev.publish(TOPICS.desired("cam-a")) == "Not authorized"  # nor its own desired state
        assert dev.publish(TOPICS.artifact_chunk("ab" * 32, 0)) == "Not authorized"
        assert dev.publish(TOPICS.device("cam-a", "telemetry"), b'{"window_s": 1, "requests": 0, "errors": 0}') in (
            "Success", "No matching subscribers")

        # The API (its own admin credentials) publishes desired states the device then receives.
        api.post("/v1/models", content=bundles["1.0.0"].read_bytes()).raise_for_status()
        r = api.post("/v1/rollouts", json={"model": "digits", "version": "1.0.0", "selector": "site=x"})
        assert r.status_code == 201, r.text
        topic, payload = wait_for(lambda: next((m for m in dev.messages if m[0] == TOPICS.desired("cam-a")), None), 10,
                                  "the desired state to reach the device")
        assert Desired.parse(payload).models["digits"].bundle.version == "1.0.0"

        # Revoking removes the broker client: the session is cut, and the credentials no longer connect.
        assert api.delete("/v1/devices/cam-a").json()["revoked"] is True
        assert dev.disconnected.wait(5)
        # The API's role may clear the revoked device's retained desired, reported and status: the broker
        # acknowledges all three, so the revision is no longer owed.
        wait_for(lambda: (d := api.get("/v1/devices/cam-a").json())["published_revision"] == d["desired_revision"], 10,
                 "the retained messages to be cleared")
    finally:
        dev.close()
    again = DeviceConn(dynsec_broker.port, creds)
    assert again.connect_rc != "Success"
    again.close()
    actions = [e["action"] for e in api.get("/v1/audit").json()]
    assert {"device.revoke", "rollout.create"} <= set(actions[:3]) and actions.count("device.register") == 2
    # Rotating gives cam-b new credentials; the old ones stop working.
    rotated = api.post("/v1/devices/cam-b/credentials").json()["credentials"]
    old = DeviceConn(dynsec_broker.port, b["credentials"])
    new = DeviceConn(dynsec_broker.port, rotated)
    assert old.connect_rc != "Success" and new.connect_rc == "Success"
    old.close()
    new.close()


def test_provisioning_fails_cleanly_when_the_broker_cannot_create_the_client(api, dynsec_broker):
    dynsec_broker.stop()
    r = api.post("/v1/devices", json={"id": "cam-z"})
    assert r.status_code == 503 and "broker" in r.json()["error"]
    assert api.get("/v1/devices/cam-z").status_code == 404  # nothing half-registered

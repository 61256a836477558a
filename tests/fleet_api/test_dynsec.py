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
from fleet_protocol.messages import Desired, Fetch
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
    assert creds["username"] == "device-cam-a" and creds["client_id"] == "device-cam-a" and len(creds["password"]) >= 24
    assert "credentials" not in api.get("/v1/devices/cam-a").json()  # shown once
    assert api.get("/v1/devices/cam-a").json()["broker_username"] == "device-cam-a"

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
        assert dev.subscribe(TOPICS.artifact_chunks("ab" * 32)) == "Not authorized"  # not in its desired state
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

        assert dev.subscribe(TOPICS.artifact_chunks(bundle_of(payload)[1])) == "Granted QoS 1"  # now it may

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


def bundle_of(payload: bytes, model: str = "digits") -> tuple[str, str] | None:
    """(version, sha256) of the model's bundle in a desired state, on contract v1 (`model`) or v2 (`models`)."""
    if not payload:
        return None
    desired = Desired.parse(payload)
    if hasattr(desired, "models"):
        spec = desired.models.get(model)
        ref = spec.bundle if spec is not None else None
    else:
        ref = desired.model
    return (ref.version, ref.sha256) if ref is not None else None


def desired_version(conn: DeviceConn, device_id: str) -> str | None:
    last = [p for t, p in conn.messages if t == TOPICS.desired(device_id)][-1:]
    bundle = bundle_of(last[0]) if last else None
    return bundle[0] if bundle else None


def test_registering_device_admin_does_not_lock_the_api_out(api, dynsec_broker, bundles):
    """Issue 12 #1: a device registered with the id of the broker's admin account deleted that account."""
    assert dynsec_broker.admin_username == "admin"  # the API's own login
    creds = api.post("/v1/devices", json={"id": "admin", "labels": {"site": "x"}}).json()["credentials"]
    assert creds["username"] == "device-admin"
    # The API can still manage the broker and publish: the next device gets credentials, a rollout reaches "admin".
    r = api.post("/v1/devices", json={"id": "cam-b"})
    assert r.status_code == 201, r.text
    dev = DeviceConn(dynsec_broker.port, creds)
    try:
        assert dev.connect_rc == "Success"
        assert dev.subscribe(TOPICS.desired("admin")) == "Granted QoS 1"
        api.post("/v1/models", content=bundles["1.0.0"].read_bytes()).raise_for_status()
        assert api.post("/v1/rollouts", json={"model": "digits", "version": "1.0.0", "selector": "site=x"}).status_code == 201
        wait_for(lambda: any(t == TOPICS.desired("admin") for t, _ in dev.messages), 10, "the desired state of device admin")
        # Revoking device "admin" removes the device's client, never the service account.
        assert api.delete("/v1/devices/admin").json()["revoked"] is True
        assert dev.disconnected.wait(5)
    finally:
        dev.close()
    assert api.post("/v1/devices", json={"id": "cam-c"}).status_code == 201
    assert api.get("/readyz").status_code == 200


def test_any_device_subscribing_to_all_artifacts_receives_only_its_own(api, dynsec_broker, bundles):
    """Issue 12 #12: any device could subscribe to `artifacts/#` and so received every bundle any device fetched.
    Now a device may subscribe to, and receives, only the artifacts its desired state names, while it names them."""
    creds = {d: api.post("/v1/devices", json={"id": d, "labels": {"site": site}}).json()["credentials"]
             for d, site in (("cam-a", "x"), ("cam-b", "y"))}
    a, b = DeviceConn(dynsec_broker.port, creds["cam-a"]), DeviceConn(dynsec_broker.port, creds["cam-b"])
    try:
        for d, conn in (("cam-a", a), ("cam-b", b)):
            assert conn.subscribe(TOPICS.desired(d)) == "Granted QoS 1"
        v1 = api.post("/v1/models", content=bundles["1.0.0"].read_bytes()).json()["sha256"]
        v2 = api.post("/v1/models", content=bundles["2.0.0"].read_bytes()).json()["sha256"]
        assert b.subscribe(f"{TOPICS.prefix}/artifacts/#") == "Not authorized"
        assert b.subscribe(TOPICS.artifact_chunks(v1)) == "Not authorized"

        first = api.post("/v1/rollouts", json={"model": "digits", "version": "1.0.0", "selector": "site=x"}).json()
        wait_for(lambda: any(t == TOPICS.desired("cam-a") for t, _ in a.messages), 10, "cam-a's desired state")
        assert a.subscribe(TOPICS.artifact_chunks(v1)) == "Granted QoS 1"
        assert b.subscribe(TOPICS.artifact_chunks(v1)) == "Not authorized"
        assert a.publish(TOPICS.fetch("cam-a"), Fetch(sha256=v1, missing=[0]).to_bytes()) == "Success"
        wait_for(lambda: any(t == TOPICS.artifact_chunk(v1, 0) for t, _ in a.messages), 10, "chunk 0 at cam-a")

        # cam-a moves on to 2.0.0: it loses 1.0.0 — the subscription it still holds delivers nothing more —
        # while cam-b, now told 1.0.0, may fetch it.
        api.post(f"/v1/rollouts/{first['id']}/abort").raise_for_status()
        api.post("/v1/rollouts", json={"model": "digits", "version": "2.0.0", "selector": "site=x"}).raise_for_status()
        wait_for(lambda: desired_version(a, "cam-a") == "2.0.0", 10, "cam-a's desired state of 2.0.0")
        assert a.subscribe(TOPICS.artifact_chunks(v2)) == "Granted QoS 1"
        api.post("/v1/rollouts", json={"model": "digits", "version": "1.0.0", "selector": "site=y"}).raise_for_status()
        wait_for(lambda: any(t == TOPICS.desired("cam-b") for t, _ in b.messages), 10, "cam-b's desired state")
        assert b.subscribe(TOPICS.artifact_chunks(v1)) == "Granted QoS 1"
        assert b.publish(TOPICS.fetch("cam-b"), Fetch(sha256=v1, missing=[0]).to_bytes()) == "Success"
        wait_for(lambda: any(t == TOPICS.artifact_chunk(v1, 0) for t, _ in b.messages), 10, "1.0.0's chunk 0 at cam-b")
        assert a.publish(TOPICS.fetch("cam-a"), Fetch(sha256=v2, missing=[0]).to_bytes()) == "Success"
        wait_for(lambda: any(t == TOPICS.artifact_chunk(v2, 0) for t, _ in a.messages), 10, "2.0.0's chunk 0 at cam-a")
        assert [t for t, _ in a.messages if t.startswith(f"{TOPICS.prefix}/artifacts/{v1}/")] == [TOPICS.artifact_chunk(v1, 0)]
        assert not [t for t, _ in b.messages if t.startswith(f"{TOPICS.prefix}/artifacts/{v2}/")]
    finally:
        a.close()
        b.close()
    # New credentials keep what the desired state grants: cam-b may still fetch 1.0.0, and only that.
    rotated = DeviceConn(dynsec_broker.port, api.post("/v1/devices/cam-b/credentials").json()["credentials"])
    try:
        assert rotated.subscribe(TOPICS.artifact_chunks(v1)) == "Granted QoS 1"
        assert rotated.subscribe(TOPICS.artifact_chunks(v2)) == "Not authorized"
    finally:
        rotated.close()


def test_revoking_a_device_whose_stored_login_names_a_service_account_leaves_that_account(api, dynsec_broker, tmp_path):
    """A row made before logins had their own namespace may hold a service account's name (a device `admin`,
    username `admin`): revoking it must delete only what was made for the device, never the account."""
    import sqlite3

    api.post("/v1/devices", json={"id": "admin"}).raise_for_status()
    with sqlite3.connect(tmp_path / "api.db") as db:
        db.execute("UPDATE devices SET broker_username = 'admin' WHERE id = 'admin'")
    assert api.delete("/v1/devices/admin").json()["revoked"] is True
    r = api.post("/v1/devices", json={"id": "cam-after"})  # the API still administers the broker
    assert r.status_code == 201, r.text


def test_the_api_refuses_a_login_of_its_own_in_the_devices_namespace(dynsec_broker):
    from fleet_api.mqtt.broker import Broker as BrokerClient
    from fleet_api.mqtt.dynsec import DynSec

    with pytest.raises(ValueError, match="devices' namespace"):
        DynSec(BrokerClient(dynsec_broker.url), TOPICS, "device-ops")

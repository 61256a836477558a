"""The HTTP shell of desired state v2, on a real broker and SQLite: strict bodies, ranges, the OpenAPI document,
labels, device config, profiles, models per device, the composed state; and over MQTT: hello after a broker
restart without persistence, revocation clearing the retained messages."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from demo.cluster import wait_for
from fleet_protocol.messages import (
    Desired,
    Hello,
    ModelReport,
    ModelState,
    Reported,
    ServingModel,
    Status,
)
from fleet_protocol.topics import Topics

TOPICS = Topics()
CAM = {"name": "gate", "source": "rtsp://user:secret@cam.local/1", "detector": "digits"}
BIG = 2**63


class Listener:
    """A fresh MQTT session that records what it receives (retained messages included)."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload, m.retain))
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.subscribed.wait(10)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def seeded(api, bundles):
    api.post("/v1/devices", json={"id": "cam-1", "labels": {"site": "a"}}).raise_for_status()
    api.post("/v1/devices", json={"id": "cam-2", "labels": {"site": "b"}}).raise_for_status()
    v1 = api.post("/v1/models", content=bundles["1.0.0"].read_bytes()).json()
    v2 = api.post("/v1/models", content=bundles["2.0.0"].read_bytes()).json()
    return api, v1, v2


def test_every_response_in_the_openapi_document_has_a_schema(api):
    doc = api.get("/openapi.json").json()
    missing = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for code, response in op["responses"].items():
                if not code.startswith("2"):
                    continue
                content = response.get("content") or {}
                schemas = [c.get("schema") or {} for c in content.values()]
                ok = bool(schemas) and all(
                    "$ref" in s or "$ref" in (s.get("items") or {}) or s.get("type") == "string" for s in schemas)
                if not ok:
                    missing.append(f"{method.upper()} {path} {code}: {schemas}")
    assert missing == []
    assert {"DeviceOut", "RolloutOut", "ProfileOut", "DesiredOut", "Gates", "Runtime"} <= set(doc["components"]["schemas"])


@pytest.mark.parametrize("method, path, body", [
    ("post", "/v1/devices", {"id": "cam-9"}),
    ("patch", "/v1/devices/cam-1", {"labels": {"a": "b"}}),
    ("put", "/v1/devices/cam-1/config", {"memory_budget_mb": 100}),
    ("put", "/v1/devices/cam-1/models/digits", {"version": "1.0.0"}),
    ("post", "/v1/profiles", {"name": "p", "selector": "site=a"}),
    ("put", "/v1/profiles/p", {"selector": "site=a"}),
    ("post", "/v1/rollouts", {"model": "digits", "version": "1.0.0"}),
    ("post", "/v1/rollouts/1/pause", {"reason": "x"}),
    ("post", "/v1/tokens", {"name": "n", "role": "viewer"}),
])
def test_every_request_body_refuses_unknown_fields(seeded, method, path, body):
    api, *_ = seeded
    r = getattr(api, method)(path, json={**body, "surprise": 1})
    assert r.status_code == 422 and "surprise" in r.json()["error"], r.text


@pytest.mark.parametrize("field, body", [
    ("require_providr", {"runtime": {"require_providr": "CUDAExecutionProvider"}}),
    ("max_fail", {"gates": {"max_fail": 1}}),
    ("sources", {"runtime": {"sources": []}}),
])
def test_a_rollout_with_an_unknown_nested_field_is_refused_not_silently_dropped(seeded, field, body):
    """Issue 10: `runtime.require_provider` was dropped and the rollout served on CPU."""
    api, *_ = seeded
    r = api.post("/v1/rollouts", json={"model": "digits", "version": "2.0.0", **body})
    assert r.status_code == 422 and field in r.json()["error"]
    assert api.get("/v1/rollouts").json() == []


def test_a_rollout_carries_require_provider_and_precision_to_the_desired_state(seeded):
    api, v1, v2 = seeded
    runtime = {"require_provider": "CUDAExecutionProvider", "precision": "fp16"}
    r = api.post("/v1/rollouts", json={"model": "digits", "version": "2.0.0", "selector": "site=a", "runtime": runtime})
    assert r.status_code == 201, r.text
    assert r.json()["runtime"]["require_provider"] == "CUDAExecutionProvider"
    spec = api.get("/v1/devices/cam-1/desired").json()["desired"]["models"]["digits"]
    assert spec["runtime"]["require_provider"] == "CUDAExecutionProvider" and spec["runtime"]["precision"] == "fp16"


@pytest.mark.parametrize("method, path", [
    ("get", f"/v1/rollouts/{BIG}"), ("post", f"/v1/rollouts/{BIG}/pause"), ("delete", f"/v1/tokens/{BIG}"),
    ("get", f"/v1/audit?before_id={BIG}"), ("get", "/v1/audit?limit=99999999999999999999"),
    ("get", f"/v1/devices/cam-1/telemetry?limit={BIG}"), ("get", "/v1/rollouts/-1"),
])
def test_out_of_range_integers_in_paths_and_queries_are_4xx_not_500(seeded, method, path):
    """Issue 12 #7: these answered 500 with an OverflowError."""
    api, *_ = seeded
    r = getattr(api, method)(path)
    assert 400 <= r.status_code < 500 and "error" in r.json(), (path, r.status_code, r.text)


@pytest.mark.parametrize("gates", [{"max_concurrent": 0}, {"max_concurrent": -3}, {"max_concurrent": 2.5},
                                   {"max_concurrent": "many"}])
def test_max_concurrent_must_be_a_positive_whole_number_of_devices(seeded, gates):
    api, *_ = seeded
    r = api.post("/v1/rollouts", json={"model": "digits", "version": "2.0.0", "gates": gates})
    assert r.status_code == 422 and "max_concurrent" in r.json()["error"], r.text
    assert api.get("/v1/rollouts").json() == []


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_nan_or_infinity_in_gates_is_refused_with_422(seeded, value):
    """Issue 12 #7: NaN was accepted on SQLite (the rollout could then never abort), a 500 on PostgreSQL."""
    api, *_ = seeded
    body = b'{"model": "digits", "version": "2.0.0", "gates": {"max_error_rate": ' + value + b"}}"
    r = api.post("/v1/rollouts", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "max_error_rate" in r.json()["error"], r.text
    assert api.get("/v1/rollouts").json() == []


def test_labels_config_profiles_models_and_the_composed_desired_state_over_http(seeded):
    api, v1, v2 = seeded
    r = api.patch("/v1/devices/cam-2", json={"labels": {"site": "a", "rack": "7"}})
    assert r.status_code == 200 and r.json()["labels"] == {"site": "a", "rack": "7"}
    r = api.post("/v1/profiles", json={"name": "site-a", "selector": "site=a", "priority": 5, "cameras": [CAM],
                                       "runtime": {"digits": {"intra_op_threads": 2}}})
    assert r.status_code == 201 and r.json()["devices_changed"] == ["cam-1", "cam-2"], r.text
    assert api.post("/v1/profiles", json={"name": "site-a"}).status_code == 409
    assert api.put("/v1/profiles/site-a", json={"selector": "site=a", "priority": 5, "cameras": [CAM],
                                                "runtime": {"digits": {"intra_op_threads": 2}}}).status_code == 200
    assert [p["name"] for p in api.get("/v1/profiles").json()] == ["site-a"]
    assert api.get("/v1/profiles/nope").status_code == 404
    # a camera naming an unknown source type is refused where it is typed
    bad = api.put("/v1/devices/cam-1/config", json={"cameras": [{**CAM, "source": {"type": "webcam"}}]})
    assert bad.status_code == 422
    r = api.put("/v1/devices/cam-1/config", json={"memory_budget_mb": 300, "runtime": {"digits": {"intra_op_threads": 1}}})
    assert r.status_code == 200 and r.json()["config"]["memory_budget_mb"] == 300
    assert api.get("/v1/devices/cam-1/config").json()["config"]["runtime"]["digits"]["intra_op_threads"] == 1
    r = api.put("/v1/devices/cam-1/models/digits", json={"version": "1.0.0"})
    assert r.status_code == 200, r.text
    desired = api.get("/v1/devices/cam-1/desired").json()
    d = desired["desired"]
    assert d["schema"] == 2 and d["memory_budget_mb"] == 300 and d["cameras"][0]["name"] == "gate"
    assert d["models"]["digits"]["bundle"]["sha256"] == v1["sha256"] and d["models"]["digits"]["runtime"]["intra_op_threads"] == 1
    assert desired["sources"]["models"]["digits"]["runtime"] == "device" and desired["sources"]["cameras"] == "profile:site-a"
    assert desired["problems"] == []
    assert api.get("/v1/devices/cam-2/desired").json()["problems"] == [
        "camera 'gate' names model 'digits', which the device does not have"]
    assert api.put("/v1/devices/cam-1/models/digits", json={"version": "9.9.9"}).status_code == 404
    assert api.put("/v1/devices/cam-1/models/Bad Name", json={"version": "1.0.0"}).status_code == 422
    # a rollout of digits: the model cannot be changed by hand meanwhile
    r = api.post("/v1/rollouts", json={"model": "digits", "version": "2.0.0", "selector": "site=a", "waves": "1,100%"})
    assert r.status_code == 201
    assert api.delete("/v1/devices/cam-1/models/digits").status_code == 409
    rollout = api.get(f"/v1/rollouts/{r.json()['id']}").json()
    assert [w["wave"] for w in rollout["wave_progress"]] == [1, 2] and rollout["devices"][0]["state"] == "notified"
    assert api.post(f"/v1/rollouts/{rollout['id']}/abort").json()["state"] == "aborted"
    r = api.delete("/v1/devices/cam-1/models/digits")
    assert r.status_code == 200 and r.json()["desired"]["models"] == {}
    assert api.delete("/v1/devices/cam-1/models/digits").status_code == 404
    assert api.delete("/v1/profiles/site-a").json()["devices_changed"] == ["cam-1", "cam-2"]
    actions = {a["action"] for a in api.get("/v1/audit?limit=100").json()}
    assert {"device.labels", "profile.create", "profile.update", "profile.delete", "device.config",
            "device.model.assign", "device.model.remove"} <= actions


def test_a_device_gets_its_desired_state_by_hello_after_a_broker_restart_without_persistence(api, broker, bundles):
    api.post("/v1/devices", json={"id": "cam-1"}).raise_for_status()
    api.post("/v1/models", content=bundles["1.0.0"].read_bytes()).raise_for_status()
    api.put("/v1/devices/cam-1/models/digits", json={"version": "1.0.0"}).raise_for_status()
    first = Listener(broker.port, TOPICS.desired("cam-1"), "probe-1")
    try:
        wait_for(lambda: first.messages, 10, "the retained desired state")
    finally:
        first.close()
    broker.stop()
    broker.start()  # no persistence: every retained message is gone
    wait_for(lambda: api.get("/readyz").status_code == 200, 30, "the API to reconnect")
    device = Listener(broker.port, TOPICS.desired("cam-1"), "device-cam-1")
    try:
        time.sleep(0.5)  # retained messages come right after SUBACK: the broker really lost this one
        assert device.messages == []
        device.publish(TOPICS.hello("cam-1"), Hello(revision=0).to_bytes())
        _, payload, _ = wait_for(lambda: device.messages and device.messages[-1], 10, "the answer to hello")
        assert Desired.parse(payload).models["digits"].bundle.version == "1.0.0"
    finally:
        device.close()
    # answered retained: the next subscriber finds it on the broker again
    again = Listener(broker.port, TOPICS.desired("cam-1"), "probe-2")
    try:
        _, payload, retained = wait_for(lambda: again.messages and again.messages[0], 10, "the retained desired state")
        assert retained and Desired.parse(payload).revision == 1
    finally:
        again.close()


def test_revocation_clears_the_retained_status_and_reported_on_the_broker(api, broker):
    """Issue 12 #11."""
    api.post("/v1/devices", json={"id": "cam-1"}).raise_for_status()
    device = Listener(broker.port, TOPICS.desired("cam-1"), "device-cam-1")
    served = ServingModel(name="digits", version="1.0.0", sha256="a" * 64)
    device.publish(TOPICS.status("cam-1"), Status(online=True).to_bytes(), retain=True)
    device.publish(TOPICS.reported("cam-1"), Reported(revision=0, models={"digits": ModelReport(
        state=ModelState.serving, serving=served)}).to_bytes(), retain=True)
    device.close()
    wait_for(lambda: api.get("/v1/devices/cam-1").json()["online"], 10, "the status")
    probe = Listener(broker.port, f"{TOPICS.prefix}/devices/cam-1/+", "probe-before")
    try:  # the probe can see retained messages: without the fix, they stay
        wait_for(lambda: {t.rsplit("/", 1)[1] for t, _, r in probe.messages if r} >= {"status", "reported"}, 10, "retained")
    finally:
        probe.close()
    assert api.delete("/v1/devices/cam-1").json()["revoked"] is True
    after = Listener(broker.port, f"{TOPICS.prefix}/devices/cam-1/+", "probe-after")
    try:
        time.sleep(1.0)  # retained messages arrive right after SUBACK; give them a generous moment
        assert [(t, p) for t, p, retained in after.messages if retained] == []
    finally:
        after.close()


def test_routes_take_the_service_through_the_typed_dependency():
    """Issue 11: one `ServiceDep` instead of `request.app.state.service` look-ups in every route."""
    from pathlib import Path

    import fleet_api.routes as routes

    folder = Path(routes.__file__).parent
    lookups = {p.name for p in folder.glob("*.py") if "app.state.service" in p.read_text() and p.name != "deps.py"}
    assert lookups == set()
    assert sum("ServiceDep" in p.read_text() for p in folder.glob("*.py")) >= 6

"""The HTTP shell on a real broker and database: auth, tokens, audit, bad input, telemetry, /metrics, dashboard,
and bad MQTT input (malformed payloads, unknown devices) that is refused without losing what comes next."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from demo.cluster import wait_for
from fleet_protocol.messages import (
    ModelReport,
    ModelState,
    ModelTelemetry,
    Reported,
    ServingModel,
    Status,
    Telemetry,
)
from fleet_protocol.topics import Topics
from tests.fleet_api.conftest import ADMIN

TOPICS = Topics()


def as_token(client, token):
    return {"Authorization": f"Bearer {token}"} if token else {"Authorization": ""}


def test_roles_and_tokens(api):
    assert api.get("/healthz").status_code == 200 and api.get("/metrics", headers=as_token(api, None)).status_code == 200
    r = api.get("/v1/devices", headers=as_token(api, None))
    assert r.status_code == 401 and "missing API token" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
    assert api.get("/v1/devices", headers=as_token(api, "eft_wrong")).status_code == 401
    assert api.post("/v1/tokens", json={"name": "x", "role": "root"}).status_code == 400
    viewer = api.post("/v1/tokens", json={"name": "grafana", "role": "viewer"}).json()
    operator = api.post("/v1/tokens", json={"name": "ci", "role": "operator"}).json()
    assert viewer["token"].startswith("eft_") and "token" not in api.get("/v1/tokens").json()[0]
    assert api.get("/v1/devices", headers=as_token(api, viewer["token"])).status_code == 200
    r = api.post("/v1/rollouts", json={"model": "digits", "version": "9.9.9"}, headers=as_token(api, viewer["token"]))
    assert r.status_code == 403 and "needs 'operator'" in r.json()["error"]
    r = api.post("/v1/devices", json={"id": "cam-1"}, headers=as_token(api, operator["token"]))
    assert r.status_code == 403
    assert api.post("/v1/rollouts", json={"model": "digits", "version": "9.9.9"},
                    headers=as_token(api, operator["token"])).status_code == 404  # allowed, but no such model
    assert api.get("/v1/whoami", headers=as_token(api, operator["token"])).json()["role"] == "operator"
    assert api.delete(f"/v1/tokens/{viewer['id']}").status_code == 200
    assert api.get("/v1/devices", headers=as_token(api, viewer["token"])).status_code == 401
    audit = api.get("/v1/audit").json()
    assert [a["action"] for a in audit[:3]] == ["token.revoke", "token.create", "token.create"]
    assert audit[0]["actor"].endswith(":bootstrap-admin")


def test_bad_input_gets_a_clear_error_and_changes_nothing(api, bundles):
    r = api.post("/v1/devices", json={"id": "bad id!"})
    assert r.status_code == 400 and "must match" in r.json()["error"]
    r = api.post("/v1/devices", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"].startswith("invalid request")
    assert api.post("/v1/devices", json={"id": "cam-1", "labels": {"site": "a"}}).status_code == 201
    assert api.post("/v1/devices", json={"id": "cam-1"}).status_code == 409
    assert api.get("/v1/devices/nope").status_code == 404
    assert api.get("/v1/devices/nope/telemetry").status_code == 404
    assert api.post("/v1/models", content=b"not a tar").status_code == 400
    assert api.post("/v1/models", content=bundles["1.0.0"].read_bytes()).status_code == 201
    r = api.post("/v1/rollouts", json={"model": "digits", "version": "1.0.0", "waves": "1,ten%"})
    assert r.status_code == 400 and "neither a count nor a percentage" in r.json()["error"]
    r = api.post("/v1/rollouts", json={"model": "digits", "version": "1.0.0", "selector": "site=mars"})
    assert r.status_code == 400 and "no registered device matches" in r.json()["error"]
    r = api.post("/v1/rollouts", json={"model": "digits", "version": "1.0.0", "selector": "site"})
    assert r.status_code == 400 and "not key=value" in r.json()["error"]
    r = api.post("/v1/rollouts", json={"model": "nope", "version": "1.0.0"})
    assert r.status_code == 404 and "no bundle for model 'nope'" in r.json()["error"]
    assert api.post("/v1/rollouts/999/pause").status_code == 404
    assert api.post("/v1/rollouts/1/explode").status_code == 422
    assert api.get("/v1/rollouts").json() == []
    assert [d["id"] for d in api.get("/v1/devices").json()] == ["cam-1"]


def test_device_messages_telemetry_metrics_and_dashboard(api, device_client, bundles):
    api.post("/v1/devices", json={"id": "cam-1", "labels": {"site": "a"}}).raise_for_status()
    v1 = api.post("/v1/models", content=bundles["1.0.0"].read_bytes()).json()
    served = ServingModel(name="digits", version="1.0.0", sha256=v1["sha256"])
    def pub(dev, ch, payload):
        device_client.publish(TOPICS.device(dev, ch), payload, qos=1).wait_for_publish(5)

    # Garbage, wrong schema, unknown device: each refused and counted …
    pub("cam-1", "reported", b"\xff\xfe not json")
    pub("cam-1", "telemetry", b'{"schema": 2, "window_s": -1}')
    pub("cam-1", "status", b'{"online": "yes"}')
    pub("cam-1", "reported", b'{"schema": 3, "revision": 1}')
    pub("ghost", "telemetry", Telemetry(window_s=10).to_bytes())
    # … and the valid messages right after them all arrive.
    pub("cam-1", "status", Status(online=True).to_bytes())
    entry = ModelReport(state=ModelState.serving, desired=served, serving=served, provider="CPUExecutionProvider",
                        golden_passed=True)
    pub("cam-1", "reported", Reported(revision=0, models={"digits": entry}).to_bytes())
    for p95 in (1.0, 3.0):
        pub("cam-1", "telemetry", Telemetry(window_s=10, models={"digits": ModelTelemetry(
            version="1.0.0", requests=10, errors=1, latency_ms_p95=p95)}).to_bytes())
    wait_for(lambda: api.get("/v1/devices/cam-1").json()["online"], 10, "status")
    device = wait_for(lambda: (d := api.get("/v1/devices/cam-1").json())["models"] and d, 10, "reported")
    assert device["models"]["digits"]["state"] == "serving" and device["models"]["digits"]["version"] == "1.0.0"
    assert device["models"]["digits"]["provider"] == "CPUExecutionProvider"
    rows = wait_for(lambda: (m := api.get("/v1/devices/cam-1/telemetry?model=digits").json()["minutes"])
                    and m[0]["messages"] == 2 and m, 10, "telemetry rollup")
    assert rows[0]["requests"] == 20 and rows[0]["latency_ms_p95"] == pytest.approx(2.0) and rows[0]["model_version"] == "1.0.0"
    metrics = api.get("/metrics", headers=as_token(api, None)).text
    assert 'edgefleet_fleet_devices{model="digits",state="serving",version="1.0.0"} 1.0' in metrics
    assert "edgefleet_fleet_devices_online 1.0" in metrics
    assert 'edgefleet_api_messages_rejected_total{channel="reported",reason="malformed"}' in metrics
    assert 'edgefleet_api_messages_rejected_total{channel="telemetry",reason="notfound"}' in metrics
    assert 'edgefleet_api_messages_rejected_total{channel="telemetry",reason="malformed"}' in metrics
    assert 'edgefleet_api_messages_rejected_total{channel="status",reason="malformed"}' in metrics  # "yes" is no bool
    assert 'edgefleet_api_messages_rejected_total{channel="reported",reason="schema"}' in metrics
    r = api.post("/v1/rollouts", json={"model": "digits", "version": "1.0.0", "selector": "site=a", "waves": "100%"})
    assert r.status_code == 201 and r.json()["state"] == "succeeded"  # already serving it
    # Dashboard (tests/fleet_api/web and tests/e2e/test_dashboard.py for the rest): the first visit is the
    # sign-in page, not an error; with a token (kept in a cookie) the fleet.
    anon = TestClient(api.app)
    page = anon.get("/")
    assert page.status_code == 200 and page.url.path == "/login" and "<form" in page.text and "flash bad" not in page.text
    assert anon.post("/login", data={"token": "eft_nope"}).status_code == 401
    assert anon.post("/login", data={"token": ADMIN}, follow_redirects=False).status_code == 303
    page = anon.get("/")
    assert page.status_code == 200 and 'data-device="cam-1"' in page.text and 'data-state="serving"' in page.text
    assert 'data-state="succeeded"' in anon.get("/rollouts").text

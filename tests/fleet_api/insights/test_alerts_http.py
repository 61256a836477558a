"""The alerts leave the API: a webhook receiver started by the test gets them in Alertmanager's payload format
(after the receiver's own failures, by retry), `GET /v1/alerts` serves them with filters and typed evidence,
and Prometheus sees them. Real SQLite, a real HTTP receiver on a free port, the evaluator's own thread."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from demo.cluster import wait_for
from fleet_api import auth
from fleet_api.errors import FleetError
from fleet_api.insights import store
from fleet_api.insights.alerts import AlertState, Kind
from fleet_api.insights.config import Rules
from fleet_api.insights.metrics import AlertCollector
from fleet_api.insights.service import InsightsService
from fleet_api.insights.simulate import SimDevice
from fleet_api.insights.webhook import Webhook
from fleet_api.routes import alerts as alert_routes
from fleet_protocol.messages import Telemetry

from .helpers import T0, sqlite_sessions

ADMIN = "eft_insights-admin-token"


class Receiver:
    """An HTTP server that records what it is sent; the first `fail_first` requests get 503."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.attempts += 1
                if outer.attempts <= outer.fail_first:
                    self.send_response(503)
                else:
                    outer.bodies.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class ServiceShim:
    """What the routes need of FleetService: authentication (the real one, on the same database) and insights."""

    def __init__(self, sessions, insights) -> None:
        self.sessions, self.insights = sessions, insights
        with sessions() as db, db.begin():
            auth.bootstrap(db, ADMIN)

    def authenticate(self, token, need):
        with self.sessions() as db, db.begin():
            return auth.authenticate(db, token, need)


@pytest.fixture
def receiver():
    r = Receiver(fail_first=2)
    yield r
    r.close()


def feed(insights, device: SimDevice, clock: Clock, hours: float, step: float = 60.0) -> None:
    start = clock.now
    for k in range(int(hours * 3600 / step)):
        clock.now = start + k * step
        insights.observe(device.id, Telemetry.parse(device.telemetry(clock.now - T0, ts=T0).to_bytes()))


def transitions(state: str) -> float:
    return REGISTRY.get_sample_value("edgefleet_api_alert_transitions_total", {"kind": "disk_full", "state": state}) or 0.0


def test_alert_reaches_the_webhook_and_the_api(tmp_path, receiver):
    engine, sessions = sqlite_sessions(tmp_path)
    counted = {s: transitions(s) for s in ("pending", "firing", "resolved")}
    clock = Clock()
    naps: list[float] = []
    webhook = Webhook(receiver.url, retries=3, backoff_s=0.5, sleep=naps.append, external_url="http://fleet.example")
    insights = InsightsService(sessions, Rules(for_s=600), webhook, clock=clock)
    disk = SimDevice("cam-7", seed=3, disk_start=0.5, disk_rate_per_h=0.08)  # crosses 90 % at 5 h
    feed(insights, disk, clock, 1.5)
    insights.evaluate()  # pending
    feed(insights, disk, clock, 0.25)
    insights.start(interval_s=0.05)  # the evaluator's thread, on the injected clock: fires and notifies
    try:
        wait_for(lambda: receiver.bodies, 60, "the firing alert at the webhook receiver")
    finally:
        insights.stop()
    body = receiver.bodies[0]
    assert naps == [0.5, 1.0] and receiver.attempts == 3  # two 503s, retried with backoff, then accepted
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "edgefleet"
    [alert] = body["alerts"]
    assert alert["labels"] == {"alertname": "disk_full", "device": "cam-7", "severity": "warning", "source": "edgefleet"}
    assert alert["endsAt"] == "0001-01-01T00:00:00Z" and alert["startsAt"].endswith("Z")
    assert alert["generatorURL"].startswith("http://fleet.example/v1/alerts/")
    assert "will be 90% used" in alert["annotations"]["summary"]
    assert json.loads(alert["annotations"]["evidence"])["fit"]["slope_per_h"] == pytest.approx(0.08, rel=0.1)
    assert insights.notify() == 0  # sent once: the outbox is empty

    # --- the HTTP shell -------------------------------------------------------------------------------------
    app = FastAPI()
    app.state.service = ServiceShim(sessions, insights)
    app.state.insights = insights
    app.exception_handler(FleetError)(lambda _r, exc: JSONResponse({"error": str(exc)}, status_code=exc.status))
    app.include_router(alert_routes.router)
    with TestClient(app) as client:
        assert client.get("/v1/alerts").status_code == 401
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        got = client.get("/v1/alerts", params={"state": "firing", "device": "cam-7", "kind": "disk_full"}).json()["alerts"]
        assert len(got) == 1 and got[0]["fingerprint"] == "cam-7|disk_full|" and got[0]["evidence"]["fit"]["n"] > 20
        assert got[0]["predicted_crossing"].startswith("2027-01-15T") and got[0]["severity"] == "warning"
        assert client.get("/v1/alerts", params={"device": "other"}).json() == {"alerts": []}
        assert client.get("/v1/alerts", params={"kind": "bogus"}).status_code == 422
        assert client.get(f"/v1/alerts/{got[0]['id']}").json()["id"] == got[0]["id"]
        assert client.get("/v1/alerts/99999").status_code == 404
        assert client.get("/v1/alerts/0").status_code == 422 and client.get(f"/v1/alerts/{2**40}").status_code == 422

    # --- Prometheus -----------------------------------------------------------------------------------------
    registry = CollectorRegistry()
    registry.register(AlertCollector(insights))
    text = generate_latest(registry).decode()
    assert 'edgefleet_alerts{alertname="disk_full",alertstate="firing",device="cam-7",model="",severity="warning"} 1.0' in text
    assert "edgefleet_alert_predicted_crossing_timestamp_seconds{" in text

    # --- the disk is cleaned up: the alert resolves, and the receiver hears that too ---------------------------
    disk.disk_start, disk.disk_rate_per_h = 0.3, 0.0
    for _ in range(8):
        feed(insights, disk, clock, 0.5)
        insights.tick()
    [stored] = insights.alerts(device_id="cam-7")
    assert stored.state == AlertState.resolved and stored.resolved_at is not None
    assert [b["status"] for b in receiver.bodies] == ["firing", "resolved"]
    assert receiver.bodies[1]["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    assert "edgefleet_alerts{" not in generate_latest(registry).decode()
    # one transition each, however often the firing alert's evidence was refreshed meanwhile
    assert {s: transitions(s) - counted[s] for s in counted} == {"pending": 1, "firing": 1, "resolved": 1}
    engine.dispose()


def test_alerts_survive_a_restart_and_replicas_share_one_alert(db_sessions):
    engine, sessions = db_sessions
    clock = Clock()
    disk = SimDevice("cam-1", seed=5, disk_start=0.6, disk_rate_per_h=0.05)
    first = InsightsService(sessions, Rules(for_s=0), clock=clock)
    feed(first, disk, clock, 1.5)
    assert [a.state for a in first.evaluate()] == [AlertState.firing]
    # A second API process (a replica, or this one restarted) that saw the same device opens no second alert:
    # it loaded the active one on start, and the database's unique active key would refuse a duplicate anyway.
    second = InsightsService(sessions, Rules(for_s=0), clock=clock)
    replica = InsightsService(sessions, Rules(for_s=600), clock=clock)
    replica.core.book.active.clear()  # as if it had started before the alert existed
    clock.now = T0
    feed(second, disk, clock, 1.5)
    clock.now = T0
    feed(replica, disk, clock, 1.5)
    second.evaluate()
    [joined] = replica.evaluate()
    assert joined.state == AlertState.firing  # it joined the firing alert instead of restarting it as pending
    [stored] = second.alerts(device_id="cam-1")
    assert stored.state == AlertState.firing and stored.id == joined.id
    assert [a.id for a in second.alerts(active=True)] == [stored.id] and second.alerts(active=False) == []
    assert second.alerts(kind=Kind.memory_full) == [] and second.alerts(model="x") == []
    assert first.notify() == 0  # no webhook configured: nothing sent, nothing marked
    with sessions() as db:
        assert [a.id for a in store.unnotified(db)] == [stored.id]
    with sessions() as db, db.begin():
        store.mark_notified(db, stored.id, AlertState.firing)
    with sessions() as db:
        assert store.unnotified(db) == []

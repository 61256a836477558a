"""The dashboard's HTTP shell on a real broker and database, without a browser: who may see and do what, form
errors that keep what was typed, the rollout preview, the camera link, static files, and the time helpers.
(tests/e2e/test_dashboard.py drives the same pages in Chromium against real agents.)"""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient

from demo.cluster import wait_for
from fleet_api.app import create_app
from fleet_api.db.tables import Device
from fleet_api.settings import ApiSettings
from fleet_api.web.render import relative, reltime
from fleet_protocol.messages import CameraReport, ModelReport, Reported, ServingModel

ADMIN = "eft_admin-token-for-dashboard-tests"


@pytest.fixture
def app(broker, tmp_path, keys):
    settings = ApiSettings(database_url=f"sqlite:///{tmp_path / 'api.db'}", broker_url=broker.url,
                           artifact_dir=tmp_path / "artifacts", trusted_keys=str(keys.public_path), admin_token=ADMIN,
                           tick_interval_s=0.2)
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, 10, "the API to connect")
        yield client.app


def signed_in(app, token: str) -> TestClient:
    client = TestClient(app)
    r = client.post("/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return client


@pytest.fixture
def admin(app) -> TestClient:
    return signed_in(app, ADMIN)


def token(admin: TestClient, role: str) -> str:
    return admin.post("/v1/tokens", json={"name": f"a-{role}", "role": role}).json()["token"]


def test_signed_out_pages_lead_to_sign_in_and_back(app):
    anon = TestClient(app)
    r = anon.get("/devices?state=serving", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fdevices%3Fstate%3Dserving"
    # A live fragment asks htmx to move the whole page, not to paste the sign-in form into a table.
    r = anon.get("/ui/devices", headers={"HX-Request": "true", "HX-Current-URL": "http://x/devices/cam-1"})
    assert r.status_code == 401 and r.headers["hx-redirect"] == "/login?next=%2Fdevices%2Fcam-1"
    # A cookie whose token was revoked: the sign-in page says why, without a red error.
    anon.cookies.set("edgefleet_token", "eft_revoked")
    r = anon.get("/rollouts")
    assert r.url.path == "/login" and "session ended" in r.text and "flash bad" not in r.text
    # Sign-in sends back where the person was going; never to another site.
    assert 'value="/"' in anon.get("/login?next=//evil.example/x").text
    r = anon.post("/login", data={"token": ADMIN, "next": "/audit"}, follow_redirects=False)
    assert r.headers["location"] == "/audit" and "httponly" in r.headers["set-cookie"].lower()
    r = anon.post("/login", data={"token": ""})
    assert r.status_code == 401 and "Enter an API token" in r.text
    signed = signed_in(app, ADMIN)
    assert signed.get("/audit").status_code == 200
    r = signed.post("/logout", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert signed.get("/audit", follow_redirects=False).status_code == 303  # the cookie is gone


def test_a_viewer_reads_but_the_server_refuses_its_actions(app, admin, bundles):
    admin.post("/v1/devices", json={"id": "cam-1", "labels": {"site": "a"}}).raise_for_status()
    admin.post("/v1/models", content=bundles["1.0.0"].read_bytes()).raise_for_status()
    rollout = admin.post("/v1/rollouts", json={"model": "digits", "version": "1.0.0", "selector": "site=a"}).json()
    viewer = signed_in(app, token(admin, "viewer"))
    page = viewer.get(f"/rollouts/{rollout['id']}")
    assert page.status_code == 200 and "data-action" not in page.text
    assert 'data-action="abort"' in admin.get(f"/rollouts/{rollout['id']}").text
    assert "upload-form" not in viewer.get("/models").text and "upload-form" in admin.get("/models").text
    fragment = viewer.get("/ui/devices?labels=site%3Da").text  # the live table, and the counts swapped out of band
    assert 'data-device="cam-1"' in fragment and 'id="stats" hx-swap-oob="true"' in fragment
    assert viewer.get("/rollouts/new").status_code == 403
    assert viewer.post(f"/ui/rollouts/{rollout['id']}/abort").status_code == 403
    assert viewer.post("/ui/rollouts", data={"model_version": "digits@1.0.0"}).status_code == 403
    assert viewer.post("/ui/models", files={"bundle": ("x.bundle", b"x")}).status_code == 403
    assert admin.get(f"/v1/rollouts/{rollout['id']}").json()["state"] == "running"  # untouched
    # An operator may steer; a refused transition is shown on the page, not as an error page.
    operator = signed_in(app, token(admin, "operator"))
    r = operator.post(f"/ui/rollouts/{rollout['id']}/resume")
    assert r.status_code == 200 and "only a paused rollout can be resumed" in r.text
    r = operator.post(f"/ui/rollouts/{rollout['id']}/abort")
    assert 'data-state="aborted"' in r.text and "Aborted" in r.text
    assert [a["action"] for a in admin.get("/v1/audit?action=rollout.").json()][:1] == ["rollout.abort"]


def test_forms_keep_what_was_typed_and_say_what_is_wrong(app, admin, bundles):
    r = admin.post("/ui/models", files={"bundle": ("junk.bundle", b"not a tar")})
    assert r.status_code == 400 and "junk.bundle: bundle rejected" in r.text
    r = admin.post("/ui/models", files={"bundle": ("empty.bundle", b"")})
    assert r.status_code == 400 and "choose a bundle file" in r.text
    r = admin.post("/ui/models", files={"bundle": ("digits-1.0.0.bundle", bundles["1.0.0"].read_bytes())}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/models/digits?version=1.0.0")
    for i in range(3):
        admin.post("/v1/devices", json={"id": f"cam-{i}", "labels": {"site": "lab" if i < 2 else "hq"}}).raise_for_status()

    preview = admin.post("/ui/rollouts/preview", data={"selector": "site=lab", "waves": "1,100%"}).text
    assert '<b id="preview-count">2</b>' in preview and preview.count('class="chip dev') == 2 and "cam-2" not in preview
    assert "not key=value" in admin.post("/ui/rollouts/preview", data={"selector": "site", "waves": "1"}).text
    assert "No registered device matches" in admin.post("/ui/rollouts/preview", data={"selector": "site=mars"}).text

    form = {"model_version": "digits@1.0.0", "selector": "site=lab", "waves": "2,1", "gate_soak_s": "30"}
    r = admin.post("/ui/rollouts", data=form)
    assert r.status_code == 400 and "waves must grow" in r.text and 'value="2,1"' in r.text and 'value="30"' in r.text
    r = admin.post("/ui/rollouts", data={**form, "gate_soak_s": "soon"})
    assert r.status_code == 400 and "gate soak_s: &#39;soon&#39; is not a number" in r.text
    r = admin.post("/ui/rollouts", data={**form, "gate_max_concurrent": "1.5"})
    assert r.status_code == 400 and "max_concurrent" in r.text  # devices come whole
    r = admin.post("/ui/rollouts", data={**form, "waves": "1,100%", "gate_max_concurrent": "1"}, follow_redirects=False)
    assert r.status_code == 303
    rollout = admin.get("/v1" + r.headers["location"]).json()
    assert rollout["waves"] == [1, 2] and rollout["gates"]["soak_s"] == 30 and rollout["gates"]["max_error_rate"] is None
    assert rollout["gates"]["max_concurrent"] == 1
    busy = admin.post("/ui/rollouts/preview", data={"selector": "", "waves": "100%"}).text
    assert f"cam-0 in #{rollout['id']}" in busy and "would be refused" in busy


def test_device_page_shows_every_model_and_camera_and_edits_labels_and_config(app, admin):
    admin.post("/v1/devices", json={"id": "door-1", "labels": {"site": "a"}}).raise_for_status()
    service = app.state.service
    faces = ServingModel(name="faces", version="1.0.0", sha256="a" * 64)
    plates = ServingModel(name="plates", version="2.0.0", sha256="b" * 64)
    service.on_reported("door-1", Reported(
        revision=0, hardware={"http_url": "http://10.0.0.7:8080/", "cpus": 4},
        models={"faces": ModelReport(state="serving", serving=faces, desired=faces, provider="CPUExecutionProvider"),
                "plates": ModelReport(state="failed", desired=plates, error="golden check failed: max diff 0.3")},
        cameras={"door": CameraReport(state="failed", source="rtsp://cam/1", models=["faces"], error="source lost")}))
    with service.transaction() as db:
        db.get(Device, "door-1").desired = {"revision": 1, "models": {}, "cameras": [
            {"name": "door", "source": {"type": "rtsp", "url": "rtsp://cam/1"}}]}
    page = admin.get("/devices/door-1").text
    assert 'href="http://10.0.0.7:8080/?camera=door"' in page and "rtsp://cam/1" in page
    assert 'data-model="faces" data-state="serving" data-version="1.0.0"' in page
    assert 'data-model="plates" data-state="failed" data-version=""' in page
    assert "golden check failed: max diff 0.3" in page and "source lost" in page  # both in the errors card
    listing = admin.get("/devices").text  # the list shows the device's worst model state
    assert 'data-state="failed"' in listing and "plates" in listing
    assert admin.get("/devices/ghost").status_code == 404

    # Labels: the whole set is what the form holds (a label left out is removed).
    r = admin.post("/ui/devices/door-1/labels", data={"labels": "site=b, hw=cpu"}, follow_redirects=False)
    assert r.status_code == 303
    assert admin.get("/v1/devices/door-1").json()["labels"] == {"site": "b", "hw": "cpu"}
    r = admin.post("/ui/devices/door-1/labels", data={"labels": "site"})
    assert r.status_code == 400 and "not key=value" in r.text
    # Configuration: JSON validated like PUT /v1/devices/{id}/config; an error keeps what was typed.
    r = admin.post("/ui/devices/door-1/config", data={"config": '{"memory_budget_mb": 256}'}, follow_redirects=False)
    assert r.status_code == 303
    assert admin.get("/v1/devices/door-1/config").json()["config"]["memory_budget_mb"] == 256
    r = admin.post("/ui/devices/door-1/config", data={"config": '{"colour": "red"}'})
    assert r.status_code == 400 and "colour" in r.text and "&#34;red&#34;" in r.text
    viewer = signed_in(app, token(admin, "viewer"))
    assert "labels-form" not in viewer.get("/devices/door-1").text
    assert viewer.post("/ui/devices/door-1/labels", data={"labels": "x=y"}).status_code == 403


def test_static_files_and_times():
    from fleet_api.web.pages import router

    app_ = __import__("fastapi").FastAPI()
    app_.include_router(router)
    client = TestClient(app_)
    r = client.get("/static/vendor/htmx-2.0.11.min.js")
    assert r.status_code == 200 and "max-age=31536000" in r.headers["cache-control"] and len(r.content) > 40_000
    assert client.get("/static/vendor/uPlot-1.6.32.iife.min.js").status_code == 200
    assert client.get("/static/..%2f__init__.py").status_code == 404
    assert client.get("/static/../pages.py").status_code == 404
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    assert relative(now - dt.timedelta(seconds=20), now) == "just now"
    assert relative(now - dt.timedelta(seconds=90), now) == "2 minutes ago"
    assert relative(now - dt.timedelta(hours=5), now) == "5 hours ago"
    assert relative(now + dt.timedelta(days=2), now) == "in 2 days"
    html = str(reltime("2026-01-01T12:00:00"))  # SQLite's naive timestamps are UTC
    assert 'datetime="2026-01-01T12:00:00+00:00"' in html and 'title="2026-01-01 12:00:00 UTC"' in html


def test_an_aborted_rollout_page_says_what_its_failed_devices_share_and_alerts_have_a_page(app, admin, bundles):
    from fleet_protocol.messages import ModelState
    from tests.fleet_api.devices import OPS, report, upload

    service = app.state.service
    v2 = upload(service, bundles["2.0.0"])
    hw = {f"d{i:02d}": "jetson-orin" if i % 4 == 0 else "cpu" for i in range(12)}  # 3 orin, 9 cpu
    for device_id, label in hw.items():
        service.register_device(device_id, {"site": "lab", "hw": label})
    r = service.create_rollout("digits", "2.0.0", "site=lab", "100%", {"max_failure_ratio": 0.2}, OPS)
    for m in sorted(r["devices"], key=lambda m: hw[m["device_id"]] == "jetson-orin"):
        failed = hw[m["device_id"]] == "jetson-orin"
        report(service, m["device_id"], m["revision"], v2, ModelState.failed if failed else ModelState.serving,
               "EngineBuildError: out of memory" if failed else None)
    assert service.get_rollout(r["id"])["state"] == "aborted"
    page = admin.get(f"/rollouts/{r['id']}").text
    assert 'id="failure-analysis"' in page and "hw=jetson-orin" in page and "3 of 3 devices there failed" in page
    alerts = admin.get("/alerts").text
    assert alerts.count("<tr data-alert") == 0 and "No active alert." in alerts
    assert "No alert yet." in admin.get("/alerts?show=all").text

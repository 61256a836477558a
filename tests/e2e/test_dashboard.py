"""The dashboard in headless Chromium against real processes: a fleet API, mosquitto and three agents.

An operator signs in, uploads a bundle through the form, starts a 3-wave rollout through the form, watches it
move from wave to wave without reloading the page, pauses, resumes and aborts it, and sees every device back on
its previous version. A viewer sees no action button and is refused by the server if it tries anyway; a wrong
token shows an error on the sign-in page. Every page's screenshot lands in tmp/artifacts/dashboard (or
$EDGEFLEET_ARTIFACTS/dashboard) for a person to look at.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from demo.fleet import Fleet, roll_out, upload
from model_tools import evaluate as ev
from tests.bundles import digits, digits_bundle
from tests.edge_agent.camera.test_browser import CHROMIUM_ARGS, chromium

pytestmark = pytest.mark.e2e

DEVICES = {"cam-01": {"site": "lab", "hw": "cpu"}, "cam-02": {"site": "lab", "hw": "cpu"},
           "cam-03": {"site": "plant-3", "hw": "cpu"}}
TIMEOUT_MS = 60_000  # a busy 2-core machine: generous, and only ever waited on, never expected


def measured_digits_bundle(keys, out: Path, version: str) -> Path:
    """The 20-epoch digits CNN with its accuracy and latency measured here, as `model-tools tune` records them."""
    zoo = digits(20)
    data = np.load(zoo.data["test"])
    inputs = {"image": data["x"]}
    accuracy = ev.accuracy(zoo.onnx, inputs, task=zoo.task, labels=zoo.labels, extra=zoo.extra, truth=ev.labels_of(zoo.task, dict(data)))
    latency = ev.latency(zoo.onnx, {"image": data["x"][:1]}, runs=20)
    return digits_bundle(keys, out, version, epochs=20, measurements={"accuracy": accuracy, "latency": [latency]})


class Traffic:
    """Inference requests to every agent in the background, so telemetry (and the charts) have something to show."""

    def __init__(self, urls: list[str]) -> None:
        self.urls, self.stop = urls, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        body = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
        with httpx.Client(timeout=5) as client:
            while not self.stop.wait(0.05):
                for url in self.urls:
                    try:
                        client.post(f"{url}/v2/models/digits/infer", json=body)
                    except httpx.HTTPError:
                        pass  # an agent swapping models or restarting: the next request will do

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.fixture
def artifacts() -> Path:
    folder = Path(os.environ.get("EDGEFLEET_ARTIFACTS", "tmp/artifacts")) / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_dashboard_drives_a_rollout_in_chromium(tmp_path, keys, artifacts):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    v1 = digits_bundle(keys, tmp_path / "bundles", "1.0.0", epochs=1)
    v2 = measured_digits_bundle(keys, tmp_path / "bundles", "2.0.0")
    agent_env = {"EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "1"}
    with Fleet(tmp_path / "fleet", keys.public_path, DEVICES, agent_env=agent_env) as fleet, fleet.api.client() as api, \
            Traffic([a.url for a in fleet.agents.values()]), sync_playwright() as p:
        upload(api, v1)
        assert roll_out(api, "digits", "1.0.0", "hw=cpu")["state"] == "succeeded"  # the version to come back to
        viewer_token = api.post("/v1/tokens", json={"name": "wall-screen", "role": "viewer"}).json()["token"]
        url = fleet.api.url
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))

        def shot(name: str) -> None:
            page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)

        # First visit: the sign-in page, not an error.
        first = page.goto(url + "/")
        assert first is not None and first.status == 200
        assert "/login" in page.url
        expect(page.locator(".flash.bad")).to_have_count(0)
        shot("01-sign-in")

        # A wrong token: an error on the sign-in page, which stays the sign-in page.
        page.fill("#token", "eft_not-a-real-token")
        page.click("button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("invalid or revoked API token")
        assert "/login" in page.url
        shot("02-sign-in-wrong-token")

        # Signed in, the devices; filters by label and by state.
        page.fill("#token", fleet.api.admin_token)
        page.click("button[type=submit]")
        page.wait_for_url("**/devices")
        expect(page.locator("#devices tr[data-device]")).to_have_count(3)
        page.fill("input[name=labels]", "site=lab")
        expect(page.locator("#devices tr[data-device]")).to_have_count(2)
        page.select_option("select[name=state]", "offline")
        expect(page.locator("#devices tr[data-device]")).to_have_count(0)
        page.select_option("select[name=state]", "serving")
        expect(page.locator("#devices tr[data-device]")).to_have_count(2)
        page.fill("input[name=labels]", "")
        expect(page.locator("#devices tr[data-device]")).to_have_count(3)
        page.reload()  # the sign-in survives a reload
        expect(page.locator(".me-name")).to_have_text("bootstrap-admin")
        shot("03-devices")

        # Upload v2 through the form: its page shows the manifest with the measured accuracy.
        page.goto(url + "/models")
        page.set_input_files("input[name=bundle]", str(v2))
        page.click("#upload-form button[type=submit]")
        page.wait_for_url("**/models/digits?*")
        expect(page.locator(".flash.ok")).to_contain_text("Uploaded digits 2.0.0")
        expect(page.locator(".stat").filter(has_text="accuracy")).to_contain_text("0.9861")
        expect(page.locator(".stat").filter(has_text="latency p50")).to_contain_text("ms")
        shot("04-model")

        # A 3-wave rollout through the form, after its live preview showed the plan.
        page.goto(url + "/rollouts/new")
        page.select_option("#model_version", "digits@2.0.0")
        page.fill("#selector", "hw=cpu")
        page.fill("#waves", "1,2,3")
        page.fill("input[name=gate_soak_s]", "5")  # each wave holds 5 s: time to watch and to pause
        expect(page.locator("input[name=gate_max_concurrent]")).to_have_attribute("placeholder", "1000")  # the fleet default
        page.fill("input[name=gate_max_concurrent]", "1")  # one device at a time (each wave here has one)
        expect(page.locator("#preview-count")).to_have_text("3")
        expect(page.locator(".waves-preview li")).to_have_count(3)
        shot("05-new-rollout")
        page.click("#start-rollout")
        page.wait_for_url("**/rollouts/*")
        rollout_id = int(page.url.rsplit("/", 1)[1])
        expect(page.locator(".gates-kv")).to_contain_text("Max devices at once")

        # Live progress: the page is never reloaded (the marker survives), yet it reaches wave 2.
        page.evaluate("window.__not_reloaded = true")
        expect(page.locator("#current-wave")).to_have_text("2")
        expect(page.locator('tr[data-device][data-member-state="succeeded"]').first).to_be_visible()
        shot("06-rollout-live")

        page.click("button[data-action=pause]")
        expect(page.locator("#progress")).to_have_attribute("data-state", "paused")
        expect(page.locator("button[data-action=resume]")).to_be_visible()
        shot("07-rollout-paused")
        page.click("button[data-action=resume]")
        expect(page.locator("#progress")).to_have_attribute("data-state", "running")
        page.click("button[data-action=abort]")
        expect(page.locator("#progress")).to_have_attribute("data-state", "aborted")
        assert [d.split("?")[0] for d in dialogs] == [f"Pause rollout {rollout_id}", f"Resume rollout {rollout_id}",
                                                     f"Abort rollout {rollout_id}"]
        # Every device back on 1.0.0, serving, seen on the same page.
        back = ("[...document.querySelectorAll('#members tr[data-device]')].every("
                "r => r.dataset.version === '1.0.0' && r.dataset.reported === 'serving')")
        page.wait_for_function(back, timeout=TIMEOUT_MS)
        expect(page.locator("#members tr[data-device]")).to_have_count(3)
        assert page.evaluate("window.__not_reloaded") is True
        shot("08-rollout-aborted")
        for device in api.get("/v1/devices").json():  # what the page showed is what the devices report
            assert (device["models"]["digits"]["state"], device["models"]["digits"]["version"]) == ("serving", "1.0.0")

        # The device page: models, runtime, events, and charts drawn from real telemetry.
        page.goto(url + "/devices/cam-01")
        expect(page.locator("#stat-serving")).to_contain_text("digits 1.0.0")
        row = page.locator('#models tr[data-model="digits"]')  # one row per model: desired, serving, state, provider
        expect(row).to_have_attribute("data-state", "serving")
        expect(row).to_contain_text("CPU")
        # Labels edited through the form (PATCH semantics: the form holds the whole set).
        page.fill("#labels-form input[name=labels]", "site=lab,hw=cpu,room=2")
        page.click("#labels-form button[type=submit]")
        expect(page.locator("#labels-card")).to_contain_text("room=2")
        assert api.get("/v1/devices/cam-01").json()["labels"] == {"site": "lab", "hw": "cpu", "room": "2"}
        expect(page.locator(".timeline")).to_contain_text(f"rollout {rollout_id}")
        page.wait_for_function("Number(document.getElementById('charts').dataset.loaded) > 0", timeout=TIMEOUT_MS)
        expect(page.locator("#charts canvas")).to_have_count(5)
        shot("09-device")

        page.goto(url + "/rollouts")
        expect(page.locator(f'tr[data-rollout="{rollout_id}"]')).to_contain_text("aborted")
        shot("10-rollouts")
        page.goto(url + "/audit")
        for action in ("rollout.abort", "rollout.resume", "rollout.pause", "rollout.create", "model.upload"):
            expect(page.locator(".action", has_text=action).first).to_be_visible()
        shot("11-audit")
        assert problems == []

        # A viewer reads everything and steers nothing: no buttons, no forms, and the server refuses anyway.
        viewer = browser.new_page(viewport={"width": 1400, "height": 900})
        viewer.set_default_timeout(TIMEOUT_MS)
        viewer.goto(url + f"/rollouts/{rollout_id}")
        viewer.fill("#token", viewer_token)
        viewer.click("button[type=submit]")
        viewer.wait_for_url(f"**/rollouts/{rollout_id}")  # back where it was going
        expect(viewer.locator(".role")).to_have_text("viewer")
        expect(viewer.locator("#members tr[data-device]")).to_have_count(3)
        expect(viewer.locator("button[data-action]")).to_have_count(0)
        viewer.goto(url + "/models")
        expect(viewer.locator("tr[data-model=digits]")).to_be_visible()
        expect(viewer.locator("#upload-form")).to_have_count(0)
        viewer.screenshot(path=str(artifacts / "12-viewer-models.png"), full_page=True)
        assert viewer.goto(url + "/rollouts/new").status == 403
        assert viewer.request.post(url + f"/ui/rollouts/{rollout_id}/rollback").status == 403
        assert viewer.request.post(url + f"/v1/rollouts/{rollout_id}/rollback").status == 403
        browser.close()

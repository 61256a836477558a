"""The captures page in headless Chromium against a real fleet API process and broker: samples that devices
published over MQTT (real JPEGs of skimage photos and cv2 drawings, and .npy tensors) show as a grid with their
model, reason, confidence and device; filters narrow it; the dataset downloads as a ZIP; a sample's page draws its
detection boxes over the image; a viewer sees no delete button, an operator deletes. Screenshots go to
docs/screenshots/captures.png and capture.png (refreshed by EDGEFLEET_SCREENSHOTS=1) and to tmp/artifacts."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest
from paho.mqtt import publish
from skimage import data as photos

from demo.cluster import Broker, FleetApi, wait_for
from fleet_protocol.messages import ModelReport, Reported, ServingModel
from fleet_protocol.topics import Topics
from tests.edge_agent.camera.test_browser import CHROMIUM_ARGS, chromium
from tests.fleet_api.captures import jpeg, npy, packed

TOPICS = Topics()
ROOT = Path(__file__).resolve().parents[3]
T0 = time.time() - 3600  # the last hour, a sample every few minutes


def encode(rgb: np.ndarray, quality: int = 88) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else cv2.cvtColor(rgb, cv2.COLOR_GRAY2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def pixelated(rgb: np.ndarray, box: tuple[int, int, int, int], cells: int = 6) -> np.ndarray:
    """What the agent does to a face before a frame leaves the device."""
    out = rgb.copy()
    x1, y1, x2, y2 = box
    region = out[y1:y2, x1:x2]
    small = cv2.resize(region, (cells, cells), interpolation=cv2.INTER_AREA)
    out[y1:y2, x1:x2] = cv2.resize(small, (x2 - x1, y2 - y1), interpolation=cv2.INTER_NEAREST)
    return out


def det(label: str, score: float, box: tuple[float, float, float, float]) -> dict:
    return {"label": label, "score": score, "box": list(box)}


def samples() -> list[tuple[str, bytes, dict]]:
    """(device, data, header fields): what two cameras and an HTTP client kept over a few minutes."""
    astronaut = photos.astronaut()
    face = (170, 40, 290, 190)
    return [
        ("cam-door", encode(pixelated(astronaut, face)), dict(
            model="objects", version="2.1.0", camera="door", confidence=0.46, faces_blurred=True, width=512, height=512,
            outputs={"detections": [det("person", 0.46, (60, 20, 470, 512)), det("face", 0.41, face)]})),
        ("cam-door", encode(photos.chelsea()), dict(
            model="objects", version="2.1.0", camera="door", confidence=0.38, width=451, height=300,
            outputs={"detections": [det("cat", 0.38, (40, 10, 420, 300))]})),
        ("cam-yard", encode(photos.rocket()), dict(
            model="objects", version="2.1.0", camera="yard", reason="shadow_disagrees", shadow_version="2.2.0",
            confidence=0.71, width=640, height=427,
            outputs={"detections": [det("rocket", 0.71, (300, 20, 380, 420)), det("person", 0.33, (520, 300, 560, 400))]})),
        ("cam-yard", encode(photos.coffee()), dict(
            model="objects", version="2.1.0", camera="yard", confidence=0.29, width=600, height=400,
            outputs={"detections": [det("cup", 0.29, (90, 30, 500, 370))]})),
        ("cam-door", encode(photos.camera()), dict(
            model="objects", version="2.1.0", camera="door", confidence=0.44, width=512, height=512,
            outputs={"detections": [det("person", 0.44, (200, 60, 380, 470))]})),
        ("cam-yard", encode(photos.cat()), dict(
            model="objects", version="2.1.0", camera="yard", reason="shadow_disagrees", shadow_version="2.2.0",
            confidence=0.62, width=451, height=300, outputs={"detections": [det("dog", 0.62, (40, 10, 420, 300))]})),
        ("cam-door", jpeg(11, 320, 240), dict(
            model="objects", version="2.1.0", camera="door", confidence=0.22, width=320, height=240,
            outputs={"detections": []})),
        ("edge-api-1", npy(), dict(model="digits", version="1.0.0", confidence=0.41, outputs={"label": "3", "score": 0.41})),
        ("edge-api-1", npy(), dict(model="digits", version="1.0.0", reason="shadow_disagrees", shadow_version="1.1.0",
                                   confidence=0.88, outputs={"label": "8", "score": 0.88})),
    ]


@pytest.fixture
def fleet(tmp_path, keys, bundles):
    broker = Broker(tmp_path / "broker").start()
    api = FleetApi(tmp_path / "api", broker.url, keys.public_path,
                   env={"EDGEFLEET_API_CAPTURE_QUOTA_MB": "8"})
    try:
        api.start()
        with api.client() as client:
            client.post("/v1/models", content=bundles["1.0.0"].read_bytes()).raise_for_status()
            url = urlparse(broker.url)

            def send(topic: str, payload: bytes, retain: bool = False) -> None:
                publish.single(topic, payload, qos=1, retain=retain, hostname=url.hostname, port=url.port)

            for device in ("cam-door", "cam-yard", "edge-api-1"):
                client.post("/v1/devices", json={"id": device, "labels": {"site": "plant-3"}}).raise_for_status()
            client.put("/v1/devices/edge-api-1/models/digits", json={"version": "1.0.0"}).raise_for_status()
            serving = ServingModel(name="objects", version="2.1.0", sha256="ab" * 32)
            for device in ("cam-door", "cam-yard"):  # what their agents report: the detector serves
                send(TOPICS.reported(device), Reported(revision=0, models={"objects": ModelReport(
                    state="serving", desired=serving, serving=serving, provider="CPUExecutionProvider",
                    golden_passed=True)}).to_bytes(), retain=True)
            wait_for(lambda: all(client.get(f"/v1/devices/{d}").json()["models"] for d in ("cam-door", "cam-yard")),
                     20, "the reported states")
            for i, (device, data, fields) in enumerate(samples()):
                send(TOPICS.capture(device), packed(data, taken_at=T0 + 400 * i, **fields)[1])
            wait_for(lambda: client.get("/v1/captures").json()["total"] == len(samples()), 20, "the samples stored")
            viewer = client.post("/v1/tokens", json={"name": "wall-screen", "role": "viewer"}).json()["token"]
        yield api, viewer
    finally:
        api.stop()
        broker.stop()


def test_captures_page_in_chromium(fleet, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    api, viewer_token = fleet
    artifacts = Path(os.environ.get("EDGEFLEET_ARTIFACTS", "tmp/artifacts")) / "dashboard"
    artifacts.mkdir(parents=True, exist_ok=True)
    keep = os.environ.get("EDGEFLEET_SCREENSHOTS") == "1"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 940}, accept_downloads=True)
            page.set_default_timeout(30_000)
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))

            def sign_in(token: str) -> None:
                page.goto(api.url + "/login")
                page.fill("#token", token)
                page.click("button[type=submit]")
                page.wait_for_url("**/devices**")

            sign_in(api.admin_token)
            page.click("nav a[href='/captures']")
            page.wait_for_url("**/captures")
            thumbs = page.locator(".thumb")
            expect(thumbs).to_have_count(9)
            # every image loaded (the cookie carries the token to /v1/captures/{id}/data), the newest first
            page.wait_for_function("[...document.querySelectorAll('.thumb img')].every(i => i.complete && i.naturalWidth > 0)")
            assert page.locator(".thumb img").count() == 7
            first = thumbs.first
            expect(first).to_contain_text("digits 1.0.0")
            expect(first).to_contain_text("shadow disagrees")
            expect(first).to_contain_text("0.88")
            expect(first).to_contain_text("edge-api-1")
            expect(page.locator(".npy-tile").first).to_contain_text("1×1×8×8")
            expect(page.locator("#quota")).to_contain_text("of 8.0 MiB")
            expect(page.locator(".thumb .blurred")).to_have_count(1)
            page.screenshot(path=str(artifacts / "captures.png"), full_page=True)
            if keep:
                page.screenshot(path=str(ROOT / "docs/screenshots/captures.png"), full_page=False)

            # filters narrow the grid, and the dataset button downloads what they match
            page.select_option("select[name=reason]", "shadow_disagrees")
            page.wait_for_url("**reason=shadow_disagrees**")
            expect(thumbs).to_have_count(3)
            with page.expect_download() as download:
                page.click("#download-dataset")
            archive = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
            labels = json.loads(archive.read("labels.json"))
            assert len(labels) == 3 and {e["reason"] for e in labels} == {"shadow_disagrees"}
            assert all(archive.read(e["file"]) for e in labels) and "labels.csv" in archive.namelist()

            # a sample's page: the image with its boxes drawn over it, and its labels
            page.goto(api.url + "/captures?device=cam-door&model=objects")
            expect(thumbs).to_have_count(4)
            thumbs.last.click()  # the oldest: the astronaut, faces blurred
            page.wait_for_url("**/captures/*")
            page.wait_for_function("document.querySelector('.overlay-wrap img').naturalWidth === 512")
            expect(page.locator(".overlay rect")).to_have_count(2)
            expect(page.locator("#labels")).to_contain_text("person")
            expect(page.locator("#labels")).to_contain_text("face")
            expect(page.locator(".det-label").first).to_contain_text("person 0.46")
            box = page.locator(".overlay rect").nth(1).bounding_box()
            img = page.locator(".overlay-wrap img").bounding_box()
            assert box is not None and img is not None
            scale = img["width"] / 512  # the face box, 170..290 of 512 pixels, where the image shows it
            assert abs(box["x"] - (img["x"] + 170 * scale)) < 3 and abs(box["width"] - 120 * scale) < 3
            page.screenshot(path=str(artifacts / "capture.png"), full_page=True)
            if keep:
                page.screenshot(path=str(ROOT / "docs/screenshots/capture.png"), full_page=False)
            detail_url = page.url

            # the device page: its samples, a link to them, and its capture setting (the form changes it)
            page.click("a[href='/devices/cam-door']")
            page.wait_for_url("**/devices/cam-door")
            card = page.locator("#capture-card")
            expect(card).to_contain_text("off, decided by default")
            expect(card.locator(".mini-thumb")).to_have_count(4)
            expect(card.locator("a.btn")).to_contain_text("4 captured samples")
            card.locator("input[name=enabled]").check()
            card.locator("input[name=max_per_hour]").fill("30")
            card.locator("button[value=own]").click()
            expect(page.locator("#capture-card")).to_contain_text("on, decided by device")
            expect(page.locator("#capture-card")).to_contain_text("at most 30 an hour")
            page.locator("#capture-card").screenshot(path=str(artifacts / "device-capture.png"))
            with api.client() as client:
                desired = client.get("/v1/devices/cam-door/desired").json()["desired"]
                assert desired["capture"]["enabled"] is True and desired["capture"]["max_per_hour"] == 30
            page.locator("#capture-card button[value=inherit]").click()
            expect(page.locator("#capture-card")).to_contain_text("off, decided by default")

            # a viewer reads, has no delete button; an operator (here the admin) deletes
            page.context.clear_cookies()
            sign_in(viewer_token)
            page.goto(detail_url)
            expect(page.locator(".overlay rect")).to_have_count(2)
            expect(page.locator("button.danger")).to_have_count(0)
            page.context.clear_cookies()
            sign_in(api.admin_token)
            page.goto(detail_url)
            page.on("dialog", lambda d: d.accept())
            page.click("button.danger")
            page.wait_for_url("**/captures?device=cam-door")
            expect(thumbs).to_have_count(3)
            assert problems == []
        finally:
            browser.close()

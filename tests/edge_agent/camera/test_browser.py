"""The local page in headless Chromium (Debian's, driven by Playwright): the stream's frames update and the
numbers are live. Also the plain HTTP view: MJPEG parts are JPEGs, /camera/stats and the metrics."""

from __future__ import annotations

import os
import shutil
import threading

import cv2
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI

from edge_agent.camera.manager import CameraManager
from edge_agent.camera.metrics import register
from edge_agent.camera.view import create_router
from fleet_protocol.cameras import Camera

from .helpers import free_port, wait_for

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    """Debian's chromium: Playwright's own browser download does not work here. `make test` installs it
    (scripts/ensure-system.sh); run directly, the test says what to install."""
    for candidate in (os.environ.get("EDGEFLEET_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("chromium is not installed: `bash scripts/ensure-system.sh chromium` (or set EDGEFLEET_CHROMIUM)")


def serve(cameras, host):
    service = CameraManager(host)
    register(service)
    service.apply(cameras)
    app = FastAPI()
    app.include_router(create_router(service))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "the view server")
    yield f"http://127.0.0.1:{port}", service
    server.should_exit = True
    service.stop()
    thread.join(10)


@pytest.fixture
def view(face_video, host):
    yield from serve([Camera(name="demo", source={"type": "file", "path": str(face_video.path), "loop": True},
                             detector="blazeface")], host)


@pytest.fixture
def ocr_view(text_video, host):
    yield from serve([Camera(name="gate", source={"type": "file", "path": str(text_video.path), "loop": True},
                             detector="ppocr-det", stages=["ppocr-rec"])], host)


def test_page_in_headless_chromium_shows_a_live_stream(view):
    from playwright.sync_api import sync_playwright

    url, _ = view
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('stream').naturalWidth === 640", timeout=15000)
            img = page.locator("#stream")
            shots = []
            for _ in range(3):
                shots.append(cv2.imdecode(np.frombuffer(img.screenshot(), np.uint8), cv2.IMREAD_COLOR))
                page.wait_for_timeout(400)
            # The video moves (background pan, faces): consecutive pictures in the browser must differ.
            changes = [float(np.abs(a.astype(int) - b.astype(int)).mean()) for a, b in zip(shots, shots[1:], strict=False)]
            assert all(c > 1.0 for c in changes), f"the stream did not update in the browser: {changes}"
            page.wait_for_function("Number(document.getElementById('v-inference_fps')?.textContent) > 5", timeout=10000)
            first = int(page.inner_text("#v-frames_processed"))
            page.wait_for_function(f"Number(document.getElementById('v-frames_processed').textContent) > {first}", timeout=10000)
            assert page.inner_text("#v-model").startswith("blazeface")
            assert float(page.inner_text("#v-latency_ms_p50")) > 0
        finally:
            browser.close()


def test_stream_stats_and_metrics_over_http(view):
    import httpx

    url, service = view
    wait_for(lambda: service.stats()[0]["frames_processed"] > 10, 10, "frames")
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", url + "/stream") as r:
            assert r.headers["content-type"].startswith("multipart/x-mixed-replace")
            buf = b""
            for chunk in r.iter_bytes():
                buf += chunk
                if buf.count(b"--frame") >= 3:
                    break
        part = buf.split(b"--frame")[1]
        jpeg = part.split(b"\r\n\r\n", 1)[1]
        frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert frame.shape == (480, 640, 3)
        stats = client.get(url + "/camera/stats").json()
        assert stats[0]["name"] == "demo" and stats[0]["capture_fps"] > 5
        assert client.get(url + "/stream?camera=nope").status_code == 404
    from prometheus_client import REGISTRY, generate_latest

    text = generate_latest(REGISTRY).decode()
    for name in ("edgefleet_camera_capture_fps", "edgefleet_camera_inference_fps", "edgefleet_camera_frames_dropped_total",
                 "edgefleet_camera_latency_seconds_bucket"):
        assert f'{name}{{camera="demo"' in text, name


def test_ocr_camera_page_shows_boxes_and_the_text_read(ocr_view, tmp_path):
    """The OCR pipeline in the browser: the text read is in the numbers, and drawn on the frame in its box."""
    from playwright.sync_api import sync_playwright

    url, service = ocr_view
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 560})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('stream').naturalWidth === 640", timeout=15000)
            page.wait_for_function("(document.getElementById('v-texts')?.textContent || '').includes('B7')", timeout=20000)
            assert page.inner_text("#v-model") == "ppocr-det 1.0.0 → ppocr-rec 1.0.0"
            shot = tmp_path / "ocr-view.png"
            page.screenshot(path=str(shot))
            if os.environ.get("EDGEFLEET_SCREENSHOTS"):  # keep it for a person to look at
                shutil.copy(shot, os.environ["EDGEFLEET_SCREENSHOTS"])
            frame = cv2.imdecode(np.frombuffer(page.locator("#stream").screenshot(), np.uint8), cv2.IMREAD_COLOR)
        finally:
            browser.close()
    # The boxes are drawn in the first annotation colour (green, BGR 0,220,0): on a coffee-and-text frame
    # nothing else is that pure a green.
    green = (frame[..., 1] > 200) & (frame[..., 0] < 40) & (frame[..., 2] < 40)
    assert green.sum() > 500, "no boxes drawn on the stream"

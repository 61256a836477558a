"""Issue 10's camera on real parts — mosquitto, the fleet API process and an edge-agent process: a device
configured entirely through the API with the PP-OCR det → rec camera pipeline (a profile for its site), its
models rolled out one by one, and the pipeline reading text the whole time BlazeFace rolls to a new version.

What the camera reads is watched where the fleet sees it: detections events with their text on the broker,
and the camera's state in the device's reported state (GET /v1/devices)."""

from __future__ import annotations

import threading
import time

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from demo.camera import make_text_video
from demo.cluster import wait_for
from demo.fleet import Fleet, device_table, roll_out, upload
from fleet_protocol.messages import Event
from fleet_protocol.topics import Topics
from tests.bundles import zoo_bundle

pytestmark = pytest.mark.e2e


class Events:
    """Every event of every device, as (arrival time, device, Event)."""

    def __init__(self, port: int) -> None:
        self.items: list[tuple[float, str, Event]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="camera-e2e-events", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(Topics().events("+"), qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c, _u, msg) -> None:
        device = msg.topic.split("/")[-2]
        with self.lock:
            self.items.append((time.monotonic(), device, Event.parse(msg.payload)))

    def texts(self, since: float = 0.0, until: float = float("inf")) -> list[str]:
        with self.lock:
            return [d.text for t, _, e in self.items if since <= t <= until and e.kind == "detections"
                    for d in e.detections if d.text]

    def lifecycle(self, what: str) -> list[Event]:
        with self.lock:
            return [e for _, _, e in self.items if e.kind == "lifecycle" and e.detail.get("event") == what]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def stats(url: str) -> dict:
    return next(c for c in httpx.get(f"{url}/camera/stats", timeout=10).json() if c["name"] == "gate")


def reads(texts: list[str]) -> bool:
    return any(w in t.replace(" ", "") for t in texts for w in ("EDGEFLEET", "GATEB7", "3865"))


def test_ocr_camera_set_through_the_api_keeps_reading_while_blazeface_rolls_out(tmp_path, keys):
    video = make_text_video(tmp_path / "video" / "gate.avi", fps=10.0, seconds=6.0)
    bundles = [zoo_bundle("ppocr-det", keys, tmp_path / "b"), zoo_bundle("ppocr-rec", keys, tmp_path / "b"),
               zoo_bundle("blazeface", keys, tmp_path / "b"), zoo_bundle("blazeface", keys, tmp_path / "b2", "1.1.0")]
    with Fleet(tmp_path / "fleet", keys.public_path, {"gate-1": {"site": "plant-3"}}) as fleet, fleet.api.client() as api:
        events = Events(fleet.broker.port)
        try:
            for bundle in bundles:
                upload(api, bundle)
            # The camera, for every device of the site: a profile. Its models are not there yet.
            camera = {"name": "gate", "source": {"type": "file", "path": str(video.path), "loop": True},
                      "detector": "ppocr-det", "stages": ["ppocr-rec"], "fps": 3, "events": {"min_score": 0.5, "max_per_s": 2}}
            r = api.put("/v1/profiles/gates", json={"selector": "site=plant-3", "cameras": [camera]})
            assert r.status_code in (200, 201), r.text
            gate = wait_for(lambda: (c := api.get("/v1/devices/gate-1").json()["cameras"].get("gate")) and c["state"] == "failed" and c,
                            60, "the camera reported failed: its models are not there")
            assert gate["error"] == "model 'ppocr-det' is not on this device (nor 'ppocr-rec')"

            # Each model rolled out on its own; the camera starts reading once both are there.
            for model in ("ppocr-det", "ppocr-rec", "blazeface"):
                rollout = roll_out(api, model, "1.0.0", "site=plant-3", timeout=240)
                assert rollout["state"] == "succeeded", rollout
            wait_for(lambda: reads(events.texts()), 120, "text read off the video, in the events")
            gate = wait_for(lambda: (c := api.get("/v1/devices/gate-1").json()["cameras"]["gate"])["state"] == "running" and c,
                            60, "the camera reported running")
            assert gate["models"] == ["ppocr-det", "ppocr-rec"] and gate["source"] == str(video.path)

            # BlazeFace 1.0.0 → 1.1.0 on the same device while the camera reads.
            agent = fleet.agents["gate-1"]
            before = stats(agent.url)
            started = time.monotonic()
            rollout = roll_out(api, "blazeface", "1.1.0", "site=plant-3", timeout=240)
            assert rollout["state"] == "succeeded", rollout
            rolled = time.monotonic()
            wait_for(lambda: reads(events.texts(since=rolled)), 60, "text read after the rollout")
            after = stats(agent.url)
            # The same pipeline all along (a restarted one would count from 0), and it read on through the swap.
            assert after["frames_processed"] > before["frames_processed"] and after["frame_errors"] == 0
            assert after["model"] == "ppocr-det 1.0.0 → ppocr-rec 1.0.0"
            rows = {r["model"]: r for r in device_table(api, None)}
            assert rows["blazeface"]["version"] == "1.1.0" and rows["blazeface"]["state"] == "serving"
            assert rows["ppocr-det"]["state"] == rows["ppocr-rec"]["state"] == "serving"
        finally:
            events.close()
    # No pause in reading: text events kept coming (at most `max_per_s`) from before the rollout to after it.
    with events.lock:
        times = [t for t, _, e in events.items if e.kind == "detections" and any(d.text for d in e.detections)]
    window = [t for t in times if started - 10 <= t <= rolled + 10]
    gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
    assert window and window[0] < started and window[-1] > rolled and max(gaps) < 10, (gaps, started, rolled)
    # The camera never lost its models during the other model's rollout.
    unavailable = [e for e in events.lifecycle("models_unavailable") if e.ts >= time.time() - (time.monotonic() - started)]
    assert unavailable == []

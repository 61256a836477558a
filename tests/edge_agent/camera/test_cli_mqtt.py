"""`edge-agent camera` as a process: a signed BlazeFace bundle on the face video, detections as events on a
real mosquitto (`devices/{id}/events`), the view and /metrics on its port."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet_protocol.messages import Event
from fleet_protocol.topics import Topics

from .helpers import free_port, wait_for


def test_camera_command_sends_detections_over_mqtt(broker, face_video, blazeface_bundle, keys, tmp_path):
    topic = Topics().events("cam-device")
    received: list[tuple[float, Event]] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-events", protocol=mqtt.MQTTv5)
    sub.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    sub.on_message = lambda _c, _u, msg: received.append((time.monotonic(), Event.parse(msg.payload)))
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    port = free_port()
    with open(tmp_path / "camera.log", "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "camera", "--source", str(face_video.path), "--loop",
             "--model", str(blazeface_bundle), "--trusted-key", str(keys.public_path), "--broker", broker.url,
             "--device-id", "cam-device", "--http-port", str(port), "--event-interval", "0.5", "--seconds", "6"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len([e for _, e in received if e.kind == "detections"]) >= 3, 40, "three detections events")
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'edgefleet_camera_inference_fps{camera="cam0"}' in metrics
        assert "edgefleet camera" in httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.loop_stop()
        sub.disconnect()
    out = (tmp_path / "camera.log").read_text()
    assert f"open http://127.0.0.1:{port}/" in out, out
    detections = [(t, e) for t, e in received if e.kind == "detections"]
    for _, e in detections:
        assert e.source == "cam0" and e.frame_ts is not None
        assert e.detections and all(d.label == "face" and d.score >= 0.5 and d.box[2] > d.box[0] for d in e.detections)
    gaps = [b[0] - a[0] for a, b in zip(detections, detections[1:], strict=False)]
    assert min(gaps) > 0.4, f"events closer than the 0.5 s interval: {gaps}"
    assert json.loads(detections[0][1].to_bytes())["detections"][0]["box"]

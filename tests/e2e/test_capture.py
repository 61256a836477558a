"""Issue 14's data loop on real parts — mosquitto, the fleet API process and two edge-agent processes with a
camera on the generated face video, BlazeFace rolled out to both. Capture is switched on for one device
through the API (its own configuration), with face blurring: its unsure frames reach the fleet API, are listed
and downloaded as a dataset, and BlazeFace finds no face in any of them; the hourly cap holds; the device that
did not opt in sends nothing over the same time."""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile

import cv2
import numpy as np
import pytest

from demo.camera import make_video
from demo.cluster import wait_for
from demo.fleet import Fleet, roll_out, set_up_cameras, upload
from edge_agent.camera.model import load
from edge_agent.camera.stages import Detector
from tests.bundles import zoo_bundle

pytestmark = pytest.mark.e2e

CAP = 6  # samples per hour for the opted-in device


def test_an_opted_in_camera_uploads_blurred_unsure_frames_as_a_dataset_and_an_opted_out_one_sends_nothing(
        tmp_path, keys):
    video = tmp_path / "video" / "faces.avi"
    make_video(video, fps=10, seconds=4)
    blazeface = zoo_bundle("blazeface", keys, tmp_path / "b")
    check = Detector(load(str(blazeface), [keys.public]))
    devices = {"cam-in": {"site": "door"}, "cam-out": {"site": "door"}}
    with Fleet(tmp_path / "fleet", keys.public_path, devices) as fleet, fleet.api.client() as api:
        upload(api, blazeface)
        assert roll_out(api, "blazeface", "1.0.0", "site=door", timeout=240)["state"] == "succeeded"
        set_up_cameras(api, video, "site=door")
        # Opt-in is the device's own configuration; min_confidence 1.0: every frame is "unsure" and qualifies.
        r = api.put("/v1/devices/cam-in/config", json={"capture": {
            "enabled": True, "max_per_hour": CAP, "min_confidence": 1.0, "blur_faces": True}})
        assert r.status_code == 200, r.text
        assert api.get("/v1/devices/cam-in/desired").json()["desired"]["capture"]["enabled"] is True
        opted_in_at = time.monotonic()

        def listed(device: str) -> dict:
            r = api.get("/v1/captures", params={"device": device, "limit": 100})
            r.raise_for_status()
            return r.json()

        # The hour's samples come (some frames may be refused on the device, a face surviving the blur).
        wait_for(lambda: listed("cam-in")["total"] >= 3, 180, "the opted-in camera's samples in the API")
        # Frames keep coming at 5 fps; the cap holds them at CAP for the hour, and the other device sent none.
        time.sleep(max(0.0, 10 - (time.monotonic() - opted_in_at)))
        got = listed("cam-in")
        assert 3 <= got["total"] <= CAP, got["total"]
        assert listed("cam-out")["total"] == 0

        items = got["captures"]
        assert {c["device_id"] for c in items} == {"cam-in"}
        assert all(c["camera"] == "door" and c["model"] == "blazeface" and c["content_type"] == "image/jpeg"
                   and c["faces_blurred"] and c["reason"] == "low_confidence" for c in items)
        # The live model saw faces in most source frames: its detections are the provisional labels.
        assert sum(bool(c["outputs"].get("detections")) for c in items) >= 2

        # The dataset: every sample's JPEG plus labels.json and labels.csv describing the same samples.
        r = api.get("/v1/captures/dataset", params={"device": "cam-in"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            labels = json.loads(z.read("labels.json"))
            rows = list(csv.DictReader(io.StringIO(z.read("labels.csv").decode())))
            files = sorted(n for n in z.namelist() if n.startswith("data/"))
            assert len(labels) == len(rows) == len(files) == got["total"]
            assert sorted(entry["file"] for entry in labels) == files
            for name in files:
                image = cv2.imdecode(np.frombuffer(z.read(name), np.uint8), cv2.IMREAD_COLOR)
                assert image is not None and image.shape == (480, 640, 3), name
                # Nothing with a face the detector can find left the device.
                assert check(image) == [], name
        usage = api.get("/v1/captures/usage").json()
        assert usage["count"] == got["total"] and usage["bytes_used"] == sum(c["size"] for c in items)

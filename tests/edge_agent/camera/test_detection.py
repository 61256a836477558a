"""Real BlazeFace on a generated video with known face positions; the DB text plug-in on real PP-OCR det;
events: silent without faces, filtered by score, rate-limited."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.camera import postprocess
from edge_agent.camera.frames import Frame, LatestQueue
from edge_agent.camera.model import StaticHost
from edge_agent.camera.pipeline import Pipeline
from edge_agent.camera.stages import Detector, Resolver
from edge_agent.preprocess import Geometry, Preprocessor
from fleet_protocol.cameras import Camera, CameraEvents
from fleet_protocol.manifest import Preprocessing

from .helpers import iou, text_frame, wait_for


def run_video(video, model, **config):
    """Every frame of the file through the pipeline (queue longer than the video: nothing dropped)."""
    results, events = [], []
    camera = Camera(name="faces", source={"type": "file", "path": str(video.path), "realtime": False},
                    detector=model.name, queue_size=len(video.boxes) + 1, **config)
    pipeline = Pipeline(camera, Resolver(camera, StaticHost([model])), on_event=events.append, on_result=results.append).start()
    try:
        wait_for(lambda: len(results) == len(video.boxes), 60, "every frame processed")
    finally:
        pipeline.stop()
    return results, events, pipeline


def test_blazeface_finds_the_known_faces_and_nothing_else(face_video, blazeface):
    results, events, pipeline = run_video(face_video, blazeface, events=CameraEvents(max_per_s=100))
    hit, false_alarms = 0, []
    for r in results:
        truth = face_video.boxes[r.frame.seq - 1]
        boxes = [d.box for d in r.detections]
        if not truth:
            if boxes:
                false_alarms.append((r.frame.seq - 1, boxes))
            continue
        if all(boxes and max(iou(t, b) for b in boxes) >= 0.5 for t in truth):
            hit += 1
    faces = len(face_video.face_frames)
    assert faces >= 90 and len(face_video.empty_frames) >= 20
    assert hit / faces >= 0.9, f"only {hit} of {faces} frames had every face found with IoU >= 0.5"
    assert not false_alarms, f"detections on frames without a face: {false_alarms[:3]}"
    # Silent on frames without a face: every detections event belongs to a frame with one.
    detection_events = [e for e in events if e.kind == "detections"]
    assert detection_events and all(face_video.boxes[e.detail["frame"] - 1] for e in detection_events)
    assert {d.label for e in detection_events for d in e.detections} == {"face"}
    assert pipeline.stats()["frames_dropped"] == 0


def test_letterbox_maps_boxes_back_to_the_frame(face_video, blazeface):
    results, _, _ = run_video(face_video, blazeface, resize="letterbox")
    hits = [r for r in results if face_video.boxes[r.frame.seq - 1]
            and all(any(iou(t, d.box) >= 0.5 for d in r.detections) for t in face_video.boxes[r.frame.seq - 1])]
    assert len(hits) / len(face_video.face_frames) >= 0.8


def test_events_filter_by_score_and_rate(face_video, blazeface):
    _, events, _ = run_video(face_video, blazeface, events=CameraEvents(min_score=0.5, max_per_s=1 / 3600))
    assert [e.kind for e in events].count("detections") == 1  # a whole video inside one interval: one event
    _, events, _ = run_video(face_video, blazeface, events=CameraEvents(min_score=0.999, max_per_s=100))
    assert [e for e in events if e.kind == "detections"] == []  # BlazeFace scores ~0.8-0.97 here: none pass
    event = next(e for e in run_video(face_video, blazeface)[1] if e.kind == "detections")
    assert event.source == "faces" and event.frame_ts and time.time() - event.frame_ts < 60
    assert all(d.score >= 0.5 and len(d.box) == 4 for d in event.detections)


def test_text_detection_plugin_on_real_ppocr_det(ppocr):
    img, truth = text_frame()
    found = Detector(ppocr["ppocr-det"])(img)
    assert {d.label for d in found} == {"text"}
    for t in truth:
        assert max(iou(t, d.box) for d in found) >= 0.5, (t, [d.box for d in found])
    assert len(found) == len(truth)


def test_a_task_without_plugin_is_refused_with_the_choices(blazeface, ppocr):
    from dataclasses import replace

    as_classifier = replace(blazeface, manifest=blazeface.manifest.model_copy(update={"task": "classification", "extra": {}}))
    with pytest.raises(postprocess.UnsupportedModel, match="no post-processing plug-in for task 'classification'.*detection"):
        Detector(as_classifier)
    with pytest.raises(postprocess.UnsupportedModel, match="unknown post-processing setting"):
        Detector(blazeface, overrides={"score_treshold": 0.7})
    # A decoder the task's plug-in does not have is refused, never decoded the wrong way.
    ssd = replace(blazeface, manifest=blazeface.manifest.model_copy(update={"extra": {**blazeface.manifest.extra, "decoder": "yolo"}}))
    with pytest.raises(postprocess.UnsupportedModel, match="decoder"):
        Detector(ssd)
    with pytest.raises(postprocess.UnsupportedModel, match=r"ppocr-rec \(ocr-recognition\) cannot be a camera's detector"):
        Detector(ppocr["ppocr-rec"])


def test_a_plain_detection_bundle_decodes_with_the_default_anchors(blazeface, face_video):
    """`model-tools bundle --task detection` without --extra: MediaPipe's short-range defaults apply."""
    from dataclasses import replace

    plain = replace(blazeface, manifest=blazeface.manifest.model_copy(update={"extra": {}}))
    results, _, _ = run_video(face_video, plain)
    found = sum(1 for r in results if face_video.boxes[r.frame.seq - 1] and r.detections)
    assert found / len(face_video.face_frames) >= 0.9


def test_preprocessing_follows_the_manifest():
    spec = Preprocessing(size=(4, 2), layout="NCHW", color="RGB", scale=1 / 255, mean=[0.5, 0.5, 0.5], std=[0.5, 0.25, 0.5])
    frame = np.zeros((20, 40, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    x, geo = Preprocessor(spec)(frame)
    assert x.shape == (1, 3, 2, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [-1.0, -2.0, 1.0], atol=1e-5)  # R, G, B after (x*scale - mean) / std
    box = Geometry(40, 20, 0.5, 1.0, 0.25, 0.0).to_frame(np.array([[0.25, 0, 0.75, 1.0]], np.float32))
    np.testing.assert_allclose(box, [[0, 0, 40, 20]])


def test_queue_drops_the_oldest_and_counts():
    q = LatestQueue(2)
    for i in range(5):
        q.put(Frame(np.zeros((1, 1, 3), np.uint8), i, 0.0, 0.0, 0.0))
    assert q.dropped == 3 and [q.get(0).seq, q.get(0).seq] == [3, 4] and q.get(0.01) is None


def test_camera_sources_from_strings_and_objects():
    assert Camera(name="a", source="0", detector="m").source.type == "device"
    assert Camera(name="a", source="rtsp://cam/1", detector="m").source.type == "rtsp"
    assert Camera(name="a", source="http://cam/video.mjpg", detector="m").source.type == "mjpeg"
    cam = Camera(name="door", source={"type": "file", "path": "x.avi", "loop": True}, detector="m", stages=["r"])
    assert cam.source.loop and cam.models() == ["m", "r"]
    with pytest.raises(ValidationError):
        Camera(name="a", source={"type": "webcam", "index": 0}, detector="m")
    with pytest.raises(ValidationError):
        Camera(name="a", source="0", detector="m", colour="red")  # unknown fields are refused


def test_a_blazeface_bundle_made_with_the_model_tools_command_finds_the_faces(face_video, tmp_path):
    """Issue 10: a BlazeFace bundle packed with `model-tools bundle` was refused by the camera (the command could
    not set the task). Packed as `make demo` packs it (--task detection --labels --preprocessing), it works."""
    from demo.fleet import build_blazeface_bundle, model_tools
    from edge_agent.camera.model import load
    from fleet_protocol.signing import load_public_key

    model_tools("keygen", "--out", str(tmp_path / "signing"))
    (tmp_path / "bundles").mkdir()
    bundle = build_blazeface_bundle(tmp_path, tmp_path / "signing")
    model = load(str(bundle), [load_public_key((tmp_path / "signing.pub.pem").read_bytes())])
    assert model.manifest.task == "detection" and model.manifest.labels == ["face"]
    results, _, _ = run_video(face_video, model)
    hit = sum(1 for r in results if face_video.boxes[r.frame.seq - 1]
              and all(any(iou(t, d.box) >= 0.5 for d in r.detections) for t in face_video.boxes[r.frame.seq - 1]))
    assert hit / len(face_video.face_frames) >= 0.9


def test_a_long_error_is_cut_in_the_event_not_raised_on_the_camera_thread():
    from edge_agent.camera.events import EventGate

    events = []
    gate = EventGate("cam", CameraEvents(), events.append)
    event = gate.lifecycle("source_lost", {"error": "x" * 5000})
    assert event is not None and len(event.detail["error"]) == 254 and events == [event]

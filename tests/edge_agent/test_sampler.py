"""The sampler: what is kept of HTTP inputs and camera frames and why not, decided on offer, prepared on its
worker (run here with `drain`), and what lands in the spool as the API will read it."""

from __future__ import annotations

import io
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from demo.cluster import wait_for
from edge_agent.capture import Spool, fit_jpeg
from edge_agent.sampler import Sampler, detections_header
from fleet_protocol.capture import MAX_HEADER_BYTES, MAX_SAMPLE_BYTES, unpack
from fleet_protocol.messages import Capture, Detection

DIGITS = SimpleNamespace(name="digits", version="1.0.0",
                         manifest=SimpleNamespace(task="classification", labels=[str(i) for i in range(10)]))
FACES = SimpleNamespace(name="blazeface", version="1.0.0", manifest=SimpleNamespace(task="detection", labels=["face"]))
X = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
UNSURE = [np.array([[0.07] * 5 + [0.37] + [0.07] * 4], np.float32)]  # probabilities: top-1 "5" at 0.37


def make(tmp_path, queue_size: int = 8, find_faces=lambda: None, **policy) -> Sampler:
    sampler = Sampler(Spool(tmp_path / "spool"), queue_size=queue_size, find_faces=find_faces, clock=lambda: 1000.0)
    sampler.update(Capture(**policy))
    return sampler


def samples(sampler: Sampler) -> list:
    return [unpack(sampler.spool.get(i)) for i in sampler.spool.pending()]


def test_an_unsure_answer_keeps_the_input_tensor_as_npy_with_its_provisional_label(tmp_path):
    sampler = make(tmp_path, enabled=True, blur_faces=False, min_confidence=0.5)
    assert sampler.offer_tensor(DIGITS, {"image": X}, UNSURE, 0.3)
    assert not sampler.offer_tensor(DIGITS, {"image": X}, UNSURE, 0.9)  # sure: not even counted
    sampler.drain()
    [(header, data)] = samples(sampler)
    assert header.content_type == "application/x-npy" and header.camera is None and header.reason == "low_confidence"
    assert header.outputs == {"label": "5", "score": pytest.approx(0.37, abs=1e-3)} and header.confidence == 0.3
    np.testing.assert_array_equal(np.load(io.BytesIO(data), allow_pickle=False), X)
    assert dict(sampler.kept) == {"low_confidence": 1} and not sampler.skipped
    # The gate counted the real size of what was kept, not the estimate.
    assert sampler.gate._bytes_sum == len(data)


def test_what_is_not_kept_is_counted_by_why(tmp_path):
    off = make(tmp_path / "a", enabled=False)
    assert not off.offer_tensor(DIGITS, {"image": X}, UNSURE, 0.3)
    blur = make(tmp_path / "b", enabled=True, blur_faces=True)
    assert not blur.offer_tensor(DIGITS, {"image": X}, UNSURE, 0.3)
    two = make(tmp_path / "c", enabled=True, blur_faces=False)
    assert not two.offer_tensor(DIGITS, {"a": X, "b": X}, UNSURE, 0.3)
    capped = make(tmp_path / "d", enabled=True, blur_faces=False, max_per_hour=2)
    for _ in range(3):
        capped.offer_tensor(DIGITS, {"image": X}, UNSURE, 0.3)
    full = make(tmp_path / "e", queue_size=2, enabled=True, blur_faces=False)
    for _ in range(3):
        full.offer_tensor(DIGITS, {"image": X}, UNSURE, 0.3)
    tiny = make(tmp_path / "f", enabled=True, blur_faces=False, max_bytes_per_day=100)
    tiny.offer_tensor(DIGITS, {"image": X}, UNSURE, 0.3)
    nofaces = make(tmp_path / "g", enabled=True, blur_faces=True, min_confidence=1.0)
    frame = np.zeros((48, 64, 3), np.uint8)
    assert not nofaces.offer_frame("door", FACES, lambda: frame, (64, 48), [np.array([[[0.1]]])], [])
    assert dict(off.skipped) == {"not_opted_in": 1}
    assert dict(blur.skipped) == {"cannot_blur": 1}
    assert dict(two.skipped) == {"multi_input": 1}
    assert dict(capped.skipped) == {"hourly_cap": 1}
    assert dict(full.skipped) == {"queue_full": 1}
    assert dict(tiny.skipped) == {"daily_bytes": 1}
    assert dict(nofaces.skipped) == {"no_face_detector": 1}
    for s in (off, blur, two, tiny, nofaces):
        s.drain()
        assert len(s.spool) == 0


def test_a_shadow_disagreement_is_kept_with_the_candidates_version(tmp_path):
    sampler = make(tmp_path, enabled=True, blur_faces=False, min_confidence=0.1)
    assert sampler.offer_tensor(DIGITS, {"image": X}, UNSURE, 0.3, shadow_version="2.0.0")
    sampler.drain()
    [(header, _)] = samples(sampler)
    assert header.reason == "shadow_disagrees" and header.shadow_version == "2.0.0"


def test_a_camera_frame_is_blurred_and_kept_as_jpeg_with_its_detections_in_pixels_of_the_jpeg(tmp_path):
    boxes_seen = []

    def faces(image):
        boxes_seen.append(image.shape)
        return []  # nothing left to blur

    sampler = make(tmp_path, find_faces=lambda: faces, enabled=True, blur_faces=True, min_confidence=1.0)
    frame = np.full((480, 640, 3), 128, np.uint8)
    dets = [Detection(label="face", score=0.4, box=(10.0, 20.0, 110.0, 140.0))]
    assert sampler.offer_frame("door", FACES, lambda: frame, (640, 480), [np.array([[[0.0]]])], dets)
    sampler.drain()
    [(header, data)] = samples(sampler)
    assert header.content_type == "image/jpeg" and header.camera == "door" and header.faces_blurred
    assert (header.width, header.height) == (640, 480) and boxes_seen == [(480, 640, 3)]
    assert header.outputs == {"detections": [{"label": "face", "score": 0.4, "box": [10.0, 20.0, 110.0, 140.0]}]}
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)


def test_a_frame_where_a_face_survives_blurring_is_not_kept(tmp_path):
    sampler = make(tmp_path, find_faces=lambda: (lambda image: [(0.0, 0.0, 30.0, 30.0)]), enabled=True,
                   blur_faces=True, min_confidence=1.0)
    frame = np.zeros((48, 64, 3), np.uint8)
    assert sampler.offer_frame("door", FACES, lambda: frame, (64, 48), [np.array([[[0.0]]])], [])
    sampler.drain()
    assert len(sampler.spool) == 0 and dict(sampler.skipped) == {"face_not_removed": 1}


def test_a_large_frame_is_made_smaller_until_it_fits_one_message_and_boxes_follow():
    noise = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    data, w, h = fit_jpeg(noise)
    assert len(data) <= MAX_SAMPLE_BYTES and w < 2000 and h < 1500
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (h, w, 3)


def test_too_many_detections_are_cut_to_fit_the_header():
    dets = [Detection(label="face" * 30, score=0.5, box=(1.0, 2.0, 3.0, 4.0)) for _ in range(2000)]
    header = detections_header({"id": "0" * 32, "model": "m", "version": "1", "taken_at": 1.0,
                                "reason": "low_confidence", "content_type": "image/jpeg"}, dets, b"x")
    assert len(header.to_bytes()) <= MAX_HEADER_BYTES
    assert 0 < len(header.outputs["detections"]) < 2000
    assert header.outputs["truncated"] == 2000 - len(header.outputs["detections"])


def test_a_sample_that_cannot_be_written_is_counted_and_the_worker_goes_on(tmp_path):
    sampler = make(tmp_path, enabled=True, blur_faces=False, min_confidence=1.0)
    sampler.spool.max_bytes = 100  # smaller than any sample: put refuses it
    sampler.start()
    try:
        assert sampler.offer_tensor(DIGITS, {"image": X}, UNSURE, 0.3)
        wait_for(lambda: sampler.skipped["error"] == 1, 10, "the failed write counted")
        sampler.spool.max_bytes = 10**6
        assert sampler.offer_tensor(DIGITS, {"image": X}, UNSURE, 0.3)
        wait_for(lambda: len(sampler.spool) == 1, 10, "the next sample written by the same worker")
        assert 0 < sampler.gate._bytes_sum < sampler.spool.total_bytes  # the failed one's bytes given back
    finally:
        sampler.stop()

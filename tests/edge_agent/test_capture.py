"""Capture on the device: the caps over simulated weeks (injected clock), opt-in, and faces blurred with BlazeFace
before a frame may leave (checked with BlazeFace itself on the real generated video)."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from demo.camera import make_video
from edge_agent.camera.model import load
from edge_agent.camera.stages import Detector
from edge_agent.capture import DAY, HOUR, CaptureGate, FaceBlur, Spool, fit_jpeg, new_sample_id
from fleet_protocol.capture import describe, unpack
from fleet_protocol.messages import Capture
from tests.bundles import zoo_bundle


def run(policy: Capture, days: float, per_minute: float, seed: int = 0):
    """Samples arriving at random (Poisson), every other one unsure; → (gate, [(time, size)] kept)."""
    rng = random.Random(seed)
    t = [0.0]
    gate = CaptureGate(policy, clock=lambda: t[0])
    kept = []
    while t[0] < days * DAY:
        t[0] += rng.expovariate(per_minute / 60)
        size = rng.randint(20_000, 80_000)
        confidence = rng.choice([0.2, 0.9])
        if gate.decide(size, confidence).keep:
            kept.append((t[0], size))
    return gate, kept


def test_the_hourly_cap_holds_within_five_percent_over_a_week_and_no_hour_exceeds_it():
    _, kept = run(Capture(enabled=True, max_per_hour=60, max_bytes_per_day=10**12, min_confidence=0.5), 7, 10)
    hours = 7 * 24
    assert abs(len(kept) / hours - 60) <= 0.05 * 60, len(kept) / hours
    times = np.array([k[0] for k in kept])
    # any sliding hour (checked at every kept sample), not only calendar hours
    assert max(int(np.sum((times > t - HOUR) & (times <= t))) for t in times) <= 60


def test_the_daily_byte_cap_holds_within_five_percent():
    cap = 2_000_000
    _, kept = run(Capture(enabled=True, max_per_hour=10_000, max_bytes_per_day=cap), 14, 10, seed=1)
    per_day = [sum(s for t, s in kept if d * DAY <= t < (d + 1) * DAY) for d in range(14)]
    assert all(b <= cap for b in per_day), per_day
    assert all(b >= 0.95 * cap for b in per_day), per_day


def test_nothing_is_captured_without_opting_in_and_confident_answers_are_not_kept():
    _, kept = run(Capture(enabled=False, max_per_hour=1000), 2, 10)
    assert kept == []
    gate = CaptureGate(Capture(enabled=True, min_confidence=0.5), clock=lambda: 0.0)
    assert gate.decide(1000, 0.9).reason == "confident"
    assert gate.decide(1000, 0.9, shadow_agrees=False).reason == "shadow_disagrees"
    assert gate.decide(1000, 0.3).reason == "low_confidence"


@pytest.fixture(scope="module")
def detector(keys, tmp_path_factory):
    bundle = zoo_bundle("blazeface", keys, tmp_path_factory.mktemp("blazeface"))
    return Detector(load(str(bundle), [keys.public]))


@pytest.fixture(scope="module")
def video_frames(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "faces.avi"
    make_video(path, fps=10, seconds=4)
    cap = cv2.VideoCapture(str(path))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    return frames


def test_blazeface_finds_no_face_in_any_captured_frame(detector, video_frames, tmp_path):
    def faces(image):
        return [d.box for d in detector(image)]

    with_faces = [f for f in video_frames if faces(f)]
    assert len(with_faces) >= 10  # the video really shows faces BlazeFace finds
    blur = FaceBlur(faces)
    spool = Spool(tmp_path / "spool")
    refused = 0
    for frame in with_faces:
        out = blur(frame)
        if out is None:
            refused += 1
            continue
        data, w, h = fit_jpeg(out)
        spool.put(describe(data, id=new_sample_id(), model="blazeface", version="1.0.0", taken_at=1.0,
                           reason="low_confidence", content_type="image/jpeg", width=w, height=h,
                           faces_blurred=True), data)
    assert refused < len(with_faces) // 2
    stored = spool.pending()
    assert len(stored) == len(with_faces) - refused
    for sample in stored:  # what leaves the device, decoded from the envelope as the API reads it
        header, data = unpack(spool.get(sample))
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and header.faces_blurred and faces(image) == [], sample

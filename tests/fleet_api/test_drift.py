"""Drift on real parts: BlazeFace on the generated camera video, the agent's histograms, the API's PSI and alerts.

Two devices see the same scene; from its fourth window on, one camera's picture gets dark and blurred. Windows
are fed to the API the way its MQTT shell hands them over (service.on_telemetry), so no wall clock is involved.
"""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from demo.camera import make_video
from edge_agent.drift import ModelDrift
from edge_agent.preprocess import Preprocessor
from fleet_api.drift_monitor import DriftMonitor, DriftSettings
from fleet_protocol.manifest import Preprocessing
from fleet_protocol.messages import ModelTelemetry, Telemetry
from model_tools.zoo import prepare

WINDOW = 40  # frames per telemetry window (a 10 s window of a 4 fps camera)
WINDOWS = 12
SHIFT_AT = 3  # dev-2's camera shifts from this window on (0-based)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "faces.avi"
    make_video(path, fps=10, seconds=6)
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    assert len(out) >= 50
    return out


@pytest.fixture(scope="module")
def blazeface():
    zoo = prepare("blazeface")
    session = ort.InferenceSession(str(zoo.onnx), providers=["CPUExecutionProvider"])
    pre = Preprocessor(Preprocessing.model_validate(zoo.preprocessing), tuple(session.get_inputs()[0].shape))
    return session, pre


def shifted(frame: np.ndarray) -> np.ndarray:
    """The camera's picture gets dark and out of focus."""
    return cv2.GaussianBlur((frame * 0.3).astype(np.uint8), (15, 15), 0)


def windows(frames, blazeface, shift_from: int | None, seed: int) -> list[Telemetry]:
    session, pre = blazeface
    rng = np.random.default_rng(seed)
    drift = ModelDrift("detection")
    out = []
    for w in range(WINDOWS):
        for i in rng.integers(0, len(frames), WINDOW):
            frame = frames[i] if shift_from is None or w < shift_from else shifted(frames[i])
            x, _ = pre(frame)
            feeds = {"image": x}
            drift.observe(feeds, session.run(None, feeds))
        confidence, input_mean = drift.take()
        out.append(Telemetry(window_s=10, models={"blazeface": ModelTelemetry(
            version="1.0.0", requests=WINDOW, confidence=confidence, input_mean=input_mean)}))
    return out


def test_a_shifted_camera_raises_a_drift_alert_within_three_windows_and_a_steady_one_none(api, frames, blazeface):
    for dev in ("dev-1", "dev-2"):
        assert api.post("/v1/devices", json={"id": dev, "labels": {"site": "lab"}}).status_code == 201
    steady = windows(frames, blazeface, None, seed=1)
    moving = windows(frames, blazeface, SHIFT_AT, seed=2)
    service = api.app.state.service
    opened_at = None
    for w in range(WINDOWS):
        service.on_telemetry("dev-1", steady[w])
        service.on_telemetry("dev-2", moving[w])
        alerts = api.get("/v1/drift", params={"state": "open"}).json()["alerts"]
        assert all(a["device_id"] == "dev-2" for a in alerts), alerts  # the steady device never alerts
        if alerts and opened_at is None:
            opened_at = w
    assert opened_at is not None and opened_at - SHIFT_AT < 3, opened_at
    drift = api.get("/v1/drift").json()
    open_alerts = [a for a in drift["alerts"] if a["state"] == "open"]
    assert {a["stat"] for a in open_alerts} >= {"input_mean"}
    scores = {(s["device_id"], s["stat"]): s["psi"] for s in drift["scores"]}
    assert scores[("dev-1", "input_mean")] < 0.1 and scores[("dev-2", "input_mean")] > 0.25, scores
    assert api.get("/v1/drift", params={"device": "dev-1"}).json()["alerts"] == []
    metrics = api.get("/metrics").text
    assert 'edgefleet_drift_psi{device="dev-2",model="blazeface",stat="input_mean",version="1.0.0"}' in metrics
    assert 'edgefleet_drift_alerts_open{model="blazeface",stat="input_mean"}' in metrics
    page = api.get("/alerts").text  # the dashboard's alerts page lists the open drift alert
    assert "Drift alerts" in page and '<tr data-drift="dev-2">' in page and "blazeface 1.0.0" in page
    assert '<tr data-drift="dev-1">' not in page


def test_an_alert_resolves_when_the_input_comes_back_and_reopens_if_it_leaves_again():
    from fleet_protocol.messages import Histogram

    t = [0.0]
    monitor = DriftMonitor(DriftSettings(baseline_windows=2, recent_windows=1, threshold=0.25, min_samples=10),
                           clock=lambda: t[0])

    def window(bins: list[int]) -> Telemetry:
        return Telemetry(window_s=10, models={"m": ModelTelemetry(version="1", input_mean=Histogram(counts=bins))})

    normal, dark = [0, 0, 0, 0, 10, 20, 10, 0, 0, 0], [20, 20, 0, 0, 0, 0, 0, 0, 0, 0]
    states = []
    for bins in (normal, normal, dark, dark, normal, dark):
        t[0] += 10
        states += [(a.state.value, t[0]) for a in monitor.add("d", window(bins))]
    assert states == [("open", 30.0), ("resolved", 50.0), ("open", 60.0)]
    assert monitor.opened == 2


def test_each_model_version_has_its_own_baseline():
    """A new version that answers differently is not drift: its first windows are its baseline."""
    from fleet_protocol.messages import Histogram

    monitor = DriftMonitor(DriftSettings(baseline_windows=2, recent_windows=1, threshold=0.25, min_samples=10))

    def window(version: str, bins: list[int]) -> Telemetry:
        return Telemetry(window_s=10, models={"m": ModelTelemetry(version=version, confidence=Histogram(counts=bins))})

    sure, unsure = [0] * 9 + [40], [0, 0, 0, 20, 20, 0, 0, 0, 0, 0]
    for _ in range(4):
        assert monitor.add("d", window("1", sure)) == []
    for _ in range(4):
        assert monitor.add("d", window("2", unsure)) == []
    assert [a.stat for a in monitor.add("d", window("2", sure))] == ["confidence"]
    assert {(b["version"], b["windows"]) for b in monitor.baselines()} == {("1", 2), ("2", 2)}


def test_a_block_gives_what_its_messages_give_one_by_one():
    from fleet_protocol.messages import Histogram

    rng = np.random.default_rng(5)
    settings = DriftSettings(baseline_windows=3, recent_windows=2, threshold=0.25, min_samples=10)

    def window(k: int, device: int) -> Telemetry:
        counts = [int(x) for x in rng.poisson(200, 10)]
        if device == 1 and k >= 6:
            counts[0] += 4000  # this one's input darkens
        return Telemetry(window_s=10, models={
            "m": ModelTelemetry(version="1", input_mean=Histogram(counts=counts),
                                confidence=Histogram(counts=counts[::-1]) if k % 2 else None),  # some windows
            "plain": ModelTelemetry(version="1", requests=5)})  # no histograms: no state for it

    blocks = [[(f"d{device}", window(k, device)) for device in range(3)] for k in range(12)]
    one_by_one, in_blocks = DriftMonitor(settings, clock=lambda: 1.0), DriftMonitor(settings, clock=lambda: 1.0)
    alerts = [a.view() for block in blocks for device_id, t in block for a in one_by_one.add(device_id, t)]
    assert [a.view() for block in blocks for a in in_blocks.add_many(block)] == alerts
    assert sorted((a["device_id"], a["stat"]) for a in alerts) == [("d1", "confidence"), ("d1", "input_mean")]
    assert in_blocks.scores() == one_by_one.scores() and in_blocks.baselines() == one_by_one.baselines()
    assert {s["model"] for s in in_blocks.scores()} == {"m"}

"""Cameras in the agent's own runtime: the reconciler takes a desired state with models and cameras, the
ModelHost serves real LoadedModels, the CameraManager's pipelines take them by name. The OCR camera is
configured before its models arrive, they are rolled out one by one, and a swap of another model (BlazeFace)
leaves the reading camera alone."""

from __future__ import annotations

from edge_agent.camera.manager import CameraManager
from edge_agent.reconcile import Reconciler
from edge_agent.runtime.host import ModelHost
from edge_agent.settings import AgentSettings
from edge_agent.store import ModelStore
from fleet_protocol.messages import (
    BundleRef,
    CameraState,
    Desired,
    ModelSpec,
    ModelState,
    Reported,
)
from fleet_protocol.signing import sha256_file
from tests.edge_agent.conftest import install

from .conftest import pack_zoo
from .helpers import wait_for


class Reports:
    def __init__(self) -> None:
        self.reports: list[Reported] = []

    def watch_artifact(self, sha256: str) -> None: ...
    def unwatch_artifact(self, sha256: str) -> None: ...
    def request_chunks(self, sha256: str, chunk_size: int, missing: list[int]) -> None: ...

    def report(self, reported: Reported) -> None:
        self.reports.append(reported)


def spec(path, name: str, version: str) -> ModelSpec:
    return ModelSpec(bundle=BundleRef(name=name, version=version, sha256=sha256_file(path), size=path.stat().st_size))


def test_ocr_camera_from_the_desired_state_keeps_reading_through_another_models_swap(keys, tmp_path, text_video):
    store = ModelStore(tmp_path / "data")
    bundles = {
        ("ppocr-det", "1.0.0"): pack_zoo("ppocr-det", keys, tmp_path / "b"),
        ("ppocr-rec", "1.0.0"): pack_zoo("ppocr-rec", keys, tmp_path / "b"),
        ("blazeface", "1.0.0"): pack_zoo("blazeface", keys, tmp_path / "b"),
        ("blazeface", "1.1.0"): pack_zoo("blazeface", keys, tmp_path / "b2", version="1.1.0"),
    }
    host, reports = ModelHost(), Reports()
    settings = AgentSettings(device_id="cam-dev", data_dir=store.root, trusted_keys=str(keys.public_path))
    reconciler = Reconciler(settings, store, host, reports)
    events = []
    cameras = CameraManager(host, on_event=events.append)
    reconciler.cameras = cameras
    camera = {"name": "gate", "source": {"type": "file", "path": str(text_video.path), "loop": True},
              "detector": "ppocr-det", "stages": ["ppocr-rec"]}

    def desired(revision: int, **models: tuple[str, str]) -> Desired:
        return Desired(revision=revision, cameras=[camera],
                       models={name: spec(bundles[(name, version)], name, version) for name, (_, version) in models.items()})

    def apply(d: Desired) -> None:
        for name, model in d.models.items():  # on disk already: this test is about the cameras, not the download
            install(store, bundles[(name, model.bundle.version)], keys)
        reconciler.submit(d)
        reconciler.settle()
        reconciler.publish()

    try:
        # The camera and only the detector: the camera says what it misses; the detector serves all the same.
        apply(desired(1, **{"ppocr-det": ("", "1.0.0"), "blazeface": ("", "1.0.0")}))
        assert reports.reports[-1].models["ppocr-det"].state == ModelState.serving
        # The camera may first have failed before the detector was loaded (both missing); it retries by itself.
        wait_for(lambda: cameras.report()["gate"].error == "model 'ppocr-rec' is not on this device", 20,
                 "the camera to report the one model it misses")
        assert cameras.report()["gate"].state == CameraState.failed

        # Recognition is rolled out: the same pipeline starts reading, and the device reports it running.
        gate = cameras.pipelines["gate"]
        apply(desired(2, **{"ppocr-det": ("", "1.0.0"), "ppocr-rec": ("", "1.0.0"), "blazeface": ("", "1.0.0")}))
        wait_for(lambda: any("B7" in t for t in gate.stats()["texts"]), 60, "text read off the video")
        assert cameras.pipelines["gate"] is gate
        reconciler.publish()
        assert reports.reports[-1].cameras["gate"].state == CameraState.running
        assert reports.reports[-1].cameras["gate"].models == ["ppocr-det", "ppocr-rec"]

        # BlazeFace 1.0.0 → 1.1.0 while the camera reads: it never stops, never fails a frame.
        before = gate.stats()["frames_processed"]
        apply(desired(3, **{"ppocr-det": ("", "1.0.0"), "ppocr-rec": ("", "1.0.0"), "blazeface": ("", "1.1.0")}))
        assert host.get("blazeface").version == "1.1.0"
        wait_for(lambda: gate.stats()["frames_processed"] > before + 3, 60, "frames after the swap")
        assert any("B7" in t for t in gate.stats()["texts"]) or wait_for(
            lambda: any("B7" in t for t in gate.stats()["texts"]), 30, "text after the swap")
        assert gate.stats()["frame_errors"] == 0 and cameras.pipelines["gate"] is gate
        # The camera's inference is counted in the models' own telemetry, as any request is.
        assert host.get("ppocr-rec").metrics is not None
    finally:
        cameras.stop()
        host.close()

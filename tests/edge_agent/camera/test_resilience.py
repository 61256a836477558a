"""A camera that vanishes and comes back, corrupt frames, sources that cannot be opened, and models or
configs the desired state brings that the camera cannot use."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_agent import cli
from edge_agent.camera.agent_hook import AgentWatcher
from edge_agent.camera.config import CameraConfig
from edge_agent.camera.detector import Detector
from edge_agent.camera.pipeline import Pipeline
from edge_agent.camera.service import CameraService
from edge_agent.engine import Engine, load
from edge_agent.providers import CPU
from edge_agent.store import StoredModel
from fleet_protocol.bundle import read_bundle
from fleet_protocol.messages import RuntimeConfig
from fleet_protocol.signing import sha256_file

from .conftest import pack_zoo
from .helpers import MjpegServer, video_jpegs, wait_for


def test_source_that_stops_and_comes_back(face_video, blazeface):
    server = MjpegServer(video_jpegs(face_video.path), fps=30, corrupt_every=15).start()
    events = []
    config = CameraConfig(name="ipcam", source={"type": "mjpeg", "url": server.url, "timeout_s": 1.0, "retry_s": 0.2, "retry_max_s": 0.8})
    pipeline = Pipeline(config, Detector(*blazeface), on_event=events.append).start()
    try:
        wait_for(lambda: pipeline.stats()["frames_processed"] >= 20, 15, "frames from the MJPEG camera")
        server.stop()  # the camera is gone: port closed, stream cut
        wait_for(lambda: pipeline.stats()["state"] == "reconnecting", 5, "the loss to be noticed")
        time.sleep(3)
        before = pipeline.stats()
        assert before["state"] == "reconnecting" and pipeline.running and pipeline.capture.alive
        server.start()
        wait_for(lambda: pipeline.stats()["frames_processed"] >= before["frames_processed"] + 20, 15, "frames after the camera came back")
        after = pipeline.stats()
    finally:
        pipeline.stop()
        server.stop()
    assert after["state"] == "live" and after["reconnects"] >= 1
    assert after["frames_corrupt"] >= 2 and after["frame_errors"] == 0  # bad parts skipped, never passed on
    lifecycle = [e.detail["event"] for e in events if e.kind == "lifecycle"]
    assert "source_lost" in lifecycle and "source_reconnected" in lifecycle
    assert lifecycle.index("source_lost") < lifecycle.index("source_reconnected")
    assert any(e.kind == "detections" for e in events)


def test_camera_that_is_not_there_yet_is_retried(face_video, blazeface):
    server = MjpegServer(video_jpegs(face_video.path)[:10], fps=30)
    config = CameraConfig(name="late", source={"type": "mjpeg", "url": server.url, "timeout_s": 1.0, "retry_s": 0.2, "retry_max_s": 0.5})
    pipeline = Pipeline(config, Detector(*blazeface)).start()
    try:
        wait_for(lambda: pipeline.stats()["state"] == "reconnecting", 5, "the first failure")
        assert "Connection refused" in pipeline.stats()["error"]
        server.start()
        wait_for(lambda: pipeline.stats()["frames_processed"] >= 5, 10, "frames once the camera is up")
    finally:
        pipeline.stop()
        server.stop()


@pytest.mark.parametrize("source, words", [
    ("/no/such/video.mp4", "/no/such/video.mp4: no such file"),
    ("7", "camera 7"),
    ("http://127.0.0.1:9/video", "http://127.0.0.1:9/video"),
])
def test_source_that_cannot_be_opened_exits_2_naming_it(source, words, capsys):
    assert cli.main(["camera", "--source", source, "--model", "face.bundle"]) == 2
    err = capsys.readouterr().err
    assert f"cannot open source {source!r}" in err and words in err


def test_model_that_cannot_be_had_exits_2(face_video, keys, tmp_path, capsys):
    assert cli.main(["camera", "--source", str(face_video.path), "--model", str(tmp_path / "x.bundle")]) == 2
    assert "no such bundle file" in capsys.readouterr().err
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a tar")
    assert cli.main(["camera", "--source", str(face_video.path), "--model", str(junk), "--trusted-key", str(keys.public_path)]) == 2
    assert "not a bundle" in capsys.readouterr().err
    rec = pack_zoo("ppocr-rec", keys, tmp_path)
    assert cli.main(["camera", "--source", str(face_video.path), "--model", str(rec), "--trusted-key", str(keys.public_path)]) == 2
    assert "no post-processing plug-in for task 'ocr-recognition'" in capsys.readouterr().err


def test_the_camera_takes_signed_bundles_only(face_video, blazeface_bundle, keys, tmp_path, monkeypatch, capsys):
    """A device has no model_tools: a zoo name is no model; a bundle is verified with the agent's trusted keys."""
    from tests.bundles import Keys

    run = ["camera", "--source", str(face_video.path), "--seconds", "1", "--http-port", "0"]
    assert cli.main([*run, "--model", "blazeface"]) == 2
    assert "blazeface: no such bundle file" in capsys.readouterr().err
    monkeypatch.delenv("EDGEFLEET_AGENT_TRUSTED_KEYS", raising=False)
    assert cli.main([*run, "--model", str(blazeface_bundle)]) == 2
    assert "needs a trusted key" in capsys.readouterr().err
    monkeypatch.setenv("EDGEFLEET_AGENT_TRUSTED_KEYS", str(Keys(tmp_path / "other").public_path))
    assert cli.main([*run, "--model", str(blazeface_bundle)]) == 2  # signed, but not by a key this device trusts
    assert "signature" in capsys.readouterr().err


def test_edge_agent_never_imports_model_tools():
    """A device installs edge_agent and fleet_protocol only: model_tools is for laptops and CI."""
    import ast

    import edge_agent

    root = Path(edge_agent.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(root)}:{node.lineno}" for n in names if n.split(".")[0] == "model_tools"]
    assert offenders == []


def loaded(bundle: Path, keys, root: Path):
    """A bundle loaded the way the agent's reconciler loads it: verified, extracted, an engine session."""
    sha = sha256_file(bundle)
    folder = root / sha[:12]
    verified = read_bundle(bundle, [keys.public], extract_to=folder)
    return load(StoredModel(sha, folder, verified.manifest), [CPU()], threads=1, optimization="basic", cache_dir=root / "cache")


def test_desired_state_drives_cameras_and_bad_models_are_refused(face_video, blazeface_bundle, bundles, keys, tmp_path):
    """The agent's wiring with a real engine: sources from the runtime config, the model the engine serves."""
    engine = Engine()
    runtime = SimpleNamespace(value=RuntimeConfig())
    events = []
    service = CameraService(on_event=events.append)
    watcher = AgentWatcher(service, lambda: runtime.value, engine, interval=0.05).start()
    try:
        engine.swap(loaded(blazeface_bundle, keys, tmp_path))
        source = {"type": "file", "path": str(face_video.path), "loop": True}
        runtime.value = RuntimeConfig(sources=[{"name": "door", "source": source}])
        door = wait_for(lambda: service.pipelines.get("door"), 5, "the camera from the desired state")
        wait_for(lambda: door.stats()["detections"] > 0, 10, "faces seen with the served BlazeFace bundle")
        assert door.stats()["model"] == "blazeface 1.0.0 (detection)"

        # A classification model arrives: the engine serves it, the camera refuses it and keeps BlazeFace.
        engine.swap(loaded(bundles["2.0.0"], keys, tmp_path))
        refused = wait_for(lambda: [e for e in events if e.detail.get("event") == "camera_model_refused"], 5, "the refusal")
        assert "no post-processing plug-in for task 'classification'" in refused[0].detail["error"]
        assert refused[0].detail["model"] == "digits 2.0.0 (classification)"
        processed = door.stats()["frames_processed"]
        wait_for(lambda: door.stats()["frames_processed"] > processed + 10, 10, "the old pipeline to carry on")
        assert door.stats()["model"] == "blazeface 1.0.0 (detection)" and service.pipelines["door"] is door
        assert "refused" in door.stats()["note"]

        # A config the camera cannot use (unknown source kind) is refused as a whole; the camera carries on.
        runtime.value = RuntimeConfig(sources=[{"name": "door", "source": {"type": "webcam"}}])
        wait_for(lambda: [e for e in events if e.detail.get("event") == "camera_config_refused"], 5, "the config refusal")
        assert service.pipelines["door"] is door and door.running

        # No sources any more: the camera stops.
        runtime.value = RuntimeConfig(sources=[])
        wait_for(lambda: not service.pipelines, 5, "the camera to stop")
        assert not door.running
    finally:
        watcher.stop()


def test_reconciler_refuses_a_model_the_configured_cameras_cannot_decode(face_video, blazeface_bundle, bundles, keys, tmp_path):
    """The admission check: with cameras configured, a classification model is reported failed, not served."""
    from edge_agent.reconcile import Reconciler
    from edge_agent.settings import AgentSettings
    from edge_agent.store import ModelStore
    from fleet_protocol.messages import Desired, DeviceState, ModelRef
    from fleet_protocol.signing import sha256_file

    store = ModelStore(tmp_path / "store")
    engine = Engine()
    reports = []
    transport = SimpleNamespace(report=reports.append, watch_artifact=lambda s: None, unwatch_artifact=lambda s: None,
                                request_chunks=lambda *a: None)
    reconciler = Reconciler(AgentSettings(device_id="cam-x", data_dir=store.root, trusted_keys=str(keys.public_path)),
                            store, engine, transport)
    watcher = AgentWatcher(CameraService(), lambda: reconciler.runtime, engine)
    reconciler.admission_checks.append(watcher.admit)
    cameras = RuntimeConfig(sources=[{"name": "door", "source": {"type": "file", "path": str(face_video.path), "loop": True}}])

    def offer(revision: int, bundle, name: str, version: str) -> None:
        from tests.edge_agent.conftest import install

        install(store, bundle, keys)  # already on disk: no download needed for this test
        ref = ModelRef(name=name, version=version, sha256=sha256_file(bundle), size=bundle.stat().st_size)
        desired = Desired(revision=revision, model=ref, runtime=cameras)
        reconciler.submit(desired)
        reconciler._apply(desired)

    try:
        offer(1, blazeface_bundle, "blazeface", "1.0.0")
        assert reports[-1].state == DeviceState.serving and engine.current.name == "blazeface"
        offer(2, bundles["2.0.0"], "digits", "2.0.0")
        assert reports[-1].state == DeviceState.failed
        assert "ModelRejected" in reports[-1].error and "classification" in reports[-1].error
        assert engine.current.name == "blazeface"  # the old model keeps serving
    finally:
        watcher.service.stop()
        engine.close()

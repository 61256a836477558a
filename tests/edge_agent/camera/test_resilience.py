"""A camera that vanishes and comes back, corrupt frames, sources that cannot be opened, and models the
stand-alone camera cannot use. (Cameras and models from the desired state: test_manager.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent import cli
from edge_agent.camera.model import StaticHost
from edge_agent.camera.pipeline import Pipeline
from edge_agent.camera.stages import Resolver
from fleet_protocol.cameras import Camera

from .conftest import pack_zoo
from .helpers import MjpegServer, video_jpegs, wait_for


def pipeline_for(source: dict, model) -> Pipeline:
    camera = Camera(name="ipcam", source=source, detector=model.name)
    return Pipeline(camera, Resolver(camera, StaticHost([model])), on_event=None)


def test_source_that_stops_and_comes_back(face_video, blazeface):
    server = MjpegServer(video_jpegs(face_video.path), fps=30, corrupt_every=15).start()
    events = []
    camera = Camera(name="ipcam", source={"type": "mjpeg", "url": server.url, "timeout_s": 1.0, "retry_s": 0.2, "retry_max_s": 0.8},
                    detector="blazeface")
    pipeline = Pipeline(camera, Resolver(camera, StaticHost([blazeface])), on_event=events.append).start()
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
    pipeline = pipeline_for({"type": "mjpeg", "url": server.url, "timeout_s": 1.0, "retry_s": 0.2, "retry_max_s": 0.5},
                            blazeface).start()
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
    ("rtsp://admin:pw-123@127.0.0.1:9/s", "'rtsp://admin:***@127.0.0.1:9/s'"),  # named, never with its password
])
def test_source_that_cannot_be_opened_exits_2_naming_it(source, words, capsys):
    assert cli.main(["camera", "--source", source, "--model", "face.bundle"]) == 2
    err = capsys.readouterr().err
    assert "cannot open source" in err and words in err and "pw-123" not in err


def test_model_that_cannot_be_had_exits_2(face_video, keys, tmp_path, capsys):
    assert cli.main(["camera", "--source", str(face_video.path), "--model", str(tmp_path / "x.bundle")]) == 2
    assert "no such bundle file" in capsys.readouterr().err
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a tar")
    assert cli.main(["camera", "--source", str(face_video.path), "--model", str(junk), "--trusted-key", str(keys.public_path)]) == 2
    assert "not a bundle" in capsys.readouterr().err
    rec = pack_zoo("ppocr-rec", keys, tmp_path)
    assert cli.main(["camera", "--source", str(face_video.path), "--model", str(rec), "--trusted-key", str(keys.public_path)]) == 2
    assert "ppocr-rec (ocr-recognition) cannot be a camera's detector" in capsys.readouterr().err


def test_the_camera_takes_signed_bundles_only(face_video, blazeface_bundle, tmp_path, monkeypatch, capsys):
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


def test_the_camera_core_knows_no_transport():
    """The camera's core is plain classes; only the view, the metrics and the CLI speak HTTP, Prometheus or MQTT."""
    import ast

    import edge_agent.camera as camera

    root = Path(camera.__file__).parent
    shells = {"view.py", "metrics.py", "cli.py"}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.name in shells:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.relative_to(root)}: {n}" for n in names
                          if n.split(".")[0] in {"fastapi", "starlette", "uvicorn", "paho", "prometheus_client", "httpx"}]
    assert offenders == []


def test_a_stage_that_does_not_read_crops_exits_2(face_video, blazeface_bundle, keys, tmp_path, capsys):
    det = pack_zoo("ppocr-det", keys, tmp_path)
    run = ["camera", "--source", str(face_video.path), "--trusted-key", str(keys.public_path), "--seconds", "1", "--http-port", "0"]
    assert cli.main([*run, "--model", str(det), "--stage", str(blazeface_bundle)]) == 2
    assert "blazeface (detection) cannot be a later stage: it does not read crops" in capsys.readouterr().err
    assert cli.main([*run, "--model", str(det), "--stage", str(det)]) == 2
    assert "two bundles of one model name" in capsys.readouterr().err

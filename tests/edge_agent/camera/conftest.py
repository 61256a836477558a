"""Fixtures: generated videos with their truth (faces; moving text), real BlazeFace and PP-OCR models as signed
bundles, loaded from them into a host the pipelines ask by name (as they ask the agent's ModelHost).

Tests may build bundles with model_tools; the device code (edge_agent) never imports it."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.camera import TextTruth, VideoTruth, make_text_video, make_video
from edge_agent.camera.model import BundleModel, StaticHost, load
from model_tools.pack import pack_bundle
from model_tools.zoo import prepare


@pytest.fixture(scope="session")
def face_video(tmp_path_factory) -> VideoTruth:
    return make_video(tmp_path_factory.mktemp("video") / "faces.avi", fps=30.0, seconds=4.0)


@pytest.fixture(scope="session")
def text_video(tmp_path_factory) -> TextTruth:
    return make_text_video(tmp_path_factory.mktemp("video") / "text.avi", fps=25.0, seconds=3.0)


def pack_zoo(name: str, keys, out: Path, version: str = "1.0.0") -> Path:
    zoo = prepare(name)
    path, _ = pack_bundle(zoo.onnx, name=name, version=version, golden_inputs=zoo.golden_inputs,
                          private_key_pem=keys.private_path.read_bytes(), out_dir=out, task=zoo.task, labels=zoo.labels,
                          preprocessing=zoo.preprocessing, extra=zoo.extra, force=True)
    return path


@pytest.fixture(scope="session")
def blazeface_bundle(keys, tmp_path_factory) -> Path:
    return pack_zoo("blazeface", keys, tmp_path_factory.mktemp("camera-bundles"))


@pytest.fixture(scope="session")
def blazeface(blazeface_bundle, keys) -> BundleModel:
    """The real pretrained BlazeFace, loaded from its signed bundle."""
    return load(str(blazeface_bundle), [keys.public])


@pytest.fixture(scope="session")
def ppocr(keys, tmp_path_factory) -> dict[str, BundleModel]:
    """PP-OCRv4 det and rec and the direction classifier, each from its own signed bundle."""
    out = tmp_path_factory.mktemp("ppocr-bundles")
    return {n: load(str(pack_zoo(n, keys, out)), [keys.public]) for n in ("ppocr-det", "ppocr-rec", "ppocr-cls")}


@pytest.fixture
def host(blazeface, ppocr) -> StaticHost:
    return StaticHost([blazeface, *ppocr.values()])

"""Precision is explicit: the golden check holds a model to what its precision can keep, or to what its task
needs. On the CPU, an fp16-converted digits model against the fp32 model's golden outputs stands in for a
TensorRT fp16 engine."""

from __future__ import annotations

import pytest

from edge_agent.runtime import golden
from edge_agent.runtime.errors import GoldenCheckError
from edge_agent.runtime.model import load
from edge_agent.runtime.providers import TensorRT, resolve
from fleet_protocol.messages import Precision, Runtime
from tests.bundles import fp16_bundle
from tests.edge_agent.conftest import install


@pytest.fixture(scope="module")
def fp16(keys, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16")
    return {
        "good": fp16_bundle(keys, out / "good", "1.1.0"),
        "broken": fp16_bundle(keys, out / "broken", "1.2.0", broken=True),
        "good-top1": fp16_bundle(keys, out / "top1", "1.3.0", compare="top1"),
        "broken-top1": fp16_bundle(keys, out / "btop1", "1.4.0", broken=True, compare="top1"),
    }


def check(store, keys, path, precision: Precision) -> None:
    model = load(install(store, path, keys), Runtime(precision=precision), cache_dir=store.cache)
    golden.check(model)
    assert model.golden_passed and model.precision == precision


def test_a_correct_fp16_model_passes_as_fp16_and_fails_as_fp32(store, keys, fp16):
    check(store, keys, fp16["good"], Precision.fp16)
    with pytest.raises(GoldenCheckError, match=r"precision fp32: atol 0\.0001"):
        check(store, keys, fp16["good"], Precision.fp32)


def test_a_broken_fp16_model_fails_whatever_the_precision(store, keys, fp16):
    for precision in (Precision.fp16, Precision.int8):
        with pytest.raises(GoldenCheckError, match=f"precision {precision.value}"):
            check(store, keys, fp16["broken"], precision)


def test_task_aware_check_compares_the_top1_class(store, keys, fp16):
    check(store, keys, fp16["good-top1"], Precision.fp32)  # same classes: passes even at fp32
    with pytest.raises(GoldenCheckError, match="classes differ"):
        check(store, keys, fp16["broken-top1"], Precision.fp16)


def test_boxes_and_text_comparisons():
    import numpy as np

    from fleet_protocol.manifest import Golden

    boxes = np.array([[[10, 10, 50, 50, 0.9], [60, 60, 90, 90, 0.8]]], np.float32)
    shifted = boxes[:, ::-1] + np.array([1, 1, 1, 1, 0], np.float32)  # same boxes, other order, 1 px off
    golden.compare({"b": shifted}, {"b": boxes}, Golden(compare="boxes"), Precision.fp16)
    far = boxes + np.array([30, 30, 30, 30, 0], np.float32)
    with pytest.raises(GoldenCheckError, match="2 of 2 golden boxes have no match"):
        golden.compare({"b": far}, {"b": boxes}, Golden(compare="boxes", iou=0.5), Precision.fp16)
    logits = np.eye(5, dtype=np.float32)[None, [1, 2, 0, 3]]
    golden.compare({"t": logits * 0.9}, {"t": logits}, Golden(compare="text"), Precision.int8)
    with pytest.raises(GoldenCheckError, match="symbol sequence differs"):
        golden.compare({"t": logits[:, ::-1]}, {"t": logits}, Golden(compare="text"), Precision.int8)


def test_tensorrt_runs_the_precision_it_is_told_never_fp16_silently(tmp_path):
    trt = TensorRT()
    assert trt.options(tmp_path, Precision.fp32)["trt_fp16_enable"] == "False"
    assert trt.options(tmp_path, Precision.fp16)["trt_fp16_enable"] == "True"
    assert trt.options(tmp_path, Precision.int8)["trt_int8_enable"] == "True"
    # OpenVINO has no int8 mode here: it is skipped for int8, or refused when required.
    chosen = resolve(["OpenVINOExecutionProvider", "CPUExecutionProvider"], ["OpenVINOExecutionProvider", "CPUExecutionProvider"],
                     precision=Precision.int8)
    assert [p.name for p in chosen] == ["CPUExecutionProvider"]

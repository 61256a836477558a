"""int8 (dynamic, static QDQ) and fp16 variants of an ONNX model, with the fixes real models need.

Real exported models trip the quantizer in known ways, handled here rather than left to the user:
- opset < 13 (PP-OCR ships 11 and 12): per-channel QuantizeLinear needs an `axis`, which exists from
  opset 13 on, so the model is converted first (to 17, see PORTABLE_OPSET);
- symbolic dimensions (p2o.DynamicDimension.*): the symbolic shape inference in `quant_pre_process` fails on
  them, so it runs with `skip_symbolic_shape=True` and relies on ONNX's own shape inference;
- CPUs without VNNI saturate u8×s8 products, so weights are reduced to 7 bits there (`reduce_range`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import calibration as calib
from .errors import UsageError
from .optimize import atomic_path, first_line, load_model, opset, save_atomic

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
MIN_QDQ_OPSET = 13
# onnxruntime's fusions (run by quant_pre_process and by `optimize`) emit LayerNormalization and friends into the
# default domain; those are standard ONNX only from opset 17, so anything older is raised that far first, or the
# result would load in onnxruntime but fail onnx.checker (and `bundle`).
PORTABLE_OPSET = 17


def cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags or "asimddp" in flags


def raise_opset(model, target: int = PORTABLE_OPSET):
    """→ (model at opset ≥ target, the opset it had)."""
    from onnx import version_converter

    old = opset(model)
    if old >= target:
        return model, old
    try:
        return version_converter.convert_version(model, target), old
    except Exception as exc:
        raise UsageError(f"cannot raise opset {old} → {target} for quantization: {first_line(exc)}") from None


def _prepared(model, workdir: Path) -> Path:
    """Opset raised, then onnxruntime's pre-processing (fusions, shape inference) → path of the result."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, _ = raise_opset(model)
    raised = workdir / "raised.onnx"
    onnx.save(model, str(raised))
    out = workdir / "prepared.onnx"
    try:
        quant_pre_process(str(raised), str(out), skip_symbolic_shape=True)
    except Exception:
        # Pre-processing only helps the quantizer place QDQ pairs; a model it cannot handle is still quantizable.
        return raised
    return out


def dynamic_int8(src: Path, dest: Path, *, per_channel: bool = False, exclude: list[str] | None = None) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = load_model(src)
    _check_exclude(model, exclude)
    check_loadable(model, src)
    with tempfile.TemporaryDirectory(prefix="edgefleet-q-") as tmp:
        prepared = _prepared(model, Path(tmp))
        with atomic_path(dest) as out:
            try:
                quantize_dynamic(str(prepared), str(out), per_channel=per_channel, weight_type=QuantType.QInt8,
                                 nodes_to_exclude=exclude or [], reduce_range=per_channel and not cpu_has_vnni())
            except Exception as exc:
                raise UsageError(f"dynamic quantization failed: {first_line(exc)}") from None
            _verify(out)
    return {"method": "dynamic-int8", "source": str(src), "output": str(dest), "per_channel": per_channel,
            "opset": opset(model), "excluded": exclude or []}


def static_int8(
    src: Path,
    dest: Path,
    data: dict[str, np.ndarray],
    *,
    method: str = "minmax",
    per_channel: bool = True,
    exclude: list[str] | None = None,
    calibration_name: str | None = None,
    progress: Callable[[], None] | None = None,
) -> dict:
    """Static QDQ int8: u8 activations and s8 weights, the combination onnxruntime's CPU kernels are built for."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    model = load_model(src)
    _check_exclude(model, exclude)
    check_loadable(model, src)
    calib.check(data, calib.model_inputs(model), calibration_name or "calibration data")
    n = len(next(iter(data.values())))
    extra: dict[str, bool | float] = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.99
    with tempfile.TemporaryDirectory(prefix="edgefleet-q-") as tmp:
        prepared = _prepared(model, Path(tmp))
        with atomic_path(dest) as out:
            try:
                # onnxruntime's calibrators print progress to stdout, which would spoil `--json` output: it goes
                # to stderr with --verbose, nowhere otherwise.
                verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
                with contextlib.redirect_stdout(sys.stderr if verbose else io.StringIO()):
                    quantize_static(
                        str(prepared), str(out), calib.Reader(data, progress), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, reduce_range=not cpu_has_vnni(), activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=exclude or [],
                        calibrate_method=getattr(CalibrationMethod, METHODS[method]), extra_options=extra,
                    )
            except UsageError:
                raise
            except Exception as exc:
                raise UsageError(f"static quantization failed: {first_line(exc)}") from None
            _verify(out)
    return {"method": "static-qdq-int8", "source": str(src), "output": str(dest), "calibration": calibration_name,
            "calibration_size": n, "calibration_method": method, "per_channel": per_channel,
            "opset": opset(model), "excluded": exclude or []}


def fp16(src: Path, dest: Path, *, exclude: list[str] | None = None) -> dict:
    """Weights and activations in float16, inputs and outputs kept float32 so callers need not change."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = load_model(src)
    _check_exclude(model, exclude)
    check_loadable(model, src)
    try:
        half = convert_float_to_float16(model, keep_io_types=True, node_block_list=exclude or None)
    except Exception as exc:
        raise UsageError(f"fp16 conversion failed: {first_line(exc)}") from None
    save_atomic(half, dest)
    return {"method": "fp16", "source": str(src), "output": str(dest), "excluded": exclude or []}


def check_loadable(model, src: Path) -> None:
    """The source itself must load in onnxruntime: an op it does not know is the model's problem, said so before
    the quantizer fails on it somewhere deep (or writes a file that then does not load)."""
    import onnxruntime as ort

    from .session import create as create_session

    try:
        create_session(model.SerializeToString(), graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    except Exception as exc:
        msg = first_line(exc)
        op = re.search(r"implementation for (\w+)\((\d+)\)", msg) or re.search(r"([\w.]*:?\w+)\((-?\d+)\) is not a registered", msg)
        if op:
            raise UsageError(f"{src}: op {op.group(1)} (opset {op.group(2)}) is unknown to onnxruntime, so the model "
                             "cannot be quantized (re-export it with standard ONNX ops)") from None
        raise UsageError(f"{src}: onnxruntime cannot load it, so it cannot be quantized: {msg}") from None


def _check_exclude(model, exclude: list[str] | None) -> None:
    names = {n.name for n in model.graph.node}
    unknown = [e for e in exclude or [] if e not in names]
    if unknown:
        raise UsageError(f"no node named {unknown[0]!r} in the model (nodes to exclude must be node names)")


def _verify(path: Path) -> None:
    """The quantized file must at least load in onnxruntime; otherwise it is not written."""
    from .session import create as create_session

    try:
        create_session(path)
    except Exception as exc:
        raise UsageError(f"the quantized model does not load in onnxruntime: {first_line(exc)}") from None

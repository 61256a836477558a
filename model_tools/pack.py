"""Pack an ONNX model, its golden data and a manifest into a signed bundle."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from fleet_protocol.bundle import GOLDEN, MODEL, bundle_filename, write_bundle
from fleet_protocol.encryption import CIPHER, b64e, encrypt_model, new_data_key, new_key_id
from fleet_protocol.manifest import Encryption, Golden, Manifest, Preprocessing, QuantizationInfo, TensorSpec
from fleet_protocol.signing import SignatureError, load_private_key

from . import calibration, golden
from .errors import UsageError
from .optimize import chmod_like_open

# Ops that only a quantized graph has: what `bundle` records as the quantization when nobody says.
DYNAMIC_INT8_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}
STATIC_INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QGemm"}
FP32_TOLERANCE = (1e-4, 1e-3)
# A quantized model's outputs move by a quantization step between CPUs (VNNI or not, reduce_range); the golden
# check must tolerate that, not call every other device broken.
QUANTIZED_TOLERANCE = (1e-3, 1e-2)


def detect_quantization(model) -> tuple[str, str]:
    """→ (manifest quantization method, the evidence) read from the graph's ops and weights."""
    from onnx import TensorProto

    ops = {n.op_type for n in model.graph.node}
    if ops & DYNAMIC_INT8_OPS:
        return "dynamic-int8", f"{sorted(ops & DYNAMIC_INT8_OPS)[0]} nodes"
    if ops & STATIC_INT8_OPS:
        return "static-qdq-int8", f"{sorted(ops & STATIC_INT8_OPS)[0]} nodes"
    halves = [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16]
    floats = [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT]
    if halves and len(halves) >= len(floats):
        return "fp16", f"{len(halves)} float16 weights"
    return "none", "no quantized ops or float16 weights"


def resolve_quantization(model, given: dict[str, Any] | None) -> dict[str, Any]:
    """The quantization to record: what the caller says, checked against the graph, else what the graph shows."""
    found, evidence = detect_quantization(model)
    if not given or given.get("method") is None:
        return {**(given or {}), "method": found}
    if given["method"] != found:
        raise UsageError(f"quantization {given['method']!r} does not describe this model: it is {found} ({evidence})")
    return dict(given)

def graph_io(model_bytes: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs as the ONNX graph declares them (initializers are not inputs)."""
    import onnx
    from onnx import helper

    try:
        model = onnx.load_from_string(model_bytes)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError …
        raise UsageError(f"not a valid ONNX model: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    initializers = {i.name for i in model.graph.initializer}

    def spec(value) -> TensorSpec:
        t = value.type.tensor_type
        dims: list[int | str] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        return TensorSpec(name=value.name, dtype=np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name, shape=dims)

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [spec(v) for v in model.graph.output]
    return inputs, outputs


def pack_bundle(
    model_path: Path,
    *,
    name: str,
    version: str,
    golden_inputs: Path,
    private_key_pem: bytes,
    out_dir: Path,
    task: str = "other",
    labels: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
    hardware_class: str = "generic",
    measurements: dict[str, Any] | None = None,
    tolerance: tuple[float, float] | None = None,
    extra: dict[str, Any] | None = None,
    force: bool = False,
    encrypt: bool = False,
) -> tuple[Path, Manifest]:
    """Write NAME-VERSION.bundle; with `encrypt`, also NAME-VERSION.key (the data key: upload it, keep it secret)."""
    try:
        key = load_private_key(private_key_pem)
    except SignatureError as exc:
        raise UsageError(str(exc)) from None
    try:
        model_bytes = Path(model_path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read model {model_path}: {exc.strerror}") from None
    import onnx

    inputs, outputs = graph_io(model_bytes)
    graph = onnx.load_from_string(model_bytes)
    quantization = resolve_quantization(graph, quantization)
    if tolerance is None:
        tolerance = FP32_TOLERANCE if quantization["method"] == "none" else QUANTIZED_TOLERANCE
    sample = golden.load_inputs(Path(golden_inputs), [i.name for i in inputs])
    # Checked as calibration data is (rank, fixed dims, dtype), so a wrong golden file is named as such.
    calibration.check(sample, calibration.model_inputs(graph), f"golden inputs {golden_inputs}")
    expected = golden.compute(model_bytes, sample)
    out = Path(out_dir) / bundle_filename(name, version)
    if out.exists() and not force:
        # Bundles are immutable: a version is published once.
        raise UsageError(f"{out} exists; bundles are immutable, choose a new version")
    try:
        manifest = Manifest(
            name=name,
            version=version,
            task=task,
            inputs=inputs,
            outputs=outputs,
            preprocessing=Preprocessing(**preprocessing) if preprocessing else None,
            labels=labels or [],
            quantization=QuantizationInfo(**(quantization or {})),
            hardware_class=hardware_class,
            measurements=measurements or {},
            golden=Golden(atol=tolerance[0], rtol=tolerance[1]),
            files={},
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            extra=extra or {},
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
    if encrypt:
        # Goldens come from the plaintext above; the bundle carries only ciphertext, whose digest the signature covers.
        data_key, kid = new_data_key(), new_key_id()
        manifest = manifest.model_copy(update={"encryption": Encryption(key_id=kid)})
        model_bytes = encrypt_model(model_bytes, data_key, kid)
        write_data_key(key_path(out), kid, data_key)
    files = {MODEL: model_bytes, GOLDEN: golden.to_npz(sample, expected)}
    manifest = write_bundle(out, manifest, files, key)
    chmod_like_open(out)  # written through mkstemp (0600); a bundle is for sharing, so the user's umask decides
    return out, manifest


def key_path(bundle: Path) -> Path:
    return bundle.with_suffix(".key")


def write_data_key(path: Path, kid: str, data_key: bytes) -> None:
    """The data key file the fleet API takes with the bundle: JSON, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)  # written before the bundle, whose writer makes the folder
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"key_id": kid, "cipher": CIPHER, "key": b64e(data_key)}, f)

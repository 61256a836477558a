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

from . import golden
from .errors import UsageError


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
    tolerance: tuple[float, float] = (1e-4, 1e-3),
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
    inputs, outputs = graph_io(model_bytes)
    sample = golden.load_inputs(Path(golden_inputs), [i.name for i in inputs])
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
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
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
    return out, manifest


def key_path(bundle: Path) -> Path:
    return bundle.with_suffix(".key")


def write_data_key(path: Path, kid: str, data_key: bytes) -> None:
    """The data key file the fleet API takes with the bundle: JSON, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)  # written before the bundle, whose writer makes the folder
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"key_id": kid, "cipher": CIPHER, "key": b64e(data_key)}, f)

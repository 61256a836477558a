"""PyTorch (module or TorchScript file) and scikit-learn → ONNX, checked and compared with the source framework.

torch and skl2onnx are imported only here and only when used: they live in the `export` extra, so a machine
that only quantizes and bundles never installs them.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .optimize import first_line, load_model, save_atomic

log = logging.getLogger(__name__)
DEFAULT_OPSET = 17  # every current runtime has it, LayerNormalization is standard, QDQ per-channel works


def _require(module: str, extra: str = "export"):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{module} is not installed; pip install 'edgefleet[{extra}]'") from None


def load_torch(source: str):
    """A TorchScript file (.pt/.pth saved with torch.jit.save), or `package.module:factory` returning a module."""
    torch = _require("torch")
    path = Path(source)
    if path.is_file():
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:
            raise UsageError(f"{path}: not a TorchScript file ({first_line(exc)})") from None
    if ":" not in source:
        raise UsageError(f"{source}: no such file, and not a 'module:factory' reference")
    mod_name, attr = source.split(":", 1)
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot import {source}: {first_line(exc)}") from None
    module = obj() if not isinstance(obj, torch.nn.Module) and callable(obj) else obj
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"{source} is not a torch.nn.Module")
    return module.eval()


def export_torch(module, sample: np.ndarray, dest: Path, *, opset: int = DEFAULT_OPSET, input_name: str = "input",
                 output_name: str = "output", dynamic_batch: bool = True, atol: float = 1e-4) -> dict[str, Any]:
    torch = _require("torch")
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    with torch.no_grad():
        expected = module(x)
    expected = (expected[0] if isinstance(expected, (tuple, list)) else expected).numpy()
    exporter, errors = None, []
    with tempfile.TemporaryDirectory(prefix="edgefleet-export-") as tmp:
        out = Path(tmp) / "model.onnx"
        is_script = isinstance(module, torch.jit.ScriptModule)
        # The dynamo exporter is the supported path; TorchScript modules and graphs it cannot trace fall back
        # to the legacy TorchScript exporter.
        attempts = ([] if is_script else ["dynamo"]) + ["legacy"]
        for kind in attempts:
            try:
                if kind == "dynamo":
                    batch = torch.export.Dim("batch", min=1, max=1024) if dynamic_batch else None
                    torch.onnx.export(module, (x,), str(out), dynamo=True, opset_version=opset,
                                      input_names=[input_name], output_names=[output_name],
                                      dynamic_shapes=({0: batch},) if batch is not None else None, verbose=False)
                else:
                    torch.onnx.export(module, (x,), str(out), dynamo=False, opset_version=opset,
                                      input_names=[input_name], output_names=[output_name],
                                      dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None)
                exporter = kind
                break
            except Exception as exc:
                errors.append(f"{kind}: {first_line(exc)}")
                log.debug("export with %s failed: %s", kind, exc)
        if exporter is None:
            raise UsageError(f"torch export failed ({'; '.join(errors)})")
        model = load_model(out)  # onnx.checker runs here
        diff = _compare(model, {model.graph.input[0].name: sample.astype(np.float32)}, expected, atol)
        save_atomic(model, dest)
    return {"output": str(dest), "exporter": exporter, "opset": opset, "max_abs_diff": diff,
            "fallback_reasons": errors}


def export_sklearn(path: Path, dest: Path, *, n_features: int | None = None, sample: np.ndarray | None = None,
                   opset: int = DEFAULT_OPSET, atol: float = 1e-4) -> dict[str, Any]:
    """A pickled (or joblib) scikit-learn estimator → ONNX with input `input` float32 batch×n_features."""
    skl2onnx = _require("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType

    try:
        with open(path, "rb") as f:
            est = pickle.load(f)  # the user's own estimator file: pickle is how scikit-learn models are saved
    except Exception as exc:
        raise UsageError(f"{path}: not a pickled scikit-learn estimator ({first_line(exc)})") from None
    n = n_features or getattr(est, "n_features_in_", None)
    if not n:
        raise UsageError(f"{path}: cannot tell the number of features; give --n-features")
    try:
        onx = skl2onnx.convert_sklearn(est, initial_types=[("input", FloatTensorType([None, int(n)]))],
                                       target_opset={"": opset, "ai.onnx.ml": 3}, options={"zipmap": False})
    except Exception as exc:
        raise UsageError(f"skl2onnx cannot convert {type(est).__name__}: {first_line(exc)}") from None
    with tempfile.TemporaryDirectory(prefix="edgefleet-export-") as tmp:
        out = Path(tmp) / "model.onnx"
        out.write_bytes(onx.SerializeToString())
        model = load_model(out)
    if sample is None:
        sample = np.random.default_rng(0).normal(size=(8, int(n))).astype(np.float32)
    expected = est.predict_proba(sample) if hasattr(est, "predict_proba") else est.predict(sample)
    index = 1 if hasattr(est, "predict_proba") and len(model.graph.output) > 1 else 0
    diff = _compare(model, {"input": sample.astype(np.float32)}, np.asarray(expected, np.float32), atol, index)
    save_atomic(model, dest)
    return {"output": str(dest), "exporter": "skl2onnx", "opset": opset, "estimator": type(est).__name__,
            "max_abs_diff": diff}


def _compare(model, feed: dict[str, np.ndarray], expected: np.ndarray, atol: float, index: int = 0) -> float:
    import onnxruntime as ort

    try:
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[index]
    except Exception as exc:
        raise UsageError(f"the exported model does not run in onnxruntime: {first_line(exc)}") from None
    got = np.asarray(got, np.float32).reshape(expected.shape)
    diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    tol = atol + 1e-3 * float(np.max(np.abs(expected)) if expected.size else 0.0)
    if not diff <= tol:
        raise UsageError(f"exported model disagrees with the source: max |diff| {diff:.3g} > {tol:.3g}")
    return diff

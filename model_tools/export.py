"""PyTorch (module or TorchScript file) and scikit-learn → ONNX, checked and compared with the source framework.

A model may take several inputs of any dtype (token ids, masks, images) and give several outputs. Any axis can
be declared dynamic by name; after export the graph's input dims are checked against what was declared, and
when an axis is dynamic the ONNX model is compared with the source at two different shapes, so an exporter
that quietly froze an axis (or traced a length into the graph) is caught before a file is written.

torch and skl2onnx are imported only here and only when used: they live in the `export` extra, so a machine
that only quantizes and bundles never installs them.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import pickle
import re
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .optimize import first_line, load_model, opset, save_atomic

log = logging.getLogger(__name__)
DEFAULT_OPSET = 17  # every current runtime has it, LayerNormalization is standard, QDQ per-channel works

# Axis of a dynamic dimension named by one of these words when no explicit `name=AXIS` is given.
# height/width count from the end (NCHW: 2, 3), so they also fit a C×H×W input.
WELL_KNOWN_AXES = {"batch": 0, "n": 0, "sequence": 1, "seq": 1, "time": 1, "length": 1, "tokens": 1,
                   "height": -2, "h": -2, "width": -1, "w": -1}


def _require(module: str, extra: str = "export"):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{module} is not installed; pip install 'edgefleet[{extra}]'") from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow what exporters print (progress on stdout, warnings, tracebacks of attempts that fall back) unless
    debug logging is on; what was said goes to the debug log, where --verbose shows it."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    out, err = io.StringIO(), io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "onnxscript", "onnx_ir", "skl2onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        said = (out.getvalue() + err.getvalue()).strip()
        if said:
            log.debug("exporter output:\n%s", said)


# ---- loading the source ----------------------------------------------------------------------------------

def _looks_like_state_dict(path: Path) -> bool:
    """torch.save() of a dict of tensors: a zip with data.pkl but, unlike TorchScript, no code/ folder."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names)


def load_torch(source: str):
    """A TorchScript file (.pt/.pth saved with torch.jit.save), or `package.module:factory` returning a module."""
    torch = _require("torch")
    path = Path(source)
    if path.is_file():
        if _looks_like_state_dict(path):
            raise UsageError(f"{path}: holds saved weights or objects (torch.save), not a TorchScript model; export "
                             "needs the module itself: give 'package.module:factory' (loading the weights in the "
                             "factory) or a torch.jit.save file")
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:
            raise UsageError(f"{path}: not a TorchScript file ({first_line(exc)})") from None
    if ":" not in source:
        raise UsageError(f"{source}: no such file, and not a 'module:factory' reference")
    mod_name, attr = source.split(":", 1)
    # The console script does not put the working folder on sys.path as `python -m` does; a user exporting
    # `net:Net` from the folder holding net.py means that file.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot import {source}: {first_line(exc)}") from None
    except Exception as exc:  # the user's module raised while importing
        raise UsageError(f"importing {mod_name} failed: {type(exc).__name__}: {first_line(exc)}") from None
    try:
        module = obj() if not isinstance(obj, torch.nn.Module) and callable(obj) else obj
    except Exception as exc:
        raise UsageError(f"{source}() failed: {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"{source} is not a torch.nn.Module")
    return module.eval()


# ---- inputs, dynamic axes ----------------------------------------------------------------------------------

def parse_dynamic(specs: list[str], samples: dict[str, np.ndarray], *, default_batch: bool = True) -> dict[str, dict[int, str]]:
    """`--dynamic` values → {input name: {axis: dim name}}.

    A value is `[INPUT:]NAME[=AXIS],…`: without INPUT it applies to every input that has the axis; NAME alone
    must be a well-known one (batch, sequence, height, width …); `none` declares every axis fixed. Without any
    `--dynamic`, axis 0 of every input is `batch` (unless default_batch is off).
    """
    out: dict[str, dict[int, str]] = {n: {} for n in samples}
    if not specs:
        if default_batch:
            for n, a in samples.items():
                if a.ndim:
                    out[n][0] = "batch"
        return out
    for spec in specs:
        target, _, items = spec.rpartition(":") if ":" in spec else ("", "", spec)
        if target and target not in samples:
            raise UsageError(f"--dynamic {spec}: no input named {target!r} (inputs: {', '.join(samples)})")
        names = [target] if target else list(samples)
        for item in (i.strip() for i in items.split(",")):
            if not item or item == "none":
                continue
            dim, eq, axis_text = item.partition("=")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", dim):
                raise UsageError(f"--dynamic {spec}: {dim!r} is not a dimension name")
            if eq:
                try:
                    axis = int(axis_text)
                except ValueError:
                    raise UsageError(f"--dynamic {spec}: axis of {dim!r} must be an integer, got {axis_text!r}") from None
            elif dim.lower() in WELL_KNOWN_AXES:
                axis = WELL_KNOWN_AXES[dim.lower()]
            else:
                raise UsageError(f"--dynamic {spec}: which axis is {dim!r}? write {dim}=AXIS "
                                 f"(well-known names: {', '.join(sorted(WELL_KNOWN_AXES))})")
            placed = False
            for n in names:
                rank = samples[n].ndim
                if -rank <= axis < rank:
                    out[n][axis % rank] = dim
                    placed = True
                elif target:
                    raise UsageError(f"--dynamic {spec}: input {n!r} has rank {rank}, no axis {axis}")
            if not placed:
                raise UsageError(f"--dynamic {spec}: no input has an axis {axis} for {dim!r}")
    return out


def grow(samples: dict[str, np.ndarray], dynamic: dict[str, dict[int, str]]) -> dict[str, np.ndarray]:
    """The samples at a second shape: every dynamic batch axis one longer, every other dynamic axis twice as long.

    The data is the sample's own, repeated, so token ids stay in the vocabulary and masks stay masks; a dim name
    shared by several inputs grows the same way in all of them.
    """
    out = {}
    for name, a in samples.items():
        for axis, dim in sorted(dynamic.get(name, {}).items()):
            size = a.shape[axis]
            if dim == "batch" or axis == 0:
                a = np.concatenate([a, np.take(a, [0], axis=axis)], axis=axis)
            else:
                a = np.concatenate([a] * 2 if size > 1 else [a] * 3, axis=axis)
        out[name] = np.ascontiguousarray(a)
    return out


def _at_least_two(samples: dict[str, np.ndarray], dynamic: dict[str, dict[int, str]]) -> dict[str, np.ndarray]:
    """torch.export specializes dimensions of size 1 (and 0): a dynamic axis is traced at size ≥ 2."""
    out = {}
    for name, a in samples.items():
        for axis in dynamic.get(name, {}):
            if a.shape[axis] < 2:
                a = np.concatenate([a] * 2, axis=axis) if a.shape[axis] else a
        out[name] = np.ascontiguousarray(a)
    return out


def dims_of(value) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


def graph_inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def name_dims(model, dynamic: dict[str, dict[int, str]]) -> None:
    """Rename the exporter's symbols (s77, input_dynamic_axes_1 …) to the declared names, in the inputs and
    wherever else the same symbol appears (output shapes like 2*((s53 - 1)//2) + 2)."""
    rename: dict[str, str] = {}
    for v in graph_inputs(model):
        for axis, d in enumerate(v.type.tensor_type.shape.dim):
            want = dynamic.get(v.name, {}).get(axis)
            if want and d.dim_param and d.dim_param != want:
                rename.setdefault(d.dim_param, want)
    if not rename:
        return
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(rename, key=len, reverse=True)) + r")\b")
    for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if not v.type.HasField("tensor_type"):
            continue
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(lambda m: rename[m.group(1)], d.dim_param)


def check_dims(model, samples: dict[str, np.ndarray], dynamic: dict[str, dict[int, str]]) -> str | None:
    """None when every graph input has the declared dims: a name where dynamic, the sample's size elsewhere."""
    inputs = graph_inputs(model)
    if [v.name for v in inputs] != list(samples):
        return f"graph inputs are {[v.name for v in inputs]}, expected {list(samples)}"
    for v in inputs:
        got = dims_of(v)
        a = samples[v.name]
        want = [dynamic.get(v.name, {}).get(axis, size) for axis, size in enumerate(a.shape)]
        if len(got) != len(want) or any(
                (isinstance(w, str) and not isinstance(g, str)) or (isinstance(w, int) and g != w)
                for g, w in zip(got, want, strict=True)):
            return f"input {v.name!r} was exported with dims {got}, declared {want}"
    return None


def fix_output_dims(model, checks: list[tuple[dict[str, np.ndarray], list[np.ndarray]]],
                    dynamic: dict[str, dict[int, str]]) -> None:
    """An output dim the exporter wrote as a number but that changed between the checked shapes (an LSTM's
    sequence axis, for one) becomes symbolic, named after the dynamic input dim that changed the same way."""
    sizes_of: dict[str, list[int]] = {}
    for name, axes in dynamic.items():
        for axis, dim in axes.items():
            sizes_of.setdefault(dim, [feed[name].shape[axis] for feed, _ in checks])
    for i, v in enumerate(model.graph.output):
        if i >= len(checks[0][1]) or not v.type.HasField("tensor_type"):
            continue
        for axis, d in enumerate(v.type.tensor_type.shape.dim):
            seen = [outs[i].shape[axis] for _, outs in checks if axis < outs[i].ndim]
            if d.HasField("dim_value") and any(s != d.dim_value for s in seen):
                d.dim_param = next((n for n, sizes in sizes_of.items() if sizes == seen), f"{v.name}_dim{axis}")


def _flatten(obj) -> list:
    if isinstance(obj, (tuple, list)):
        return [x for o in obj for x in _flatten(o)]
    if isinstance(obj, dict):
        return [x for o in obj.values() for x in _flatten(o)]
    return [obj]


def _torch_outputs(module, samples: dict[str, np.ndarray]) -> list[np.ndarray]:
    torch = _require("torch")
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in samples.values()]
    with torch.no_grad():
        result = module(*tensors)
    return [t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t) for t in _flatten(result)]


def _describe(samples: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{n} {list(a.shape)} {a.dtype}" for n, a in samples.items())


def export_torch(module, samples: dict[str, np.ndarray] | np.ndarray, dest: Path, *, opset: int = DEFAULT_OPSET,
                 dynamic: dict[str, dict[int, str]] | None = None, output_names: list[str] | None = None,
                 input_name: str = "input", output_name: str = "output", dynamic_batch: bool = True,
                 atol: float = 1e-4) -> dict[str, Any]:
    """Export `module` called as module(*samples.values()); the file is written only if it passes onnx.checker,
    has the declared input dims and matches torch's outputs (at two shapes when an axis is dynamic)."""
    torch = _require("torch")
    if isinstance(samples, np.ndarray):  # the single-input form
        samples = {input_name: samples}
    samples = {n: np.ascontiguousarray(a) for n, a in samples.items()}
    if dynamic is None:
        dynamic = parse_dynamic([], samples, default_batch=dynamic_batch)
    try:
        expected = _torch_outputs(module, samples)
    except Exception as exc:
        raise UsageError(f"the model cannot run on the sample input(s) ({_describe(samples)}): "
                         f"{type(exc).__name__}: {first_line(exc)}") from None
    if not expected:
        raise UsageError("the model returns no tensors")
    if output_names is None:
        output_names = [output_name] if len(expected) == 1 else [f"{output_name}_{i}" for i in range(len(expected))]
    elif len(output_names) != len(expected):
        raise UsageError(f"--output-name gives {len(output_names)} name(s), the model returns {len(expected)} tensors")
    checks = [(samples, expected)]
    if any(dynamic.values()):
        second = grow(samples, dynamic)
        try:
            checks.append((second, _torch_outputs(module, second)))
        except Exception as exc:
            raise UsageError(f"the model itself cannot run at a second shape of the declared dynamic axes "
                             f"({_describe(second)}): {first_line(exc)}; declare only the axes that can vary") from None
    traced = _at_least_two(samples, dynamic)
    args = tuple(torch.from_numpy(a) for a in traced.values())
    names = list(samples)
    is_script = isinstance(module, torch.jit.ScriptModule)
    # The dynamo exporter is the supported path; TorchScript modules, graphs it cannot trace and exports that
    # fail the checks below fall back to the legacy TorchScript exporter.
    attempts = ([] if is_script else ["dynamo"]) + ["legacy"]
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-export-") as tmp:
        for kind in attempts:
            out = Path(tmp) / f"{kind}.onnx"
            try:
                with quiet():
                    if kind == "dynamo":
                        shapes = tuple({axis: torch.export.Dim.DYNAMIC for axis in dynamic.get(n, {})} or None
                                       for n in names)
                        torch.onnx.export(module, args, str(out), dynamo=True, opset_version=opset, input_names=names,
                                          output_names=output_names, verbose=False,
                                          dynamic_shapes=shapes if any(dynamic.values()) else None)
                    else:
                        torch.onnx.export(module, args, str(out), dynamo=False, opset_version=opset, input_names=names,
                                          output_names=output_names,
                                          dynamic_axes={n: dict(d) for n, d in dynamic.items() if d} or None)
                model = load_model(out)  # onnx.checker runs here
            except UsageError as exc:
                errors.append(f"{kind}: {exc}")
                continue
            except Exception as exc:
                errors.append(f"{kind}: {first_line(exc)}")
                log.debug("export with %s failed", kind, exc_info=True)
                continue
            name_dims(model, dynamic)
            problem = check_dims(model, samples, dynamic)
            if problem is None:
                try:
                    diff = max(_compare(model, feed, want, atol) for feed, want in checks)
                except UsageError as exc:
                    problem = str(exc)
            if problem:
                errors.append(f"{kind}: {problem}")
                continue
            fix_output_dims(model, checks, dynamic)
            save_atomic(model, dest)
            return {"output": str(dest), "exporter": kind, "opset": opset_of(model), "max_abs_diff": diff,
                    "inputs": [{"name": v.name, "dtype": _dtype(v), "shape": dims_of(v)} for v in graph_inputs(model)],
                    "outputs": [{"name": v.name, "dtype": _dtype(v), "shape": dims_of(v)} for v in model.graph.output],
                    "checked_shapes": [{n: list(a.shape) for n, a in feed.items()} for feed, _ in checks],
                    "fallback_reasons": errors}
    raise UsageError(f"torch export failed ({'; '.join(errors)})")


def opset_of(model) -> int:
    """The file's own default-domain opset (the dynamo exporter may raise what was asked for)."""
    return opset(model)


def _dtype(value) -> str:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)).name


# ---- scikit-learn --------------------------------------------------------------------------------------------

def export_sklearn(path: Path, dest: Path, *, n_features: int | None = None, sample: np.ndarray | None = None,
                   opset: int = DEFAULT_OPSET, atol: float = 1e-4) -> dict[str, Any]:
    """A pickled (or joblib) scikit-learn estimator → ONNX with input `input` float32 batch×n_features.

    Classifiers get two outputs, `label` (int64) and `probabilities` (float32 batch×classes, no ZipMap), so
    evaluation and devices read plain tensors.
    """
    skl2onnx = _require("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType

    try:
        with open(path, "rb") as f:
            est = pickle.load(f)  # the user's own estimator file: pickle is how scikit-learn models are saved
    except Exception as exc:
        raise UsageError(f"{path}: not a pickled scikit-learn estimator ({first_line(exc)})") from None
    if not hasattr(est, "predict"):
        raise UsageError(f"{path}: holds a {type(est).__name__}, not a fitted scikit-learn estimator")
    fitted = getattr(est, "n_features_in_", None)
    if n_features is not None and fitted is not None and n_features != fitted:
        raise UsageError(f"--n-features {n_features}, but the estimator was fitted on {fitted} features")
    n = n_features or fitted
    if not n:
        raise UsageError(f"{path}: cannot tell the number of features; give --n-features")
    if sample is not None and (sample.ndim != 2 or sample.shape[1] != n):
        raise UsageError(f"the sample has shape {list(sample.shape)}, the estimator takes batch×{n}")
    is_classifier = hasattr(est, "predict_proba")
    try:
        with quiet():
            onx = skl2onnx.convert_sklearn(est, initial_types=[("input", FloatTensorType([None, int(n)]))],
                                           target_opset={"": opset, "ai.onnx.ml": 3},
                                           options={"zipmap": False} if is_classifier else None,
                                           final_types=None)
    except Exception as exc:
        raise UsageError(f"skl2onnx cannot convert {type(est).__name__}: {first_line(exc)}") from None
    if is_classifier and len(onx.graph.output) == 2:
        # skl2onnx calls them label / probabilities; say so whatever version made them.
        _rename_output(onx, onx.graph.output[1].name, "probabilities")
    with tempfile.TemporaryDirectory(prefix="edgefleet-export-") as tmp:
        out = Path(tmp) / "model.onnx"
        out.write_bytes(onx.SerializeToString())
        model = load_model(out)
    if sample is None:
        sample = np.random.default_rng(0).normal(size=(8, int(n)))
    sample = np.asarray(sample, np.float32)
    try:
        expected = est.predict_proba(sample) if is_classifier else est.predict(sample)
    except Exception as exc:
        raise UsageError(f"the estimator cannot predict on the sample: {first_line(exc)}") from None
    index = 1 if is_classifier and len(model.graph.output) > 1 else 0
    diff = _compare(model, {"input": sample}, [np.asarray(expected, np.float32)], atol, only=index)
    save_atomic(model, dest)
    return {"output": str(dest), "exporter": "skl2onnx", "opset": opset_of(model), "estimator": type(est).__name__,
            "max_abs_diff": diff, "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", int(n)]}],
            "outputs": [{"name": v.name, "dtype": _dtype(v), "shape": dims_of(v)} for v in model.graph.output]}


def _rename_output(model, old: str, new: str) -> None:
    if old == new:
        return
    for node in model.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    for v in model.graph.output:
        if v.name == old:
            v.name = new


def _compare(model, feed: dict[str, np.ndarray], expected: list[np.ndarray], atol: float, only: int | None = None) -> float:
    """Largest |onnx - source| over the outputs; floats within atol + 1e-3·max|expected|, others exactly."""
    from .session import create as create_session

    try:
        got = create_session(model.SerializeToString()).run(None, feed)
    except Exception as exc:
        raise UsageError(f"the exported model does not run in onnxruntime on {_describe(feed)}: {first_line(exc)}") from None
    if only is not None:
        got = [got[only]]
    elif len(got) != len(expected):
        raise UsageError(f"the exported model gives {len(got)} outputs, the source {len(expected)}")
    worst = 0.0
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        g, e = np.asarray(g), np.asarray(e)
        if g.shape != e.shape and g.size == e.size and only is not None:
            g = g.reshape(e.shape)
        if g.shape != e.shape:
            raise UsageError(f"output {i} has shape {list(g.shape)} at inputs {_describe(feed)}, the source gives "
                             f"{list(e.shape)}")
        if not np.issubdtype(e.dtype, np.floating):
            if not np.array_equal(g, e):
                raise UsageError(f"output {i} ({e.dtype}) differs from the source at inputs {_describe(feed)}")
            continue
        diff = float(np.max(np.abs(g.astype(np.float64) - e))) if e.size else 0.0
        tol = atol + 1e-3 * (float(np.max(np.abs(e))) if e.size else 0.0)
        if not diff <= tol:
            raise UsageError(f"exported model disagrees with the source at inputs {_describe(feed)}: "
                             f"output {i} max |diff| {diff:.3g} > {tol:.3g}")
        worst = max(worst, diff)
    return worst

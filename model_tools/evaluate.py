"""Accuracy and latency of one model variant, measured here, on this hardware.

Accuracy is scored against labels when the data has them (top-1, 1 - character error rate, detection F1
from IoU-matched recall and precision), and otherwise against the fp32 model's own outputs on the same
inputs, decoded the same way. Every metric is "higher is better", in [0, 1], so `tune` can compare
variants of any task with one number: `accuracy`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import calibration as calib
from .errors import UsageError
from .optimize import first_line
from .session import create as create_session

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider", "openvino": "OpenVINOExecutionProvider",
                    "dml": "DmlExecutionProvider", "coreml": "CoreMLExecutionProvider"}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider", "ROCMExecutionProvider")


def provider_name(p: str) -> str:
    return PROVIDER_ALIASES.get(p.lower(), p)


def session(model: Path | bytes, provider: str = "CPUExecutionProvider", threads: int = 1):
    """An onnxruntime session that really runs on `provider` (no silent fallback to CPU)."""
    import onnxruntime as ort

    provider = provider_name(provider)
    if provider not in ort.get_available_providers():
        raise UsageError(f"execution provider {provider} is not available here "
                         f"(available: {', '.join(ort.get_available_providers())})")
    try:
        sess = create_session(model, provider=provider, threads=threads)
    except Exception as exc:
        msg = first_line(exc)
        op = re.search(r"implementation for (\w+)\((\d+)\)", msg) or re.search(r"([\w.]*:?\w+)\((-?\d+)\) is not a registered", msg)
        if op:
            raise UsageError(f"op {op.group(1)} (opset {op.group(2)}) is not supported by {provider}") from None
        raise UsageError(f"{model if isinstance(model, Path) else 'model'}: cannot be loaded by {provider}: {msg}") from None
    used = sess.get_providers()[0]
    if used != provider:
        raise UsageError(f"onnxruntime fell back from {provider} to {used}")
    return sess


def as_array(value) -> np.ndarray:
    """An output as an array; a sequence of maps (skl2onnx's ZipMap: [{class: probability}, …]) becomes
    batch × classes, columns in the classes' order."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = list(value[0])
        return np.asarray([[row[k] for k in keys] for row in value], np.float32)
    return np.asarray(value)


def run(sess, data: dict[str, np.ndarray], batch: int = 32) -> list[np.ndarray]:
    """All outputs over the whole data, in batches (models with a fixed batch of 1 get batch 1)."""
    fixed_one = any(i.shape and i.shape[0] == 1 for i in sess.get_inputs())
    batch = 1 if fixed_one else batch
    outs: list[list[np.ndarray]] = []
    for chunk in calib.batches(data, batch):
        try:
            res = sess.run(None, chunk)
        except Exception as exc:
            raise UsageError(f"the model cannot run on this data: {first_line(exc)}") from None
        outs.append([as_array(o) for o in res])
    return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]


# ---- which output is scored ---------------------------------------------------------------------------

PROBABILITY_NAMES = re.compile(r"prob|softmax", re.IGNORECASE)
SCORE_NAMES = re.compile(r"logit|score|output", re.IGNORECASE)


def classification_output(names: list[str], outputs: list[np.ndarray]) -> int:
    """The output a classifier is scored on: class probabilities (or logits), else predicted class ids.

    A scikit-learn model converted by skl2onnx gives `label` (int64) first and `probabilities` (or ZipMap's
    `output_probability`) second; argmax over the first would score the label ids themselves.
    """
    scores = [i for i, o in enumerate(outputs)
              if np.issubdtype(o.dtype, np.floating) and o.ndim >= 2 and int(np.prod(o.shape[1:])) > 1]
    for pattern in (PROBABILITY_NAMES, SCORE_NAMES):
        named = [i for i in scores if pattern.search(names[i])]
        if named:
            return named[0]
    if scores:
        return scores[0]
    ids = [i for i, o in enumerate(outputs) if np.issubdtype(o.dtype, np.integer) and o.ndim <= 2
           and int(np.prod(o.shape[1:])) == 1]
    if ids:
        return ids[0]
    raise UsageError(f"no output looks like class scores or class ids ({', '.join(names)}); choose one with --output")


def select(task: str, names: list[str], outputs: list[np.ndarray], wanted: str | None = None) -> tuple[list[np.ndarray], str | None]:
    """→ (the outputs the task decodes, the name of the scored output when there is one)."""
    if wanted:
        if wanted not in names:
            raise UsageError(f"the model has no output named {wanted!r}; it has {', '.join(names)}")
        i = names.index(wanted)
        return [outputs[i]], wanted
    if task in ("classification", "ocr-orientation"):
        i = classification_output(names, outputs)
        return [outputs[i]], names[i]
    return outputs, None


# ---- decoding and scoring per task --------------------------------------------------------------------

def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(pred: list[str], truth: list[str]) -> float:
    errors = sum(_edit_distance(p, t) for p, t in zip(pred, truth, strict=True))
    return errors / max(1, sum(len(t) for t in truth))


def decode(task: str, outputs: list[np.ndarray], labels: list[str], extra: dict[str, Any]):
    """Raw outputs → what the task is scored on (classes, strings, boxes, masks)."""
    if task in ("classification", "ocr-orientation"):
        out = outputs[0]
        if np.issubdtype(out.dtype, np.integer):  # class ids already (a scikit-learn `label` output)
            return out.reshape(len(out))
        return out.reshape(len(out), -1).argmax(1)
    if task == "ocr-recognition":
        from .zoo.ppocr import ctc_decode

        return ctc_decode(outputs[0], labels)
    if task == "detection" and extra.get("decoder") == "blazeface":
        from .detection import decode_blazeface

        return decode_blazeface(outputs[0], outputs[1], extra)
    if task == "ocr-detection":
        return outputs[0] > float(extra.get("threshold", 0.3))
    return outputs


def score(task: str, pred, truth) -> dict[str, float | str]:
    """Compare decoded predictions with decoded truth (labels, or the fp32 model's decodes)."""
    if task in ("classification", "ocr-orientation"):
        return {"accuracy": float(np.mean(np.asarray(pred) == np.asarray(truth))), "metric": "top1"}
    if task == "ocr-recognition":
        c = cer(list(pred), [str(t) for t in truth])
        exact = float(np.mean([p == str(t) for p, t in zip(pred, truth, strict=True)]))
        return {"accuracy": max(0.0, 1.0 - c), "cer": c, "exact": exact, "metric": "1-cer"}
    if task == "detection":
        from .detection import match

        m = match(pred, truth, 0.5)
        f1 = 2 * m["recall"] * m["precision"] / max(1e-9, m["recall"] + m["precision"])
        return {"accuracy": f1, **m, "metric": "f1@iou0.5"}
    if task == "ocr-detection":
        inter = np.logical_and(pred, truth).sum()
        union = np.logical_or(pred, truth).sum()
        return {"accuracy": float(inter / union) if union else 1.0, "metric": "mask-iou"}
    # Anything else: closeness to the reference outputs, 1 at identical.
    errs = [float(np.max(np.abs(p.astype(np.float64) - t)) / (np.max(np.abs(t)) + 1e-9)) for p, t in zip(pred, truth, strict=True)]
    return {"accuracy": max(0.0, 1.0 - max(errs)), "max_rel_error": max(errs), "metric": "1-max-rel-error"}


def labels_of(task: str, eval_npz: dict[str, np.ndarray]):
    """The labels an evaluation .npz carries for `task`, or None (then the fp32 outputs are the reference)."""
    if task in ("classification", "ocr-orientation") and "y" in eval_npz:
        return eval_npz["y"]
    if task == "ocr-recognition" and "text" in eval_npz:
        return [str(t) for t in eval_npz["text"]]
    if task == "detection" and "boxes" in eval_npz:
        return [b[~np.isnan(b[:, 0])] for b in eval_npz["boxes"]]
    return None


def predict(model: Path, data: dict[str, np.ndarray], *, task: str, labels: list[str], extra: dict[str, Any],
            output: str | None = None):
    """→ (decoded predictions, name of the scored output or None)."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    outs, name = select(task, names, run(sess, data), output)
    return decode(task, outs, labels, extra), name


def accuracy(model: Path, data: dict[str, np.ndarray], *, task: str, labels: list[str], extra: dict[str, Any],
             truth=None, reference: Path | None = None, output: str | None = None) -> dict[str, Any]:
    """Score `model` on `data` against `truth`, or against `reference`'s (the fp32 model's) outputs."""
    pred, name = predict(model, data, task=task, labels=labels, extra=extra, output=output)
    against = "labels"
    if truth is None:
        if reference is None:
            raise UsageError("no labels in the data and no reference model to compare with")
        truth, _ = predict(reference, data, task=task, labels=labels, extra=extra, output=output)
        against = "reference"
    if truth is not None and hasattr(truth, "__len__") and hasattr(pred, "__len__") and len(truth) != len(pred):
        raise UsageError(f"the data has {len(truth)} labels for {len(pred)} predictions")
    result = {**score(task, pred, truth), "against": against, "samples": len(next(iter(data.values())))}
    if name:
        result["output"] = name
    return result


# ---- latency ------------------------------------------------------------------------------------------

def latency(model: Path, sample: dict[str, np.ndarray], *, provider: str = "CPUExecutionProvider", threads: int = 1,
            batch: int = 1, runs: int = 50, warmup: int = 5, max_seconds: float = 10.0) -> dict[str, Any] | None:
    """p50/p95/p99 in milliseconds of `session.run` at `batch`; None when the model has a fixed other batch."""
    sess = session(model, provider, threads)
    first = sess.get_inputs()[0].shape
    if batch > 1 and first and isinstance(first[0], int) and first[0] != batch:
        return None
    n = len(next(iter(sample.values())))
    feed = {k: np.concatenate([v] * int(np.ceil(batch / n)))[:batch] for k, v in sample.items()}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() > deadline and len(times) >= 5:
            break
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"provider": provider_name(provider), "threads": threads, "batch": batch, "runs": len(times),
            "p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4), "p99_ms": round(float(p99), 4),
            "per_item_p50_ms": round(float(p50) / batch, 4)}


def evaluate(model: Path, data: dict[str, np.ndarray], *, task: str, labels: list[str] | None = None,
             extra: dict[str, Any] | None = None, truth=None, reference: Path | None = None,
             providers: list[str] | None = None, threads: list[int] | None = None, batches: list[int] | None = None,
             runs: int = 50, progress: Callable[[str], None] | None = None, output: str | None = None) -> dict[str, Any]:
    """Accuracy once, then latency for every provider × thread count × batch size."""
    providers = [provider_name(p) for p in (providers or ["CPUExecutionProvider"])]
    threads = threads or [1]
    batches = batches or [1, 8]
    if progress:
        progress("accuracy")
    report: dict[str, Any] = {
        "model": str(model),
        "size_bytes": os.path.getsize(model),
        "accuracy": accuracy(model, data, task=task, labels=labels or [], extra=extra or {}, truth=truth,
                             reference=reference, output=output),
        "latency": [],
    }
    sample = {k: v[:1] for k, v in data.items()}
    for p in providers:
        for t in threads:
            for b in batches:
                if progress:
                    progress(f"latency {p} threads={t} batch={b}")
                res = latency(model, sample, provider=p, threads=t, batch=b, runs=runs)
                if res:
                    report["latency"].append(res)
    return report

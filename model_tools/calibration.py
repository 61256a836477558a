"""Calibration and evaluation inputs: an .npz of arrays, or a folder of images with the model's preprocessing.

Whatever the source, the arrays are checked against the model's declared inputs (rank, fixed dimensions,
dtype) before any quantizer sees them, so a mismatch is one clear line instead of a stack trace from deep
inside onnxruntime.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def model_inputs(model) -> list[tuple[str, np.dtype, list[int | str]]]:
    """(name, dtype, dims) of the graph inputs that are not initializers; unknown dims are strings."""
    from onnx import helper

    inits = {i.name for i in model.graph.initializer}
    out = []
    for v in model.graph.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        out.append((v.name, np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims))
    return out


def preprocess_image(bgr: np.ndarray, pre: dict[str, Any], hw: tuple[int, int]) -> np.ndarray:
    """One image (as cv2 reads it) → C×H×W or H×W×C float32, following fleet_protocol's Preprocessing."""
    import cv2

    color = pre.get("color", "RGB")
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    img = {"RGB": lambda a: cv2.cvtColor(a, cv2.COLOR_BGR2RGB), "BGR": lambda a: a,
           "GRAY": lambda a: cv2.cvtColor(a, cv2.COLOR_BGR2GRAY)[..., None]}[color](bgr)
    h, w = hw
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    if img.ndim == 2:
        img = img[..., None]
    x = img.astype(np.float32) * float(pre.get("scale", 1.0))
    if pre.get("mean"):
        x = x - np.asarray(pre["mean"], np.float32)
    if pre.get("std"):
        x = x / np.asarray(pre["std"], np.float32)
    return x.transpose(2, 0, 1) if pre.get("layout", "NCHW") == "NCHW" else x


def load_images(folder: Path, inputs: list, pre: dict[str, Any] | None, limit: int | None = None) -> dict[str, np.ndarray]:
    import cv2

    if len(inputs) != 1:
        raise UsageError(f"{folder}: an image folder can only feed a model with one input; this one has {len(inputs)}")
    name, _, dims = inputs[0]
    pre = dict(pre or {})
    layout = pre.get("layout", "NCHW")
    if len(dims) != 4:
        raise UsageError(f"{folder}: model input {name!r} has rank {len(dims)}, images need a rank-4 input")
    hdim, wdim = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])
    if pre.get("size"):
        w, h = pre["size"]
    elif isinstance(hdim, int) and isinstance(wdim, int):
        h, w = hdim, wdim
    else:
        raise UsageError(f"{folder}: model input {name!r} has no fixed height/width; give the preprocessing size")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{folder}: calibration folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    files = files[:limit] if limit else files
    arrays = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise UsageError(f"{f}: not a readable image")
        arrays.append(preprocess_image(img, pre, (h, w)))
    return {name: np.stack(arrays).astype(np.float32)}


def load_npz(path: Path, inputs: list, limit: int | None = None) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable .npz file ({exc})") from None
    names = [n for n, _, _ in inputs]
    picked = {n: data[n] for n in names if n in data}
    if len(picked) < len(names):
        # Our own zoo data names the model input "x"; a single-input model may take any single array.
        if len(names) == 1 and "x" in data:
            picked = {names[0]: data["x"]}
        elif len(names) == 1 and len(data) == 1:
            picked = {names[0]: next(iter(data.values()))}
        else:
            missing = [n for n in names if n not in data]
            raise UsageError(f"{path}: no array for model input(s) {missing}; it has {sorted(data)}")
    if limit:
        picked = {k: v[:limit] for k, v in picked.items()}
    return picked


def load(source: Path, model, *, preprocessing: dict[str, Any] | None = None, limit: int | None = None) -> dict[str, np.ndarray]:
    """Arrays for every model input, batch first, checked against the model; → {input name: array}."""
    source = Path(source)
    inputs = model_inputs(model)
    if source.is_dir():
        data = load_images(source, inputs, preprocessing, limit)
    elif source.is_file():
        data = load_npz(source, inputs, limit)
    else:
        raise UsageError(f"{source}: no such file or folder")
    check(data, inputs, source)
    return data


def check(data: dict[str, np.ndarray], inputs: list, source: Path | str) -> None:
    for name, dtype, dims in inputs:
        arr = np.asarray(data[name])
        if arr.ndim != len(dims):
            raise UsageError(f"{source}: {name!r} has shape {list(arr.shape)}, the model wants rank {len(dims)} {dims}")
        if arr.ndim and len(arr) == 0:
            raise UsageError(f"{source}: the data for {name!r} is empty")
        for axis, (have, want) in enumerate(zip(arr.shape, dims, strict=True)):
            if isinstance(want, int) and want > 0 and have != want and not (axis == 0 and want == 1):
                raise UsageError(f"{source}: {name!r} has shape {list(arr.shape)}, the model wants {dims}")
        if arr.dtype != dtype and not (np.issubdtype(arr.dtype, np.floating) and np.issubdtype(dtype, np.floating)):
            raise UsageError(f"{source}: {name!r} is {arr.dtype}, the model wants {dtype}")
        data[name] = arr.astype(dtype, copy=False)


def batches(data: dict[str, np.ndarray], size: int = 1) -> Iterable[dict[str, np.ndarray]]:
    n = len(next(iter(data.values())))
    for start in range(0, n, size):
        yield {k: v[start:start + size] for k, v in data.items()}


class Reader:
    """onnxruntime's CalibrationDataReader over in-memory arrays, one sample at a time."""

    def __init__(self, data: dict[str, np.ndarray], progress=None):
        self._data = data
        self._iter = iter(batches(data, 1))
        self._progress = progress

    def get_next(self):
        item = next(self._iter, None)
        if item is not None and self._progress:
            self._progress()
        return item

    def rewind(self) -> None:
        self._iter = iter(batches(self._data, 1))

    def __len__(self) -> int:
        return len(next(iter(self._data.values())))

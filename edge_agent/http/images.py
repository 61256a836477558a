"""Encoded images as model inputs: a client (a camera box, a browser, curl) sends JPEG or PNG bytes, and the
agent decodes and preprocesses them itself, as the bundle's manifest says.

A 640×480 JPEG is ~50 kB; the same frame as a 1×3×128×128 float tensor is 196 kB of binary or ~1 MB of JSON,
and the client would need the model's exact preprocessing. A JPEG much larger than the model's input is
decoded by libjpeg straight to 1/2, 1/4 or 1/8 of its size.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..preprocess import REDUCED, Preprocessor, jpeg_size
from ..runtime.errors import InputError
from ..runtime.model import LoadedModel


class ImageInputs:
    """Turns BYTES inputs into the tensors the model takes; one preprocessor per model version, built on first use."""

    def __init__(self) -> None:
        self._pre: dict[str, Preprocessor] = {}

    @staticmethod
    def wanted(inputs: dict[str, np.ndarray]) -> bool:
        return any(a.dtype == object for a in inputs.values())

    def convert(self, model: LoadedModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(inputs)
        for name, array in inputs.items():
            if array.dtype != object:
                continue
            info = model.inputs.get(name)
            if info is None:
                raise InputError(f"unknown input {name!r}; the model takes {list(model.inputs)}")
            if len(info.shape) != 4 or info.dtype != np.float32:
                raise InputError(f"input {name!r} takes {info.dtype.name} {info.shape_text}, not encoded images")
            pre = self._preprocessor(model, info.shape)
            tensors = [pre(*_decode(name, i, blob, pre))[0] for i, blob in enumerate(array.ravel())]
            out[name] = np.concatenate(tensors) if len(tensors) > 1 else tensors[0]
        return out

    def _preprocessor(self, model: LoadedModel, shape: tuple) -> Preprocessor:
        pre = self._pre.get(model.sha256)
        if pre is None:
            try:
                pre = Preprocessor(model.stored.manifest.preprocessing, shape)
            except ValueError as exc:
                raise InputError(f"this model cannot take encoded images: {exc}") from None
            if len(self._pre) >= 64:  # models come and go: never grow without bound
                self._pre.clear()
            self._pre[model.sha256] = pre
        return pre


def _decode(name: str, index: int, blob: bytes, pre: Preprocessor) -> tuple[np.ndarray, tuple[int, int]]:
    """→ (image, its full size). A JPEG is decoded only as large as the model needs (libjpeg's scaled decode)."""
    raw = np.frombuffer(blob, np.uint8)
    size = jpeg_size(blob)
    scale = pre.decode_scale(size) if size else 1
    image = cv2.imdecode(raw, REDUCED.get(scale, cv2.IMREAD_COLOR)) if raw.size else None
    if image is None:
        raise InputError(f"input {name!r}: element {index} is not a decodable image (JPEG, PNG, BMP …)")
    return image, size or (image.shape[1], image.shape[0])

"""Captured samples as a device makes them: real JPEGs (cv2) or .npy tensors, in the contract's envelope."""

from __future__ import annotations

import io
import time
import uuid
from typing import Any

import cv2
import numpy as np

from fleet_protocol import capture


def jpeg(seed: int = 0, width: int = 160, height: int = 120) -> bytes:
    """A real photo-like JPEG: a gradient with a few shapes, different for each seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // width), (y * 255 // height), np.full_like(x, 40 + 20 * (seed % 8))], -1).astype(np.uint8)
    for _ in range(3):
        cx, cy, r = int(rng.integers(20, width - 20)), int(rng.integers(20, height - 20)), int(rng.integers(8, 25))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.circle(img, (cx, cy), r, color, -1)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


def npy(shape: tuple[int, ...] = (1, 1, 8, 8)) -> bytes:
    out = io.BytesIO()
    np.save(out, np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape))
    return out.getvalue()


def sample(data: bytes | None = None, **fields: Any) -> tuple[capture.Sample, bytes]:
    data = jpeg() if data is None else data
    defaults: dict[str, Any] = {
        "id": uuid.uuid4().hex, "model": "digits", "version": "1.0.0", "camera": "door", "taken_at": time.time(),
        "reason": "low_confidence", "confidence": 0.31, "outputs": {"label": "7", "score": 0.31},
        "content_type": "image/jpeg", "width": 160, "height": 120}
    if data[:6] == b"\x93NUMPY":
        defaults.update(content_type="application/x-npy", width=None, height=None, camera=None)
    return capture.describe(data, **{**defaults, **fields}), data


def packed(data: bytes | None = None, **fields: Any) -> tuple[capture.Sample, bytes]:
    header, body = sample(data, **fields)
    return header, capture.pack(header, body)

"""Box geometry, one place for the agent: IoU and greedy one-to-one matching (x1, y1, x2, y2 in the first four
columns). The golden check, the shadow comparison and the camera's NMS all use it."""

from __future__ import annotations

import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N×4+) with every box in b (M×4+) → N×M."""
    a = np.asarray(a, np.float64)[:, None, :4]
    b = np.asarray(b, np.float64)[None, :, :4]
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def greedy_matches(a: np.ndarray, b: np.ndarray, threshold: float) -> int:
    """How many boxes of `a`, each in turn taking its best still-free box of `b`, overlap it by IoU >= threshold."""
    if len(a) == 0 or len(b) == 0:
        return 0
    ious = iou(a, b)
    free = np.ones(len(b), dtype=bool)
    matched = 0
    for row in ious:
        candidates = np.where(free, row, -1.0)
        j = int(np.argmax(candidates))
        if candidates[j] >= threshold:
            free[j] = False
            matched += 1
    return matched

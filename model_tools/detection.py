"""SSD-style box decoding, NMS and IoU matching, in numpy: what evaluation needs to score a detector.

The agent's camera plug-in has its own decoder; this one exists so model_tools can measure recall and
precision of a detector variant without importing edge_agent (the packages never import each other).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def ssd_anchors(*, input_size: int, strides: list[int], anchors_per_layer: list[int], offset: float = 0.5) -> np.ndarray:
    """Anchor centres (x, y) in [0, 1], in the order MediaPipe's SsdAnchorsCalculator emits them.

    Consecutive layers with the same stride share one grid, so their anchors are emitted cell by cell
    together (that is why the 16-strides of BlazeFace give 6 anchors per 8×8 cell, not 3 separate grids).
    """
    centres: list[tuple[float, float]] = []
    i = 0
    while i < len(strides):
        stride, per_cell = strides[i], 0
        while i < len(strides) and strides[i] == stride:
            per_cell += anchors_per_layer[i]
            i += 1
        cells = int(np.ceil(input_size / stride))
        for y in range(cells):
            for x in range(cells):
                centres.extend([((x + offset) / cells, (y + offset) / cells)] * per_cell)
    return np.asarray(centres, dtype=np.float32)


def decode_blazeface(regressors: np.ndarray, scores: np.ndarray, extra: dict[str, Any]) -> list[np.ndarray]:
    """Raw BlazeFace outputs (B×896×16, B×896×1) → per image an array K×5 of x1, y1, x2, y2, score (in [0, 1])."""
    cfg = extra["anchors"]
    anchors = ssd_anchors(input_size=cfg["input_size"], strides=cfg["strides"],
                          anchors_per_layer=cfg["anchors_per_layer"], offset=cfg["offset"])
    size = float(cfg["input_size"])
    clip = float(extra.get("score_clipping", 100.0))
    out = []
    for reg, sc in zip(regressors, scores, strict=True):
        prob = 1.0 / (1.0 + np.exp(-np.clip(sc[:, 0].astype(np.float64), -clip, clip)))
        keep = prob >= extra["score_threshold"]
        r, a, p = reg[keep], anchors[keep], prob[keep]
        cx = r[:, 0] / size + a[:, 0]
        cy = r[:, 1] / size + a[:, 1]
        w = r[:, 2] / size
        h = r[:, 3] / size
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, p], axis=1)
        out.append(nms(boxes, extra["nms_iou"]))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (N×4+) and b (M×4+) → N×M."""
    a, b = np.asarray(a, np.float32)[:, None, :4], np.asarray(b, np.float32)[None, :, :4]
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def nms(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS on K×5 boxes (score last), highest score first."""
    if len(boxes) == 0:
        return boxes.reshape(0, 5)
    order = np.argsort(-boxes[:, 4])
    boxes = boxes[order]
    kept = []
    alive = np.ones(len(boxes), bool)
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        kept.append(i)
        alive &= iou(boxes[i:i + 1], boxes)[0] < threshold
    return boxes[kept]


def match(pred: list[np.ndarray], truth: list[np.ndarray], iou_threshold: float = 0.5) -> dict[str, float]:
    """Greedy IoU matching per image → recall, precision and the counts behind them."""
    tp = fp = fn = 0
    for p, t in zip(pred, truth, strict=True):
        t = np.asarray(t, np.float32).reshape(-1, 4)
        used = np.zeros(len(t), bool)
        for box in p[np.argsort(-p[:, 4])] if len(p) else []:
            if len(t):
                ious = iou(box[None], t)[0]
                ious[used] = 0
                j = int(ious.argmax())
                if ious[j] >= iou_threshold:
                    used[j] = True
                    tp += 1
                    continue
            fp += 1
        fn += int((~used).sum())
    return {
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "tp": tp, "fp": fp, "fn": fn,
    }

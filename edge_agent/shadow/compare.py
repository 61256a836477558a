"""How much a candidate agrees with the live model on one input, by task.

One small class per kind, chosen by the bundle's task: classification compares top-1, detection the F1 of
IoU-matched boxes, text recognition the characters read; every kind also reports the raw output difference.
A score is in [0, 1]: 1 is full agreement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..boxes import greedy_matches

Outputs = Sequence[np.ndarray]
# Raw outputs → K×5+ boxes (x1, y1, x2, y2, score, …) normalised to the input; the camera's plug-in for the task.
BoxDecoder = Callable[[Outputs], np.ndarray]
# Raw outputs → the text read (CTC decoding for PP-OCR recognition).
TextDecoder = Callable[[Outputs], list[str]]


@dataclass(frozen=True)
class Comparison:
    agreement: float
    max_abs_diff: float
    mean_abs_diff: float


def output_difference(live: Outputs, candidate: Outputs) -> tuple[float, float]:
    """Max and mean |live − candidate| over every output of the same shape (NaN-free; ∞ for mismatched shapes)."""
    worst, total, count = 0.0, 0.0, 0
    for a, b in zip(live, candidate, strict=False):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or not (np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number)):
            return float("inf"), float("inf")
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        if d.size:
            worst = max(worst, float(d.max()))
            total += float(d.sum())
            count += d.size
    return worst, (total / count if count else 0.0)


class Comparer:
    tasks: ClassVar[tuple[str, ...]] = ()

    def agreement(self, live: Outputs, candidate: Outputs) -> float:
        raise NotImplementedError

    def __call__(self, live: Outputs, candidate: Outputs) -> Comparison:
        worst, mean = output_difference(live, candidate)
        return Comparison(self.agreement(live, candidate), worst, mean)


class Top1(Comparer):
    """Share of the batch whose top-1 class is the same (the first output holds the scores)."""

    tasks = ("classification",)

    def agreement(self, live: Outputs, candidate: Outputs) -> float:
        a, b = np.asarray(live[0]), np.asarray(candidate[0])
        if a.shape != b.shape or a.ndim == 0:
            return 0.0
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))


def box_f1(live: np.ndarray, candidate: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of the candidate's boxes against the live model's, greedily matched by IoU (both empty: 1)."""
    live, candidate = np.asarray(live).reshape(-1, live.shape[-1] if live.size else 5), np.asarray(candidate)
    if len(live) == 0 and len(candidate) == 0:
        return 1.0
    if len(live) == 0 or len(candidate) == 0:
        return 0.0
    if candidate.shape[1] > 4:  # the most confident boxes choose first
        candidate = candidate[np.argsort(-candidate[:, 4])]
    tp = greedy_matches(candidate, live, threshold)
    return 2 * tp / (len(live) + len(candidate))


class Boxes(Comparer):
    tasks = ("detection", "ocr-detection")

    def __init__(self, decode: BoxDecoder, iou_threshold: float = 0.5) -> None:
        self.decode = decode
        self.iou_threshold = iou_threshold

    def agreement(self, live: Outputs, candidate: Outputs) -> float:
        return box_f1(self.decode(live), self.decode(candidate), self.iou_threshold)


def char_agreement(a: str, b: str) -> float:
    """1 − Levenshtein distance / longer length (both empty: 1)."""
    if a == b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


class Text(Comparer):
    tasks = ("ocr-recognition",)

    def __init__(self, decode: TextDecoder) -> None:
        self.decode = decode

    def agreement(self, live: Outputs, candidate: Outputs) -> float:
        a, b = self.decode(live), self.decode(candidate)
        if len(a) != len(b):
            return 0.0
        return float(np.mean([char_agreement(x, y) for x, y in zip(a, b, strict=True)])) if a else 1.0


class Closeness(Comparer):
    """For any other model: the share of output values within tolerance of the live model's."""

    tasks = ("other", "regression", "ocr-orientation")

    def __init__(self, atol: float = 1e-3, rtol: float = 1e-2) -> None:
        self.atol, self.rtol = atol, rtol

    def agreement(self, live: Outputs, candidate: Outputs) -> float:
        close, total = 0, 0
        for a, b in zip(live, candidate, strict=False):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if a.shape != b.shape:
                return 0.0
            close += int(np.isclose(b, a, atol=self.atol, rtol=self.rtol).sum())
            total += a.size
        return close / total if total else 1.0


def comparer_for(task: str, *, boxes: BoxDecoder | None = None, text: TextDecoder | None = None) -> Comparer:
    """The task's comparer; detection and text need their decoder, else the generic closeness is used."""
    if task in Top1.tasks:
        return Top1()
    if task in Boxes.tasks and boxes is not None:
        return Boxes(boxes)
    if task in Text.tasks and text is not None:
        return Text(text)
    return Closeness()

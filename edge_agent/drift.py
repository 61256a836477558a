"""What a model sees and how sure it is, as fixed-bin histograms per telemetry window (for drift, centrally).

Cheap on the request path: one max over the scores and one mean over the input, a bincount of one value.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from fleet_protocol.messages import HISTOGRAM_BINS, Histogram


def _unit(x: float) -> float:
    return 0.0 if not np.isfinite(x) else min(1.0, max(0.0, x))


def confidence(task: str, outputs: Sequence[np.ndarray]) -> float | None:
    """How sure the model is of one answer: top-1 probability (softmax when the scores are not already one),
    or the best detection score; None for tasks without a notion of confidence."""
    if not outputs:
        return None
    if task == "classification":
        raw = np.asarray(outputs[0]).reshape(-1)
        if raw.size == 0:
            return None
        if raw.size <= 64:  # plain floats: numpy's per-call cost dwarfs the arithmetic on a few classes
            vals = raw.tolist()
            top, low, total = max(vals), min(vals), sum(vals)
            if low >= 0 and abs(total - 1.0) <= 1e-3:
                return _unit(top)
            if not math.isfinite(top):
                return None
            return _unit(1.0 / sum(math.exp(v - top) for v in vals))
        scores = raw.astype(np.float64)
        if scores.min() < 0 or abs(scores.sum() - 1.0) > 1e-3:
            e = np.exp(scores - scores.max())
            scores = e / e.sum()
        return _unit(float(scores.max()))
    if task == "detection":
        # BlazeFace and most SSDs: the last output holds per-anchor scores (logits or probabilities)
        s = np.asarray(outputs[-1], np.float64).reshape(-1)
        if s.size == 0:
            return None
        best = float(s.max())
        return _unit(1 / (1 + np.exp(-best)) if best > 1 or best < 0 else best)
    return None


def brightness(feeds: Mapping[str, np.ndarray]) -> float | None:
    """Mean of the first floating/uint8 input scaled to [0, 1] by its own range convention."""
    for x in feeds.values():
        a = np.asarray(x)
        if a.dtype == np.uint8:
            return _unit(float(a.mean()) / 255.0)
        if np.issubdtype(a.dtype, np.floating) and a.size:
            m = float(a.mean())
            # models fed in [-1, 1] (BlazeFace) or [0, 1]; anything else is clipped
            return _unit((m + 1) / 2 if a.min() < 0 else m)
    return None


class HistogramWindow:
    """Counts per fixed bin over [0, 1]; `take()` returns the window's histogram and starts a new one."""

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        self.bins = bins
        self._counts = np.zeros(bins, np.int64)
        self._lock = threading.Lock()

    def add(self, value: float | None) -> None:
        if value is None:
            return
        i = min(int(value * self.bins), self.bins - 1)
        with self._lock:
            self._counts[i] += 1

    def take(self) -> Histogram | None:
        with self._lock:
            counts, self._counts = self._counts, np.zeros(self.bins, np.int64)
        return Histogram(counts=[int(c) for c in counts]) if counts.any() else None


class ModelDrift:
    """One model's two histograms for the current telemetry window (kept by the ModelHost per model name).

    Every request is counted until the window holds `full` samples, then one in `every`: a histogram's shape
    (all PSI reads) needs a few hundred samples, and on a fast model the ~15 µs per observation is a share of
    the request worth saving (benchmarks/shadow.py)."""

    def __init__(self, task: str, bins: int = HISTOGRAM_BINS, full: int = 256, every: int = 4) -> None:
        self.task = task
        self.full = full
        self.every = every
        self._seen = 0
        self.confidence = HistogramWindow(bins)
        self.input_mean = HistogramWindow(bins)

    def wants(self) -> bool:
        """Whether the next request is observed (one counter step: the request path asks before doing any work)."""
        self._seen += 1  # a lost increment under a race only shifts which request is sampled
        return self._seen <= self.full or self._seen % self.every == 0

    def observe(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        self.add(feeds, confidence(self.task, outputs))

    def add(self, feeds: Mapping[str, np.ndarray], conf: float | None) -> None:
        """`observe` with the confidence already computed (the tap computes it once for drift and capture)."""
        self.confidence.add(conf)
        self.input_mean.add(brightness(feeds))

    def take(self) -> tuple[Histogram | None, Histogram | None]:
        self._seen = 0
        return self.confidence.take(), self.input_mean.take()

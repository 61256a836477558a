"""Bounded time series per device, kept in memory between evaluations."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .baseline import Baseline


class Series:
    """(time, value) samples in arrival order, at most `maxlen` of them."""

    __slots__ = ("_t", "_v")

    def __init__(self, maxlen: int) -> None:
        self._t: deque[float] = deque(maxlen=maxlen)
        self._v: deque[float] = deque(maxlen=maxlen)

    def add(self, t: float, v: float) -> None:
        if self._t and t < self._t[-1]:
            return  # out of order (a late QoS-0 message): the trend is fitted on a monotone clock
        self._t.append(t)
        self._v.append(v)

    def __len__(self) -> int:
        return len(self._t)

    @property
    def last_t(self) -> float | None:
        return self._t[-1] if self._t else None

    def window(self, now: float, span_s: float, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Samples of the last `span_s` seconds; with more than `max_points`, the means of equal time buckets
        (keeps Theil–Sen's n² pairs affordable; the fit itself is what is robust to outliers)."""
        t = np.fromiter(self._t, float, len(self._t))
        v = np.fromiter(self._v, float, len(self._v))
        keep = (t >= now - span_s) & (t <= now)
        t, v = t[keep], v[keep]
        if max_points is None or len(t) <= max_points:
            return t, v
        # Equal time buckets, each reduced to its mean (vectorised: this runs for every device and evaluation).
        bucket = np.minimum(((t - t[0]) / max(t[-1] - t[0], 1e-9) * max_points).astype(int), max_points - 1)
        n = np.bincount(bucket, minlength=max_points)
        used = n > 0
        bt = np.bincount(bucket, t, minlength=max_points)[used] / n[used]
        bv = np.bincount(bucket, v, minlength=max_points)[used] / n[used]
        return bt, bv


@dataclass
class ModelHistory:
    """One model on one device: its p95 per version (creep) and its baselines (anomalies)."""

    version: str
    p95: Series
    baselines: dict[str, Baseline] = field(default_factory=dict)  # metric → its baseline


@dataclass
class DeviceHistory:
    disk: Series
    memory: Series
    models: dict[str, ModelHistory] = field(default_factory=dict)
    last_seen: float = 0.0

"""A device's own baseline of a metric: EWMA-smoothed values scored by a robust z-score (median and MAD)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

# MAD × this estimates the standard deviation of normal data (what scipy's median_abs_deviation(scale='normal')
# does; called directly here because its argument handling costs 50× the arithmetic, on every message).
MAD_TO_SIGMA = float(1 / norm.ppf(0.75))
# The median and MAD of a few hundred values barely move with one more: recomputed after this many new ones.
REFRESH_EVERY = 8


@dataclass(frozen=True)
class Score:
    value: float  # the raw value of this window
    ewma: float
    median: float  # of the baseline
    mad: float  # normal-consistent MAD of the baseline
    scale: float  # what z is measured in: the MAD, or the floor where the baseline is flatter than that
    z: float
    baseline_n: int

    def view(self) -> dict:
        return {"value": self.value, "ewma": self.ewma, "median": self.median, "mad": self.mad, "scale": self.scale,
                "z": self.z, "baseline_n": self.baseline_n}


# Score's fields as a plain tuple: what add() keeps per message (a frozen dataclass costs 7 object.__setattr__
# calls to build, and only the evaluator, every 30 s, reads the latest one).
_Raw = tuple[float, float, float, float, float, float, int]


class Baseline:
    __slots__ = ("alpha", "min_points", "z_limit", "floor_abs", "floor_rel", "history", "ewma", "_keep", "_raw",
                 "_score", "_stats", "_appended")

    def __init__(self, *, alpha: float, size: int, min_points: int, z_limit: float, floor_abs: float = 0.0,
                 floor_rel: float = 0.0) -> None:
        self.alpha, self.min_points, self.z_limit = alpha, min_points, z_limit
        self.floor_abs, self.floor_rel = floor_abs, floor_rel
        self.history: deque[float] = deque(maxlen=size)
        self.ewma: float | None = None
        self._keep = 1 - alpha  # the same float as computing it per message: the EWMA stays bit for bit
        self._raw: _Raw | None = None  # the latest score's fields
        self._score: Score | None = None  # ... made into a Score when read
        self._stats: tuple[float, float] | None = None  # (median, MAD) of the history, refreshed every REFRESH_EVERY
        self._appended = 0

    @property
    def last(self) -> Score | None:
        """The latest value's score; None while the baseline is still being learnt."""
        if self._score is None and self._raw is not None:
            self._score = Score(*self._raw)
        return self._score

    def update(self, x: float) -> Score | None:
        """Score one new value; None while the baseline is still being learnt."""
        self.add(x)
        return self.last

    def add(self, x: float) -> None:
        """update() without building the Score: what the telemetry path calls, once per message."""
        ewma = self.ewma = x if self.ewma is None else self.alpha * x + self._keep * self.ewma
        history = self.history
        self._score = None
        if len(history) < self.min_points:
            history.append(ewma)
            self._raw = None
            return
        if self._stats is None or self._appended >= REFRESH_EVERY:
            self._stats = median_and_mad(history)
            self._appended = 0
        median, mad = self._stats
        # A perfectly steady baseline (MAD 0, e.g. no errors at all) would make any blip infinitely unusual.
        scale = max(mad, self.floor_abs, self.floor_rel * abs(median), 1e-12)
        z = (ewma - median) / scale
        if z <= self.z_limit:
            history.append(ewma)  # an anomaly never becomes the baseline it is measured against
            self._appended += 1
        self._raw = (x, ewma, median, mad, scale, z, len(history))


def median_and_mad(values: deque[float]) -> tuple[float, float]:
    """The median and the normal-consistent MAD, as numpy.median would give them (the mean of the middle two for an
    even count). numpy's sort, not numpy.median (whose per-call overhead is 5× the sorting of a few hundred
    floats) nor sorted() (2.5× slower at 240 values): the same float64 arithmetic, so the same values bit for bit."""
    ordered = np.fromiter(values, np.float64, len(values))
    ordered.sort()
    median = _median(ordered)
    deviations = np.abs(ordered - median)
    deviations.sort()
    return median, _median(deviations) * MAD_TO_SIGMA


def _median(ordered: np.ndarray) -> float:
    n = len(ordered)
    mid = n // 2
    return float(ordered[mid]) if n % 2 else float((ordered[mid - 1] + ordered[mid]) / 2)

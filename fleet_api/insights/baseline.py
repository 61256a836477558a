"""A device's own baseline of a metric: EWMA-smoothed values scored by a robust z-score (median and MAD)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

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


class Baseline:
    def __init__(self, *, alpha: float, size: int, min_points: int, z_limit: float, floor_abs: float = 0.0,
                 floor_rel: float = 0.0) -> None:
        self.alpha, self.min_points, self.z_limit = alpha, min_points, z_limit
        self.floor_abs, self.floor_rel = floor_abs, floor_rel
        self.history: deque[float] = deque(maxlen=size)
        self.ewma: float | None = None
        self.last: Score | None = None
        self._stats: tuple[float, float] | None = None  # (median, MAD) of the history, refreshed every STALE_AFTER
        self._appended = 0

    def update(self, x: float) -> Score | None:
        """Score one new value; None while the baseline is still being learnt."""
        self.ewma = x if self.ewma is None else self.alpha * x + (1 - self.alpha) * self.ewma
        if len(self.history) < self.min_points:
            self.history.append(self.ewma)
            self.last = None
            return None
        if self._stats is None or self._appended >= REFRESH_EVERY:
            median = _median(sorted(self.history))
            self._stats = (median, _median(sorted([abs(v - median) for v in self.history])) * MAD_TO_SIGMA)
            self._appended = 0
        median, mad = self._stats
        # A perfectly steady baseline (MAD 0, e.g. no errors at all) would make any blip infinitely unusual.
        scale = max(mad, self.floor_abs, self.floor_rel * abs(median), 1e-12)
        z = (self.ewma - median) / scale
        if z <= self.z_limit:
            self.history.append(self.ewma)  # an anomaly never becomes the baseline it is measured against
            self._appended += 1
        self.last = Score(x, self.ewma, median, mad, scale, z, len(self.history))
        return self.last


def _median(ordered: list[float]) -> float:
    """numpy.median's value (the mean of the middle two for an even count), without its per-call overhead, which
    is 5× the sorting of a few hundred floats: this runs on the telemetry path."""
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2

"""Robust trends: Theil–Sen fits and the predicted time a series crosses a threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import theilslopes

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Fit:
    slope: float  # per second
    intercept: float  # value at t0
    low_slope: float  # the slope's confidence interval (CONFIDENCE)
    high_slope: float
    t0: float
    n: int
    span_s: float

    def at(self, t: float) -> float:
        return self.intercept + self.slope * (t - self.t0)

    @property
    def rel_error(self) -> float:
        """Half the confidence interval's width, relative to the slope (inf for a flat fit)."""
        return (self.high_slope - self.low_slope) / 2 / abs(self.slope) if self.slope else float("inf")

    def view(self) -> dict:
        return {"slope_per_h": self.slope * 3600, "low_slope_per_h": self.low_slope * 3600,
                "high_slope_per_h": self.high_slope * 3600, "intercept": self.intercept, "t0": self.t0,
                "n": self.n, "span_s": self.span_s, "confidence": CONFIDENCE}


def resistant_slope(t: np.ndarray, v: np.ndarray) -> float:
    """Tukey's resistant line: the slope between the medians of the first and the last third. O(n), robust,
    used only to skip the O(n²) Theil–Sen fit where no alert could come of it."""
    k = max(1, len(t) // 3)
    dt = np.median(t[-k:]) - np.median(t[:k])
    return float((np.median(v[-k:]) - np.median(v[:k])) / dt) if dt > 0 else 0.0


def fit(t: np.ndarray, v: np.ndarray) -> Fit:
    t0 = float(t[0])
    # Relative time: epoch seconds squared would lose precision in the pairwise slopes.
    r = theilslopes(v, t - t0, alpha=CONFIDENCE)
    return Fit(float(r.slope), float(r.intercept), float(r.low_slope), float(r.high_slope), t0, len(t), float(t[-1] - t0))


@dataclass(frozen=True)
class Crossing:
    fit: Fit
    threshold: float
    level: float  # the fitted value now
    eta_s: float  # seconds from now until the fit crosses the threshold (0: already above)
    eta_range_s: tuple[float, float]  # from the steepest and the flattest slope of the interval

    def at(self, now: float) -> float:
        return now + self.eta_s


def crossing(t: np.ndarray, v: np.ndarray, threshold: float, now: float, *, horizon_s: float, min_points: int,
             min_span_s: float, max_rel_error: float) -> Crossing | None:
    """When the upward trend of (t, v) reaches `threshold`, if it confidently does within `horizon_s`.

    Confident means: the slope's interval is above zero and narrow (`max_rel_error`), and the recent half of the
    window tells the same story (the two slope intervals overlap). A series that just started to fill mixes a
    flat past into the fit and would predict too late; until the window has moved past the change, the halves
    disagree and nothing is predicted."""
    if len(t) < 2 * min_points or t[-1] - t[0] < 2 * min_span_s:
        return None
    need = (threshold - float(np.median(v[-max(1, len(v) // 10):]))) / horizon_s
    if need > 0 and resistant_slope(t, v) < need / 2:
        return None  # nowhere near: not even a slope half of what would cross within the horizon
    f = fit(t, v)
    level = f.at(now)
    if level >= threshold:
        # Already above, by the robust fit rather than by one noisy sample.
        return Crossing(f, threshold, level, 0.0, (0.0, 0.0))
    if f.low_slope <= 0 or f.rel_error > max_rel_error:
        return None  # not confidently rising: noise, a plateau, or too few points to tell
    eta = (threshold - level) / f.slope
    if eta > horizon_s:
        return None
    recent = t >= t[-1] - (t[-1] - t[0]) / 2
    half = fit(t[recent], v[recent])
    if half.low_slope > f.high_slope or half.high_slope < f.low_slope:
        return None  # the trend changed within the window
    return Crossing(f, threshold, level, eta, ((threshold - level) / f.high_slope, (threshold - level) / f.low_slope))

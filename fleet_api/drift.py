"""Drift: how far a device's recent histograms moved from the model version's baseline (population stability index).

PSI = Σ (p − q) · ln(p / q) over the bins, with a small floor so empty bins do not blow up. Usual reading:
< 0.1 stable, 0.1–0.25 moderate shift, > 0.25 a shift worth an alert.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PSI_FLOOR = 1e-4
MODERATE, MAJOR = 0.1, 0.25


def psi(baseline: Sequence[float], recent: Sequence[float]) -> float:
    p = np.asarray(baseline, np.float64)
    q = np.asarray(recent, np.float64)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("psi needs two non-empty histograms with the same bins")
    p = np.maximum(p / p.sum(), PSI_FLOOR)
    q = np.maximum(q / q.sum(), PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def merge(histograms: Sequence[Sequence[int]]) -> list[int]:
    """The sum of several windows' counts (a baseline, or a device's recent windows)."""
    if not histograms:
        return []
    return [int(x) for x in np.sum(np.asarray(histograms, np.int64), axis=0)]

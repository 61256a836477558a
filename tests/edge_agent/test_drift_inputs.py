"""Confidence and input histograms: the numbers drift detection is built on."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.drift import HistogramWindow, brightness, confidence
from fleet_api.drift import psi


def test_confidence_and_brightness_land_in_the_unit_interval():
    assert confidence("classification", [np.array([[0.1, 0.7, 0.2]])]) == pytest.approx(0.7)
    logits = np.array([[2.0, -1.0, 0.5]])
    assert 0.5 < confidence("classification", [logits]) < 1
    assert confidence("other", [logits]) is None
    assert brightness({"x": np.full((1, 3, 4, 4), 255, np.uint8)}) == 1.0
    assert brightness({"x": np.full((1, 3, 4, 4), -1.0, np.float32)}) == 0.0
    w = HistogramWindow()
    for v in (0.0, 0.05, 0.99, 1.0, None):
        w.add(v)
    h = w.take()
    assert h.counts[0] == 2 and h.counts[-1] == 2 and sum(h.counts) == 4
    assert w.take() is None  # a new window starts empty


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    bins = np.linspace(0, 1, 11)
    base = np.histogram(rng.beta(5, 5, 5000), bins)[0]
    same = np.histogram(rng.beta(5, 5, 500), bins)[0]
    dark = np.histogram(rng.beta(2, 8, 500), bins)[0]
    assert psi(base, same) < 0.1
    assert psi(base, dark) > 0.25
    with pytest.raises(ValueError):
        psi([0, 0], [1, 1])

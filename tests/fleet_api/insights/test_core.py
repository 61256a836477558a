"""The statistics and the lifecycle on their own: exact lines, pure noise, transitions, dedup."""

from __future__ import annotations

import numpy as np
import pytest

from fleet_api.insights.alerts import TRANSITIONS, AlertBook, AlertState, Finding, InvalidTransition, Kind, Severity
from fleet_api.insights.baseline import Baseline
from fleet_api.insights.config import Rules
from fleet_api.insights.trend import crossing

ARGS = dict(horizon_s=24 * 3600, min_points=20, min_span_s=1800, max_rel_error=0.1)


def test_a_clean_line_crosses_where_the_arithmetic_says():
    t = np.arange(0, 3 * 3600, 60.0)
    v = 0.5 + 0.04 * t / 3600  # +4 %/h from 50 %
    c = crossing(t, v, 0.9, t[-1], **ARGS)
    assert c is not None and c.eta_s == pytest.approx((0.9 - v[-1]) / 0.04 * 3600, rel=1e-6)
    assert c.eta_range_s[0] <= c.eta_s <= c.eta_range_s[1]


def test_noise_a_plateau_and_a_far_crossing_predict_nothing():
    rng = np.random.default_rng(3)
    t = np.arange(0, 3 * 3600, 60.0)
    assert crossing(t, 0.85 + rng.normal(0, 0.01, len(t)), 0.9, t[-1], **ARGS) is None  # flat, close to the threshold
    assert crossing(t, 0.1 + 0.001 * t / 3600, 0.9, t[-1], **ARGS) is None  # rising, but 800 h away
    assert crossing(t[:10], 0.5 + 0.1 * t[:10] / 3600, 0.9, t[9], **ARGS) is None  # too few points to tell
    # a series that starts filling late in the window: the halves disagree, no premature (too late) prediction
    v = np.where(t < 2 * 3600, 0.5, 0.5 + 0.1 * (t - 2 * 3600) / 3600)
    assert crossing(t, v, 0.9, t[-1], **ARGS) is None


def test_outliers_do_not_bend_the_fit():
    t = np.arange(0, 3 * 3600, 60.0)
    v = 0.5 + 0.04 * t / 3600
    v[::17] += 0.3  # temporary files, one window in 17
    c = crossing(t, v, 0.9, t[-1], **ARGS)
    assert c is not None and c.fit.slope * 3600 == pytest.approx(0.04, rel=0.02)


def test_baseline_scores_against_the_devices_own_median_and_mad():
    b = Baseline(alpha=1.0, size=100, min_points=30, z_limit=6, floor_rel=0.05)
    rng = np.random.default_rng(0)
    scores = [b.update(x) for x in 20 + rng.normal(0, 1, 60)]
    assert scores[0] is None and all(abs(s.z) < 6 for s in scores[30:])
    spike = b.update(40.0)
    assert spike.z > 6 and spike.median == pytest.approx(20, abs=0.5)
    assert 40.0 not in b.history  # the anomaly does not become the baseline


def finding(device="d1", kind=Kind.disk_full):
    return Finding(device, kind, "", Severity.warning, "s", value=0.5, predicted_at=123.0, evidence={"metric": "m"})


def test_lifecycle_pending_firing_resolved_with_one_table():
    assert TRANSITIONS[AlertState.resolved] == frozenset()
    book = AlertBook(Rules(for_s=600, keep_firing_for_s=900))
    [a] = book.apply([finding()], ["d1"], 0)
    assert a.state == AlertState.pending
    [b] = book.apply([finding()], ["d1"], 300)
    assert b is a and a.state == AlertState.pending  # deduplicated: the same alert, still pending
    book.apply([finding()], ["d1"], 600)
    assert a.state == AlertState.firing and a.fired_at == 600 and a.needs_notification
    assert book.apply([], ["d1"], 1200) == [] and a.state == AlertState.firing  # kept firing for a while
    assert book.apply([], ["other"], 5000) == []  # no news from d1 is no news
    [c] = book.apply([], ["d1"], 5000)
    assert c is a and a.state == AlertState.resolved and a.resolved_at == 5000
    with pytest.raises(InvalidTransition):
        a.move(AlertState.firing, 6000)
    [d] = book.apply([finding()], ["d1"], 7000)
    assert d is not a and d.state == AlertState.pending  # a new occurrence is a new alert
    [e] = book.apply([], ["d1"], 7100)
    assert e is d and d.state == AlertState.resolved and d.fired_at is None and not d.needs_notification

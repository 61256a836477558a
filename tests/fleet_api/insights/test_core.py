"""The statistics and the lifecycle on their own: exact lines, pure noise, transitions, dedup."""

from __future__ import annotations

import statistics
from collections import deque

import numpy as np
import pytest

from fleet_api.insights.alerts import TRANSITIONS, AlertBook, AlertState, Finding, InvalidTransition, Kind, Severity
from fleet_api.insights.baseline import MAD_TO_SIGMA, REFRESH_EVERY, Baseline
from fleet_api.insights.config import Rules
from fleet_api.insights.core import Insights
from fleet_api.insights.trend import crossing
from fleet_protocol.messages import Health, ModelTelemetry, Telemetry

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


def _plain_scores(values: list[float], size: int, min_points: int, z_limit: float, alpha: float,
                  floor_abs: float = 0.0, floor_rel: float = 0.0) -> list[tuple | None]:
    """The baseline as first written, sorted lists and all: what Baseline must give bit for bit."""
    history: deque[float] = deque(maxlen=size)
    ewma, stats, appended, out = None, None, 0, []
    for x in values:
        ewma = x if ewma is None else alpha * x + (1 - alpha) * ewma
        if len(history) < min_points:
            history.append(ewma)
            out.append(None)
            continue
        if stats is None or appended >= REFRESH_EVERY:
            median = statistics.median(history)
            stats, appended = (median, statistics.median([abs(v - median) for v in history]) * MAD_TO_SIGMA), 0
        median, mad = stats
        scale = max(mad, floor_abs, floor_rel * abs(median), 1e-12)
        z = (ewma - median) / scale
        if z <= z_limit:
            history.append(ewma)
            appended += 1
        out.append((x, ewma, median, mad, scale, z, len(history)))
    return out


@pytest.mark.parametrize("floors", [{"floor_rel": 0.05}, {"floor_abs": 0.002}])
def test_baseline_scores_are_the_plain_computations_bit_for_bit(floors):
    rng = np.random.default_rng(7)
    values = [float(v) for v in 20 + rng.normal(0, 1, 700)]  # several times the history: values leave it too
    for k in range(100, 700, 37):
        values[k] *= 4  # spikes, some of them anomalies that must stay out of the history
    values[300:320] = [20.0] * 20  # a flat stretch: ties, and a MAD that shrinks to the floor
    b = Baseline(alpha=0.3, size=100, min_points=30, z_limit=6, **floors)
    got = []
    for x in values:
        score = b.update(x)
        assert score is b.last
        got.append(None if score is None else (score.value, score.ewma, score.median, score.mad, score.scale,
                                               score.z, score.baseline_n))
    assert got == _plain_scores(values, 100, 30, 6, 0.3, **floors)
    assert any(s is not None and s[5] > 6 for s in got)  # anomalies were scored


def _window(version: str, p95: float, requests: int = 100, errors: int = 1) -> Telemetry:
    return Telemetry(window_s=60, models={"m": ModelTelemetry(version=version, requests=requests, errors=errors,
                                                                latency_ms_p95=p95)},
                     health=Health(disk_free_bytes=30, disk_total_bytes=100, memory_used_mb=10, memory_total_mb=40))


def test_a_block_is_observed_as_its_messages_one_by_one_and_a_faulty_message_costs_only_itself():
    rng = np.random.default_rng(1)
    blocks = [[(f"d{i}", _window("1" if k < 40 else "2", float(10 + rng.normal(0, 1)))) for i in range(3)]
              for k in range(80)]
    one_by_one, in_blocks = Insights(), Insights()
    for k, block in enumerate(blocks):
        for device_id, message in block:
            one_by_one.observe(device_id, message, 1000.0 + k)
        assert in_blocks.observe_many(block, 1000.0 + k) == []
    assert _state(in_blocks) == _state(one_by_one)

    # a message the validation would have refused, built around it: its arithmetic fails (None / int)
    faulty = Telemetry.model_construct(window_s=60, health=None, models={
        "m": ModelTelemetry.model_construct(version="2", requests=100, errors=None, latency_ms_p95=None)})
    failed = in_blocks.observe_many([("d0", _window("2", 11.0)), ("d1", faulty), ("d2", _window("2", 12.0))], 2000.0)
    assert [(device_id, type(exc)) for device_id, exc in failed] == [("d1", TypeError)]
    latest = {d: in_blocks.devices[d].models["m"].baselines["latency"].last for d in ("d0", "d2")}
    assert {d: s.value for d, s in latest.items() if s is not None} == {"d0": 11.0, "d2": 12.0}  # the others' went on


def _state(insights: Insights) -> list:
    out: list = []
    for device_id, d in sorted(insights.devices.items()):
        out.append((device_id, d.last_seen, list(d.disk._v), list(d.memory._v)))
        for name, mh in sorted(d.models.items()):
            out.append((name, mh.version, list(mh.p95._v)))
            out += [(metric, b.ewma, list(b.history), b.last) for metric, b in sorted(mh.baselines.items())]
    return out

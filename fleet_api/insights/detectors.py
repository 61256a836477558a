"""Detectors: one device's history in, findings out. Pure functions of the history, the rules and `now`."""

from __future__ import annotations

import datetime as dt

import numpy as np

from .alerts import Finding, Kind, Severity
from .config import Rules
from .series import DeviceHistory, ModelHistory, Series
from .trend import crossing, fit, resistant_slope

EXCERPT_POINTS = 60  # samples of the series an alert carries as evidence


def excerpt(t: np.ndarray, v: np.ndarray, n: int = EXCERPT_POINTS) -> dict[str, list[float]]:
    idx = np.unique(np.linspace(0, len(t) - 1, min(n, len(t))).round().astype(int)) if len(t) else np.array([], int)
    return {"t": [round(float(x), 3) for x in t[idx]], "v": [round(float(x), 6) for x in v[idx]]}


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def fill(device_id: str, kind: Kind, what: str, series: Series, threshold: float, now: float, rules: Rules) -> Finding | None:
    t, v = series.window(now, rules.trend_window_s, rules.max_fit_points)
    c = crossing(t, v, threshold, now, horizon_s=rules.horizon_s, min_points=rules.trend_min_points,
                 min_span_s=rules.trend_min_span_s, max_rel_error=rules.max_slope_rel_error)
    if c is None:
        return None
    at = c.at(now)
    if c.eta_s == 0:
        summary = f"{what} of {device_id} is {c.level:.1%} used, above the {threshold:.0%} threshold"
    else:
        summary = (f"{what} of {device_id} will be {threshold:.0%} used in {hours(c.eta_s)} (at {iso(at)}; now "
                   f"{c.level:.1%}, {c.fit.slope * 3600:+.2%}/h)")
    severity = Severity.critical if c.eta_s < 2 * 3600 else Severity.warning
    return Finding(device_id, kind, "", severity, summary, value=c.level, predicted_at=at, evidence={
        "metric": f"{what}_used_ratio", "threshold": threshold, "level": c.level, "eta_s": c.eta_s,
        "eta_range_s": list(c.eta_range_s), "predicted_at": at, "fit": c.fit.view(), "series": excerpt(t, v),
    })


def creep(device_id: str, model: str, h: ModelHistory, now: float, rules: Rules) -> Finding | None:
    t, v = h.p95.window(now, rules.creep_window_s, rules.max_fit_points)
    if len(t) < rules.trend_min_points or t[-1] - t[0] < rules.creep_min_span_s:
        return None
    level = float(np.median(v))
    if level <= 0 or resistant_slope(t, v) * (t[-1] - t[0]) / level < rules.creep_min_increase / 2:
        return None  # not even half the rise: skip the O(n²) fit
    f = fit(t, v)
    start, end = f.at(t[0]), f.at(t[-1])
    if f.low_slope <= 0 or f.rel_error > rules.creep_max_slope_rel_error or start <= 0:
        return None
    rise = end / start - 1
    if rise < rules.creep_min_increase:
        return None
    summary = (f"p95 of {model} {h.version} on {device_id} rose {rise:.0%} in {hours(f.span_s)} "
               f"({start:.1f} → {end:.1f} ms, {f.slope * 3600:+.2f} ms/h)")
    return Finding(device_id, Kind.latency_creep, model, Severity.warning, summary, value=end, evidence={
        "metric": "latency_ms_p95", "version": h.version, "rise": rise, "fit": f.view(), "series": excerpt(t, v),
    })


def anomaly(device_id: str, model: str, h: ModelHistory, metric: str, rules: Rules) -> Finding | None:
    b = h.baselines.get(metric)
    score = b.last if b is not None else None
    if score is None or score.z <= rules.anomaly_z:
        return None
    if metric == "error_rate":
        kind, shown = Kind.error_rate_anomaly, f"error rate {score.ewma:.1%} against its usual {score.median:.1%}"
    else:
        kind, shown = Kind.latency_anomaly, f"p95 {score.ewma:.1f} ms against its usual {score.median:.1f} ms"
    summary = f"{model} {h.version} on {device_id}: {shown} (robust z {score.z:.0f})"
    severity = Severity.critical if score.z > 3 * rules.anomaly_z else Severity.warning
    series = b.history if b is not None else []
    return Finding(device_id, kind, model, severity, summary, value=score.ewma, evidence={
        "metric": metric, "version": h.version, "baseline": score.view(),
        "series": {"v": [round(float(x), 6) for x in list(series)[-EXCERPT_POINTS:]]},
    })


def evaluate(device_id: str, history: DeviceHistory, now: float, rules: Rules) -> list[Finding]:
    found = [
        fill(device_id, Kind.disk_full, "disk", history.disk, rules.disk_used_ratio, now, rules),
        fill(device_id, Kind.memory_full, "memory", history.memory, rules.memory_used_ratio, now, rules),
    ]
    for model, h in history.models.items():
        found.append(creep(device_id, model, h, now, rules))
        found.append(anomaly(device_id, model, h, "latency", rules))
        found.append(anomaly(device_id, model, h, "error_rate", rules))
    return [f for f in found if f is not None]

"""Response models of the alerts and of the failure analysis (kept apart from the routes, so the rollout
schemas can use FailureAnalysisOut without importing the alert routes)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from ..insights.alerts import AlertState, Kind, Severity


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeriesOut(Out):
    t: list[float] = Field(default_factory=list, description="Unix seconds (absent for baseline series)")
    v: list[float]


class FitOut(Out):
    slope_per_h: float
    low_slope_per_h: float
    high_slope_per_h: float
    intercept: float
    t0: float
    n: int
    span_s: float
    confidence: float


class BaselineOut(Out):
    value: float
    ewma: float
    median: float
    mad: float
    scale: float
    z: float
    baseline_n: int


class EvidenceOut(Out):
    metric: str
    version: str | None = None
    threshold: float | None = None
    level: float | None = None
    eta_s: float | None = None
    eta_range_s: list[float] | None = None
    predicted_at: float | None = None
    rise: float | None = None
    fit: FitOut | None = None
    baseline: BaselineOut | None = None
    series: SeriesOut | None = None


class AlertOut(Out):
    id: int
    fingerprint: str = Field(description="device|kind|model: one active alert each")
    device_id: str
    kind: Kind
    model: str
    state: AlertState
    severity: Severity
    summary: str
    value: float | None
    predicted_crossing: dt.datetime | None = Field(description="when the threshold is predicted to be crossed")
    started_at: dt.datetime
    fired_at: dt.datetime | None
    resolved_at: dt.datetime | None
    updated_at: dt.datetime
    evidence: EvidenceOut


class AlertsOut(Out):
    alerts: list[AlertOut]


class FailureOtherOut(Out):
    feature: str
    failed: int
    devices: int


class FailureFindingOut(Out):
    features: list[list[str]] = Field(description="alternatives selecting the same devices, each a conjunction of key=value")
    name: str
    failed_with: int
    devices_with: int
    failed_without: int
    devices_without: int
    odds_ratio: float | None
    p_value: float = Field(description="one-sided Fisher's exact test")
    p_adjusted: float = Field(description="Benjamini–Hochberg over every feature and pair tested")
    summary: str
    others: list[FailureOtherOut]


class FailureAnalysisOut(Out):
    """What a rollout's failed devices share (`failure_analysis` of GET /v1/rollouts/{id})."""

    failed: int
    succeeded: int
    tested: int
    summary: str
    findings: list[FailureFindingOut]

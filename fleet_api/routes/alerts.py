"""HTTP: the alerts of the insights (predictions and anomalies from device telemetry)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ..auth import Principal
from ..errors import NotFound
from ..insights.alerts import Alert, AlertState, Kind, Severity
from .security import viewer

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])


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


def _time(ts: float | None) -> dt.datetime | None:
    return None if ts is None else _time_of(ts)


def _time_of(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def alert_out(a: Alert) -> AlertOut:
    evidence: dict[str, Any] = dict(a.evidence)
    assert a.id is not None  # read from the database
    return AlertOut(
        id=a.id, fingerprint=a.fingerprint, device_id=a.device_id, kind=a.kind, model=a.model, state=a.state,
        severity=a.severity, summary=a.summary, value=a.value, predicted_crossing=_time(a.predicted_at),
        started_at=_time_of(a.started_at), fired_at=_time(a.fired_at), resolved_at=_time(a.resolved_at),
        updated_at=_time_of(a.updated_at), evidence=EvidenceOut.model_validate(evidence),
    )


@router.get("", summary="Alerts, newest first (filters combine)", response_model=AlertsOut)
def list_alerts(request: Request, _: Principal = viewer,
                state: AlertState | None = Query(None, description="pending, firing or resolved"),
                active: bool | None = Query(None, description="true: pending or firing; false: resolved"),
                device: str | None = Query(None, max_length=64), kind: Kind | None = None,
                model: str | None = Query(None, max_length=128), limit: int = Query(100, ge=1, le=1000),
                before_id: int | None = Query(None, ge=1, description="page: alerts older than this id")) -> AlertsOut:
    found = request.app.state.service.insights.alerts(state=state, active=active, device_id=device, kind=kind,
                                                      model=model, limit=limit, before_id=before_id)
    return AlertsOut(alerts=[alert_out(a) for a in found])


@router.get("/{alert_id}", summary="One alert with its evidence", response_model=AlertOut)
def get_alert(alert_id: int, request: Request, _: Principal = viewer) -> AlertOut:
    a = request.app.state.service.insights.alert(alert_id)
    if a is None:
        raise NotFound(f"unknown alert {alert_id}")
    return alert_out(a)

"""HTTP: the alerts of the insights (predictions and anomalies from device telemetry)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from ..errors import NotFound
from ..insights.alerts import Alert, AlertState, Kind
from ..insights.service import InsightsService
from .alert_models import AlertOut, AlertsOut, EvidenceOut
from .deps import Viewer


def get_insights(request: Request) -> InsightsService:
    return request.app.state.insights  # set by create_app: the FleetService's insights


InsightsDep = Annotated[InsightsService, Depends(get_insights)]
AlertId = Annotated[int, Path(ge=1, le=2**31 - 1, description="alert id")]

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])


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
def list_alerts(insights: InsightsDep, _: Viewer,
                state: AlertState | None = Query(None, description="pending, firing or resolved"),
                active: bool | None = Query(None, description="true: pending or firing; false: resolved"),
                device: str | None = Query(None, max_length=64), kind: Kind | None = None,
                model: str | None = Query(None, max_length=128), limit: int = Query(100, ge=1, le=1000),
                before_id: int | None = Query(None, ge=1, le=2**31 - 1, description="page: alerts older than this id"),
                ) -> AlertsOut:
    found = insights.alerts(state=state, active=active, device_id=device, kind=kind, model=model, limit=limit,
                            before_id=before_id)
    return AlertsOut(alerts=[alert_out(a) for a in found])


@router.get("/{alert_id}", summary="One alert with its evidence", response_model=AlertOut)
def get_alert(alert_id: AlertId, insights: InsightsDep, _: Viewer) -> AlertOut:
    a = insights.alert(alert_id)
    if a is None:
        raise NotFound(f"unknown alert {alert_id}")
    return alert_out(a)

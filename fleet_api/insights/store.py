"""Alerts in the database: load the active ones, save changes, query, and the notification outbox."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.tables import AlertRow
from .alerts import ACTIVE, Alert, AlertState, Kind, Severity


def _dt(ts: float | None) -> dt.datetime | None:
    return None if ts is None else _dt_of(ts)


def _dt_of(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _ts(t: dt.datetime | None) -> float | None:
    return None if t is None else _ts_of(t)


def _ts_of(t: dt.datetime) -> float:
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()  # SQLite hands back naive datetimes


def to_alert(r: AlertRow) -> Alert:
    return Alert(
        device_id=r.device_id, kind=Kind(r.kind), model=r.model, state=AlertState(r.state), severity=Severity(r.severity),
        summary=r.summary, started_at=_ts_of(r.started_at), last_true=_ts_of(r.last_true), value=r.value,
        predicted_at=_ts(r.predicted_at), evidence=r.evidence or {}, fired_at=_ts(r.fired_at), resolved_at=_ts(r.resolved_at),
        updated_at=_ts_of(r.updated_at), notified=AlertState(r.notified) if r.notified else None, id=r.id,
    )


def load_active(db: Session) -> list[Alert]:
    return [to_alert(r) for r in db.scalars(select(AlertRow).where(AlertRow.state.in_([s.value for s in ACTIVE])))]


def save(db: Session, alerts: Iterable[Alert]) -> None:
    """Insert or update; an alert without an id joins the row another process opened for the same fingerprint."""
    for a in alerts:
        row = db.get(AlertRow, a.id) if a.id is not None else None
        if row is None:
            row = db.scalar(select(AlertRow).where(AlertRow.active_key == a.fingerprint).with_for_update())
            if row is not None and row.state == AlertState.firing.value and a.state == AlertState.pending:
                # another API process fired it already: this one's fresh pending alert is that alert
                a.state, a.fired_at, a.started_at = AlertState.firing, _ts(row.fired_at), _ts_of(row.started_at)
        if row is None:
            row = AlertRow(fingerprint=a.fingerprint, started_at=_dt_of(a.started_at))
            db.add(row)
        row.active_key = a.fingerprint if a.active else None
        row.device_id, row.kind, row.model = a.device_id, a.kind.value, a.model
        row.state, row.severity, row.summary, row.value = a.state.value, a.severity.value, a.summary, a.value
        row.predicted_at, row.evidence = _dt(a.predicted_at), a.evidence
        row.last_true, row.fired_at, row.resolved_at = _dt_of(a.last_true), _dt(a.fired_at), _dt(a.resolved_at)
        row.updated_at = _dt_of(a.updated_at)
        db.flush()
        a.id = row.id
        a.notified = AlertState(row.notified) if row.notified else None


def query(db: Session, *, state: AlertState | None = None, active: bool | None = None, device_id: str | None = None,
          kind: Kind | None = None, model: str | None = None, limit: int = 100, before_id: int | None = None) -> list[Alert]:
    q = select(AlertRow)
    if state is not None:
        q = q.where(AlertRow.state == state.value)
    if active is not None:
        states = [s.value for s in ACTIVE]
        q = q.where(AlertRow.state.in_(states) if active else AlertRow.state.not_in(states))
    if device_id is not None:
        q = q.where(AlertRow.device_id == device_id)
    if kind is not None:
        q = q.where(AlertRow.kind == kind.value)
    if model is not None:
        q = q.where(AlertRow.model == model)
    if before_id is not None:
        q = q.where(AlertRow.id < before_id)
    return [to_alert(r) for r in db.scalars(q.order_by(AlertRow.id.desc()).limit(max(1, min(limit, 1000))))]


def get(db: Session, alert_id: int) -> Alert | None:
    row = db.get(AlertRow, alert_id)
    return to_alert(row) if row else None


def unnotified(db: Session, limit: int = 100) -> list[Alert]:
    """The notification outbox: firing alerts not yet sent as firing, resolved ones that fired and were not yet
    sent as resolved. Oldest change first."""
    rows = db.scalars(
        select(AlertRow).where(AlertRow.state.in_(["firing", "resolved"]), AlertRow.fired_at.is_not(None),
                               (AlertRow.notified.is_(None)) | (AlertRow.notified != AlertRow.state))
        .order_by(AlertRow.updated_at, AlertRow.id).limit(limit)
    )
    return [to_alert(r) for r in rows]


def mark_notified(db: Session, alert_id: int, state: AlertState) -> None:
    row = db.get(AlertRow, alert_id)
    if row is not None:
        row.notified = state.value

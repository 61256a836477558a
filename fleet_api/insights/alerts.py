"""Alerts and their lifecycle: pending → firing → resolved, one alert per (device, kind, model) at a time.

A detector's finding opens a pending alert; it fires once the condition held for `for_s` (a blip never pages
anyone), and a firing alert resolves once the condition stayed false for `keep_firing_for_s` (no flapping).
A pending alert whose condition goes away resolves without ever having been sent. Resolved is final: the next
occurrence is a new alert.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .config import Rules


class AlertState(StrEnum):
    pending = "pending"
    firing = "firing"
    resolved = "resolved"


TRANSITIONS: dict[AlertState, frozenset[AlertState]] = {
    AlertState.pending: frozenset({AlertState.firing, AlertState.resolved}),
    AlertState.firing: frozenset({AlertState.resolved}),
    AlertState.resolved: frozenset(),
}
ACTIVE = (AlertState.pending, AlertState.firing)


class Kind(StrEnum):
    disk_full = "disk_full"  # predicted (or reached) crossing of the disk threshold
    memory_full = "memory_full"
    latency_creep = "latency_creep"  # p95 drifting up over hours on one version
    latency_anomaly = "latency_anomaly"  # against the device's own baseline
    error_rate_anomaly = "error_rate_anomaly"


class Severity(StrEnum):
    warning = "warning"
    critical = "critical"


class InvalidTransition(RuntimeError):
    pass


Key = tuple[str, Kind, str]  # device, kind, model ("" for the device itself)


def fingerprint(key: Key) -> str:
    device, kind, model = key
    return f"{device}|{kind.value}|{model}"


@dataclass(frozen=True)
class Finding:
    """A detector's verdict for one evaluation: the condition holds now, with what shows it."""

    device_id: str
    kind: Kind
    model: str
    severity: Severity
    summary: str
    value: float | None = None
    predicted_at: float | None = None  # when the threshold will be crossed (epoch seconds)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.device_id, self.kind, self.model)


@dataclass
class Alert:
    device_id: str
    kind: Kind
    model: str
    state: AlertState
    severity: Severity
    summary: str
    started_at: float  # pending since
    last_true: float  # the last evaluation whose condition held
    value: float | None = None
    predicted_at: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    fired_at: float | None = None
    resolved_at: float | None = None
    updated_at: float = 0.0
    notified: AlertState | None = None  # the last state a webhook accepted
    id: int | None = None

    @property
    def key(self) -> Key:
        return (self.device_id, self.kind, self.model)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def needs_notification(self) -> bool:
        """Firing and not yet sent as firing, or resolved after it fired and not yet sent as resolved."""
        if self.state == AlertState.firing:
            return self.notified != AlertState.firing
        return self.state == AlertState.resolved and self.fired_at is not None and self.notified != AlertState.resolved

    def move(self, to: AlertState, now: float) -> None:
        if to not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"alert {self.fingerprint}: {self.state.value} → {to.value} is not allowed")
        self.state = to
        if to == AlertState.firing:
            self.fired_at = now
        elif to == AlertState.resolved:
            self.resolved_at = now
        self.updated_at = now

    def take(self, finding: Finding, now: float) -> None:
        self.severity, self.summary, self.value = finding.severity, finding.summary, finding.value
        self.predicted_at, self.evidence = finding.predicted_at, finding.evidence
        self.last_true = self.updated_at = now


class AlertBook:
    """The active alerts of the fleet, keyed by (device, kind, model): where findings become transitions."""

    def __init__(self, rules: Rules, active: Iterable[Alert] = ()) -> None:
        self.rules = rules
        self.active: dict[Key, Alert] = {a.key: a for a in active if a.active}

    def apply(self, findings: Iterable[Finding], evaluated: Iterable[str], now: float) -> list[Alert]:
        """One evaluation: `findings` hold now, for the devices in `evaluated` (the others had no news and keep
        their alerts as they are). Returns every alert that changed, resolved ones included."""
        changed: dict[Key, Alert] = {}
        seen: set[Key] = set()
        for f in findings:
            seen.add(f.key)
            alert = self.active.get(f.key)
            if alert is None:
                alert = Alert(f.device_id, f.kind, f.model, AlertState.pending, f.severity, f.summary, now, now)
                self.active[f.key] = alert
            alert.take(f, now)
            if alert.state == AlertState.pending and now - alert.started_at >= self.rules.for_s:
                alert.move(AlertState.firing, now)
            changed[f.key] = alert
        devices = set(evaluated)
        for key, alert in list(self.active.items()):
            if key in seen or alert.device_id not in devices:
                continue
            if alert.state == AlertState.pending or now - alert.last_true >= self.rules.keep_firing_for_s:
                alert.move(AlertState.resolved, now)
                del self.active[key]
                changed[key] = alert
        return list(changed.values())

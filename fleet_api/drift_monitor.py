"""Drift per device: each model version's baseline histograms, each device's recent windows, PSI, and alerts.

Plain core, no HTTP or MQTT: the service feeds it every telemetry message (`add`), the routes and /metrics read
it. For each (model, version) the baseline is the sum of the first `baseline_windows` windows that carried a
histogram, from any device (the canary wave's telemetry, for a version that was rolled out in waves). A device's
score per statistic (confidence, input_mean) is the PSI of its last `recent_windows` windows against that
baseline. An alert opens when a score exceeds `threshold` and resolves when it falls below `threshold / 2`
(hysteresis: a score hovering at the limit does not flap). States and their moves are one table.

Kept in the memory of the API process (lost on a restart, rebuilt from the next windows): see docs/fleet_api.md.
"""

from __future__ import annotations

import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import Field

from fleet_protocol.messages import Histogram, Telemetry

from .drift import merge, psi
from .strict import StrictModel

STATS = ("confidence", "input_mean")
# A model's histograms, STATS in order, in one C call: the test for "none at all" runs for every message.
_histograms = operator.attrgetter(*STATS)
_NO_HISTOGRAMS = (None,) * len(STATS)


class DriftSettings(StrictModel):
    baseline_windows: int = Field(default=5, ge=1, le=10_000)
    recent_windows: int = Field(default=3, ge=1, le=1_000)
    threshold: float = Field(default=0.25, gt=0, le=100)  # PSI; 0.25 is the usual "major shift"
    min_samples: int = Field(default=30, ge=1, le=10_000_000)  # in the recent windows, before a score counts


class AlertState(StrEnum):
    open = "open"
    resolved = "resolved"


ALERT_MOVES: dict[AlertState | None, frozenset[AlertState]] = {
    None: frozenset({AlertState.open}),
    AlertState.open: frozenset({AlertState.resolved}),
    AlertState.resolved: frozenset({AlertState.open}),
}


@dataclass
class DriftAlert:
    device_id: str
    model: str
    version: str
    stat: str
    state: AlertState
    score: float
    opened_at: float
    resolved_at: float | None = None
    windows: int = 0  # windows of the device's version seen when it opened

    def view(self) -> dict:
        return {"device_id": self.device_id, "model": self.model, "version": self.version, "stat": self.stat,
                "state": self.state.value, "psi": round(self.score, 4), "opened_at": self.opened_at,
                "resolved_at": self.resolved_at, "windows": self.windows}


@dataclass
class _Device:
    recent: dict[str, deque] = field(default_factory=dict)
    windows: int = 0
    scores: dict[str, float] = field(default_factory=dict)


class DriftMonitor:
    def __init__(self, settings: DriftSettings | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or DriftSettings()
        self.clock = clock
        self._lock = threading.Lock()
        self._baselines: dict[tuple[str, str], dict[str, list[list[int]]]] = {}
        self._devices: dict[tuple[str, str, str], _Device] = {}
        self._alerts: dict[tuple[str, str, str], DriftAlert] = {}  # (device, model, stat) → its latest alert
        self.opened = 0

    def add(self, device_id: str, t: Telemetry) -> list[DriftAlert]:
        """One telemetry message; → the alerts that opened or resolved because of it."""
        return self.add_many(((device_id, t),))

    def add_many(self, messages: Iterable[tuple[str, Telemetry]]) -> list[DriftAlert]:
        """A block of telemetry, under one lock; → the alerts that opened or resolved because of it."""
        changed: list[DriftAlert] = []
        with self._lock:
            for device_id, t in messages:
                for model, mt in t.models.items():
                    hists = _histograms(mt)
                    if hists != _NO_HISTOGRAMS:  # most telemetry carries none: nothing to do, nothing allocated
                        self._add(device_id, model, mt.version, hists, changed)
        return changed

    def _add(self, device_id: str, model: str, version: str, hists: tuple[Histogram | None, ...],
             changed: list[DriftAlert]) -> None:
        s = self.settings
        base = self._baselines.setdefault((model, version), {stat: [] for stat in STATS})
        dev = self._devices.setdefault((device_id, model, version), _Device())
        dev.windows += 1
        for stat, h in zip(STATS, hists, strict=True):
            if h is None:
                continue
            if len(base[stat]) < s.baseline_windows:
                base[stat].append(list(h.counts))
            recent = dev.recent.setdefault(stat, deque(maxlen=s.recent_windows))
            recent.append(list(h.counts))
            if len(base[stat]) < s.baseline_windows or len(recent) < s.recent_windows:
                continue
            counts = merge(list(recent))
            if sum(counts) < s.min_samples:
                continue
            score = psi(merge(base[stat]), counts)
            dev.scores[stat] = score
            alert = self._judge(device_id, model, version, stat, score, dev.windows)
            if alert is not None:
                changed.append(alert)

    def _judge(self, device_id: str, model: str, version: str, stat: str, score: float, windows: int) -> DriftAlert | None:
        key = (device_id, model, stat)
        alert = self._alerts.get(key)
        current = alert.state if alert is not None else None
        now = self.clock()
        if score > self.settings.threshold and current != AlertState.open:
            assert AlertState.open in ALERT_MOVES[current]
            alert = self._alerts[key] = DriftAlert(device_id, model, version, stat, AlertState.open, score, now,
                                                   windows=windows)
            self.opened += 1
            return alert
        if alert is not None and current == AlertState.open:
            alert.score = max(alert.score, score)
            if score < self.settings.threshold / 2:
                assert AlertState.resolved in ALERT_MOVES[current]
                alert.state, alert.resolved_at = AlertState.resolved, now
                return alert
        return None

    # --- readers ------------------------------------------------------------------------------------------
    def alerts(self, device_id: str | None = None, state: str | None = None) -> list[dict]:
        with self._lock:
            return [a.view() for k, a in sorted(self._alerts.items())
                    if (device_id is None or a.device_id == device_id) and (state is None or a.state.value == state)]

    def scores(self, device_id: str | None = None) -> list[dict]:
        with self._lock:
            return [{"device_id": d, "model": m, "version": v, "stat": stat, "psi": round(score, 4),
                     "windows": dev.windows}
                    for (d, m, v), dev in sorted(self._devices.items()) if device_id is None or d == device_id
                    for stat, score in sorted(dev.scores.items())]

    def baselines(self) -> list[dict]:
        with self._lock:
            return [{"model": m, "version": v, "stat": stat, "windows": len(ws), "counts": merge(ws)}
                    for (m, v), b in sorted(self._baselines.items()) for stat, ws in sorted(b.items()) if ws]

"""The insights core: telemetry in (observe), findings and alert transitions out (evaluate).

Plain Python over in-memory, bounded histories; the clock is always passed in, so a simulated fleet can run
days of telemetry in seconds. Knows nothing of HTTP, MQTT or the database.
"""

from __future__ import annotations

import threading

from fleet_protocol.messages import Telemetry

from . import detectors
from .alerts import Alert, AlertBook, Finding
from .baseline import Baseline
from .config import Rules
from .series import DeviceHistory, ModelHistory, Series


class Insights:
    def __init__(self, rules: Rules | None = None, active: list[Alert] | None = None) -> None:
        self.rules = rules or Rules()
        self.book = AlertBook(self.rules, active or [])
        self.devices: dict[str, DeviceHistory] = {}
        self._lock = threading.Lock()  # observe runs on the MQTT thread, evaluate on the evaluator's

    def observe(self, device_id: str, telemetry: Telemetry, now: float) -> None:
        """One telemetry message, filed at `now` (when it arrived: a device's clock may be anywhere)."""
        r = self.rules
        with self._lock:
            d = self.devices.get(device_id)
            if d is None:
                d = self.devices[device_id] = DeviceHistory(Series(r.history_points), Series(r.history_points))
            d.last_seen = now
            h = telemetry.health
            if h is not None:
                if h.disk_total_bytes and h.disk_free_bytes is not None:
                    d.disk.add(now, 1 - min(h.disk_free_bytes, h.disk_total_bytes) / h.disk_total_bytes)
                if h.memory_total_mb and h.memory_used_mb is not None:
                    d.memory.add(now, min(h.memory_used_mb / h.memory_total_mb, 1.0))
            for name, m in telemetry.models.items():
                mh = d.models.get(name)
                if mh is None or mh.version != m.version:  # a new version is measured against itself only
                    mh = d.models[name] = ModelHistory(m.version, Series(r.history_points))
                if m.latency_ms_p95 is not None:
                    mh.p95.add(now, m.latency_ms_p95)
                    self._baseline(mh, "latency", floor_rel=r.latency_floor_rel).update(m.latency_ms_p95)
                if m.requests >= r.min_requests:
                    self._baseline(mh, "error_rate", floor_abs=r.error_rate_floor).update(m.errors / m.requests)

    def _baseline(self, mh: ModelHistory, metric: str, floor_abs: float = 0.0, floor_rel: float = 0.0) -> Baseline:
        b = mh.baselines.get(metric)
        if b is None:
            r = self.rules
            b = mh.baselines[metric] = Baseline(alpha=r.ewma_alpha, size=r.baseline_points, min_points=r.baseline_min_points,
                                                z_limit=r.anomaly_z, floor_abs=floor_abs, floor_rel=floor_rel)
        return b

    def findings(self, now: float) -> tuple[list[Finding], list[str]]:
        """What holds now, for every device heard from within `stale_s`; and which devices were evaluated."""
        with self._lock:
            fresh = [(i, d) for i, d in self.devices.items() if now - d.last_seen <= self.rules.stale_s]
            # Forget devices silent for longer than any window looks back.
            horizon = max(self.rules.trend_window_s, self.rules.creep_window_s)
            for i in [i for i, d in self.devices.items() if now - d.last_seen > horizon]:
                del self.devices[i]
        found: list[Finding] = []
        for i, d in fresh:
            # The lock per device, not per round: the ingestion waits for one device's fits at most.
            with self._lock:
                found.extend(detectors.evaluate(i, d, now, self.rules))
        return found, [i for i, _ in fresh]

    def evaluate(self, now: float) -> list[Alert]:
        """Findings → alert transitions. Returns the alerts that changed (to be stored and notified)."""
        found, evaluated = self.findings(now)
        return self.book.apply(found, evaluated, now)

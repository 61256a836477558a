"""The insights core: telemetry in (observe), findings and alert transitions out (evaluate).

Plain Python over in-memory, bounded histories; the clock is always passed in, so a simulated fleet can run
days of telemetry in seconds. Knows nothing of HTTP, MQTT or the database.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

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
        for _, exc in self.observe_many(((device_id, telemetry),), now):
            raise exc

    def observe_many(self, messages: Iterable[tuple[str, Telemetry]], now: float) -> list[tuple[str, Exception]]:
        """A block of messages, all filed at `now`, under one lock. → the messages that failed, each with its
        error: a fault in one message's bookkeeping costs no other message of the block its observation."""
        failed: list[tuple[str, Exception]] = []
        with self._lock:
            for device_id, telemetry in messages:
                try:
                    self._observe(device_id, telemetry, now)
                except Exception as exc:
                    failed.append((device_id, exc))
        return failed

    def _observe(self, device_id: str, telemetry: Telemetry, now: float) -> None:
        d = self.devices.get(device_id)
        if d is None:
            d = self.devices[device_id] = DeviceHistory(Series(self.rules.history_points), Series(self.rules.history_points))
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
                mh = d.models[name] = ModelHistory(m.version, Series(self.rules.history_points))
            p95 = m.latency_ms_p95
            if p95 is not None:
                mh.p95.add(now, p95)
                (mh.baselines.get("latency") or self._baseline(mh, "latency")).add(p95)
            requests = m.requests
            if requests >= self.rules.min_requests:
                (mh.baselines.get("error_rate") or self._baseline(mh, "error_rate")).add(m.errors / requests)

    def _baseline(self, mh: ModelHistory, metric: str) -> Baseline:
        """A model version's first value of `metric`: its baseline, with that metric's floor."""
        r = self.rules
        floor_abs, floor_rel = (r.error_rate_floor, 0.0) if metric == "error_rate" else (0.0, r.latency_floor_rel)
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

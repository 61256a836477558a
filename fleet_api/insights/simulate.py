"""Simulated devices with a known truth, sending real Telemetry v2 messages (health and one model).

Used by the tests and by benchmarks/insights.py to measure the detectors: when each disk truly crosses its
threshold, and how often flat but noisy devices raise an alert anyway. Noise is what real devices show: disk
usage jitters and jumps with temporary files; memory wanders (autocorrelated); latency is lognormal with spikes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleet_protocol.messages import Health, ModelTelemetry, Telemetry

DISK_TOTAL = 64 * 1024**3
MEMORY_TOTAL_MB = 8192.0


@dataclass
class SimDevice:
    id: str
    seed: int
    disk_start: float = 0.5  # used ratio at t=0
    disk_rate_per_h: float = 0.0  # used ratio per hour (the truth a prediction is judged by)
    disk_fill_from_s: float = 0.0  # flat until then, filling after
    disk_noise: float = 0.002
    disk_spike_p: float = 0.01  # chance of a temporary file (+2 %) in one window
    memory_level: float = 0.6
    memory_rate_per_h: float = 0.0
    memory_noise: float = 0.02
    p95_ms: float = 20.0
    p95_noise: float = 0.1  # lognormal sigma
    p95_creep_per_h: float = 0.0  # relative, e.g. 0.05: +5 % of the base per hour
    latency_spike_p: float = 0.005
    requests: int = 600
    error_rate: float = 0.001
    model: str = "detector"
    version: str = "1.0.0"
    _rng: np.random.Generator = field(init=False, repr=False)
    _memory_ar: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def disk_used(self, t: float) -> float:
        """The true (noise-free) used ratio at t seconds into the simulation."""
        return self.disk_start + self.disk_rate_per_h * max(0.0, t - self.disk_fill_from_s) / 3600

    def disk_crossing(self, threshold: float) -> float | None:
        """Seconds into the simulation when the truth crosses `threshold` (None: never)."""
        if self.disk_start >= threshold:
            return 0.0
        if self.disk_rate_per_h <= 0:
            return None
        return self.disk_fill_from_s + (threshold - self.disk_start) / self.disk_rate_per_h * 3600

    def telemetry(self, t: float, window_s: float = 60.0, ts: float = 0.0) -> Telemetry:
        rng = self._rng
        disk = self.disk_used(t) + rng.normal(0, self.disk_noise) + (0.02 if rng.random() < self.disk_spike_p else 0.0)
        disk = float(np.clip(disk, 0.0, 1.0))
        self._memory_ar = 0.9 * self._memory_ar + rng.normal(0, self.memory_noise * np.sqrt(1 - 0.81))
        memory = float(np.clip(self.memory_level + self.memory_rate_per_h * t / 3600 + self._memory_ar, 0.01, 1.0))
        p95 = self.p95_ms * (1 + self.p95_creep_per_h * t / 3600) * float(rng.lognormal(0, self.p95_noise))
        if rng.random() < self.latency_spike_p:
            p95 *= 4  # a GC pause, a thermal throttle: one bad window
        errors = int(rng.binomial(self.requests, self.error_rate))
        return Telemetry(
            window_s=window_s, ts=ts + t,
            models={self.model: ModelTelemetry(version=self.version, requests=self.requests, errors=errors,
                                               latency_ms_p50=p95 / 2, latency_ms_p95=p95, latency_ms_p99=p95 * 1.3)},
            health=Health(disk_free_bytes=int(DISK_TOTAL * (1 - disk)), disk_total_bytes=DISK_TOTAL,
                          memory_used_mb=memory * MEMORY_TOTAL_MB, memory_total_mb=MEMORY_TOTAL_MB,
                          agent_rss_mb=300.0, cpu_percent=30.0, load1=0.5, uptime_s=t, agent_restarts=0),
        )


def flat_fleet(n: int, seed: int = 0) -> list[SimDevice]:
    """Devices whose disk and memory stay level (some close to the threshold) and whose latency and error rate
    only jitter: any alert on them is a false one."""
    rng = np.random.default_rng(seed)
    return [
        SimDevice(f"flat-{i:04d}", seed=seed * 100_000 + i, disk_start=float(rng.uniform(0.3, 0.85)),
                  memory_level=float(rng.uniform(0.3, 0.8)), p95_ms=float(rng.uniform(5, 50)),
                  error_rate=float(rng.choice([0.0, 0.001, 0.01])))
        for i in range(n)
    ]

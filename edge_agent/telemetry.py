"""What the agent measures about itself, for Prometheus (`/metrics`) and for the fleet (MQTT telemetry).

`Stats` sits on the request path, so recording must cost about a microsecond: a pre-bound counter and
histogram child per model, and one `list.append` of the latency for the telemetry window (atomic under the
GIL, no lock). `Stats.window()` swaps the list out and turns it into percentiles off the request path.
Knows nothing of MQTT: `TelemetryLoop` is handed a `send` callable.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleet_protocol.messages import ServingModel, Telemetry

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# A window keeps at most this many samples; beyond it a random subset stands in (reservoir), so a burst of
# traffic cannot grow the agent's memory between two telemetry messages.
MAX_SAMPLES = 100_000
LABELS = ("model", "version", "provider")


class ModelMetrics:
    """The metric children of one loaded model, bound once so the request path does no label lookups."""

    __slots__ = ("ok", "bad_request", "error", "latency", "queue")

    def __init__(self, stats: "Stats", labels: tuple[str, str, str]) -> None:
        self.ok = stats.requests.labels(*labels, "ok")
        self.bad_request = stats.requests.labels(*labels, "bad_request")
        self.error = stats.requests.labels(*labels, "error")
        self.latency = stats.latency.labels(*labels)
        self.queue = stats.queue.labels(*labels)


@dataclass(frozen=True)
class Window:
    seconds: float
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class Stats:
    """Counters of one engine. Its own registry keeps tests (several engines in one process) independent."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("edgefleet_agent_requests", "Inference requests by outcome (ok, bad_request, error)",
                                [*LABELS, "outcome"], registry=r)
        self.latency = Histogram("edgefleet_agent_inference_seconds", "Inference latency: queue wait plus session run",
                                 LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("edgefleet_agent_queue_seconds", "Time a request waited before its session run (batching)",
                               LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.model_info = Gauge("edgefleet_agent_model_info", "The model served now (1) with its version and execution provider",
                                ["model", "version", "sha256", "provider", "providers"], registry=r)
        self.batch_size = Histogram("edgefleet_agent_batch_size", "Requests per session run when dynamic batching is on",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self._samples: list[float] = []
        self._seen = 0
        self._errors = 0
        self._window_start = time.monotonic()

    def for_model(self, name: str, version: str, provider: str) -> ModelMetrics:
        return ModelMetrics(self, (name, version, provider))

    def serving(self, name: str, version: str, sha256: str, providers: list[str]) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version, sha256, providers[0], ",".join(providers)).set(1)

    # --- request path -------------------------------------------------------------------------------------
    def observe(self, metrics: ModelMetrics, seconds: float) -> None:
        metrics.ok.inc()
        metrics.latency.observe(seconds)
        samples = self._samples
        self._seen += 1
        if len(samples) < MAX_SAMPLES:
            samples.append(seconds)
        else:
            slot = random.randrange(self._seen)
            if slot < MAX_SAMPLES:
                samples[slot] = seconds

    def failed(self, metrics: ModelMetrics | None, bad_request: bool) -> None:
        self._errors += 1
        if metrics is not None:
            (metrics.bad_request if bad_request else metrics.error).inc()

    # --- telemetry ------------------------------------------------------------------------------------------
    def window(self) -> Window:
        """Take the samples since the last call and start a new window."""
        now = time.monotonic()
        # Rebinding is atomic; an append racing with it lands in one list or the other, never lost twice.
        samples, self._samples = self._samples, []
        requests, self._seen = self._seen, 0
        errors, self._errors = self._errors, 0
        seconds, self._window_start = max(now - self._window_start, 1e-6), now
        if samples:
            p50, p95, p99 = (float(v) * 1000 for v in np.percentile(np.asarray(samples), [50, 95, 99]))
        else:
            p50 = p95 = p99 = None
        return Window(seconds, requests + errors, errors, p50, p95, p99)


class ProcessProbe:
    """CPU and memory of this process. The first cpu_percent() call only sets the reference point."""

    def __init__(self) -> None:
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)

    def sample(self) -> tuple[float, float]:
        with self._proc.oneshot():
            return self._proc.cpu_percent(None), self._proc.memory_info().rss / (1 << 20)


def build_telemetry(stats: Stats, model, probe: ProcessProbe, fps: float | None = None) -> Telemetry:
    """One Telemetry message for the window since the previous one; `model` is the LoadedModel serving now."""
    w = stats.window()
    cpu, memory = probe.sample()
    return Telemetry(
        model=ServingModel(name=model.name, version=model.version, sha256=model.sha256) if model is not None else None,
        provider=model.provider if model is not None else None,
        window_s=w.seconds, requests=w.requests, errors=w.errors,
        latency_ms_p50=w.p50_ms, latency_ms_p95=w.p95_ms, latency_ms_p99=w.p99_ms,
        fps=fps, cpu_percent=cpu, memory_mb=memory,
    )


class TelemetryLoop:
    """Every `interval_s`, one Telemetry message to `send` (the MQTT shell's `send_telemetry`)."""

    def __init__(self, engine, send: Callable[[Telemetry], None], interval_s: float,
                 fps: Callable[[], float | None] | None = None) -> None:
        self.engine = engine
        self.send = send
        self.interval_s = interval_s
        self.fps = fps
        self.probe = ProcessProbe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    def start(self) -> None:
        self.engine.stats.window()  # requests before the loop started belong to no window
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def tick(self) -> Telemetry:
        telemetry = build_telemetry(self.engine.stats, self.engine.current, self.probe, self.fps() if self.fps else None)
        self.send(telemetry)
        return telemetry

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception as exc:  # telemetry must never take the agent down; the next tick tries again
                log.warning("telemetry not sent: %s", exc)

"""What the agent measures about itself, for Prometheus (`/metrics`) and for the fleet (MQTT telemetry).

`Stats` sits on the request path, so recording must cost about a microsecond: pre-bound counter and
histogram children per model, and one `list.append` of the latency into that model's telemetry window
(atomic under the GIL, no lock). `Stats.windows()` swaps the lists out and turns them into percentiles off the
request path. Knows nothing of MQTT: `TelemetryLoop` is handed a `send` callable.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleet_protocol.messages import Health, ModelTelemetry, Telemetry

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# A window keeps at most this many samples per model; beyond it a random subset stands in (reservoir), so a
# burst of traffic cannot grow the agent's memory between two telemetry messages.
MAX_SAMPLES = 100_000
LABELS = ("model", "version", "provider")


class _Window:
    """The requests of one model name since the last telemetry message (every version of it)."""

    __slots__ = ("errors", "samples", "seen", "start", "version")

    def __init__(self) -> None:
        self.version = ""  # the newest version of the model counted here (telemetry names it after a removal)
        self.samples: list[float] = []
        self.seen = 0
        self.errors = 0
        self.start = time.monotonic()


@dataclass(frozen=True)
class Window:
    seconds: float
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    version: str = ""


class ModelMetrics:
    """The metric children of one loaded model, bound once so the request path does no label lookups."""

    __slots__ = ("bad_request", "error", "latency", "ok", "queue", "window")

    def __init__(self, stats: Stats, labels: tuple[str, str, str], window: _Window) -> None:
        self.ok = stats.requests.labels(*labels, "ok")
        self.bad_request = stats.requests.labels(*labels, "bad_request")
        self.error = stats.requests.labels(*labels, "error")
        self.latency = stats.latency.labels(*labels)
        self.queue = stats.queue.labels(*labels)
        self.window = window

    def observe(self, seconds: float, queued: float | None = None) -> None:
        """One answered request; `queued`: its wait in the batcher (None: it never queued)."""
        self.ok.inc()
        self.latency.observe(seconds)
        if queued is not None:
            self.queue.observe(queued)
        w = self.window
        w.seen += 1
        samples = w.samples
        if len(samples) < MAX_SAMPLES:
            samples.append(seconds)
        else:
            slot = random.randrange(w.seen)
            if slot < MAX_SAMPLES:
                samples[slot] = seconds

    def failed(self, bad_request: bool) -> None:
        self.window.errors += 1
        (self.bad_request if bad_request else self.error).inc()


class Stats:
    """Counters of one ModelHost. Its own registry keeps tests (several hosts in one process) independent."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("edgefleet_agent_requests", "Inference requests by outcome (ok, bad_request, error)",
                                [*LABELS, "outcome"], registry=r)
        self.latency = Histogram("edgefleet_agent_inference_seconds", "Inference latency: queue wait plus session run",
                                 LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("edgefleet_agent_queue_seconds", "Time a request waited before its session run (batching)",
                               LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.model_info = Gauge("edgefleet_agent_model_info", "The models served now (1) with version and execution provider",
                                ["model", "version", "sha256", "provider", "providers", "precision"], registry=r)
        self.batch_size = Histogram("edgefleet_agent_batch_size", "Requests per session run when dynamic batching is on",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self._windows: dict[str, _Window] = {}

    def for_model(self, name: str, version: str, provider: str) -> ModelMetrics:
        window = self._windows.setdefault(name, _Window())
        window.version = version
        return ModelMetrics(self, (name, version, provider), window)

    def serving(self, models: Iterable[Any]) -> None:
        self.model_info.clear()
        for m in models:
            self.model_info.labels(m.name, m.version, m.sha256, m.providers[0], ",".join(m.providers), m.precision.value).set(1)

    def windows(self) -> dict[str, Window]:
        """Take each model's samples since the last call and start new windows."""
        now = time.monotonic()
        out = {}
        for name, w in list(self._windows.items()):
            # Rebinding is atomic; an append racing with it lands in one list or the other, never lost twice.
            samples, w.samples = w.samples, []
            requests, w.seen = w.seen, 0
            errors, w.errors = w.errors, 0
            seconds, w.start = max(now - w.start, 1e-6), now
            p50: float | None = None
            p95: float | None = None
            p99: float | None = None
            if samples:
                p50, p95, p99 = (float(v) * 1000 for v in np.percentile(np.asarray(samples), [50, 95, 99]))
            out[name] = Window(seconds, requests + errors, errors, p50, p95, p99, w.version)
        return out


def _ms(value: float | None) -> float | None:
    return None if value is None else min(value, 3_600_000.0)


def build_telemetry(stats: Stats, host, window_s: float, cameras: Any = None, health: Health | None = None) -> Telemetry:
    """One Telemetry message for the window since the previous one: every model the host serves (and every
    model name that had requests), the cameras' numbers and the device's health."""
    windows = stats.windows()
    models: dict[str, ModelTelemetry] = {}
    for name in sorted(set(windows) | set(host.names())):
        model = host.get(name)
        w = windows.get(name)
        if model is None and (w is None or not w.requests):
            continue
        drift = getattr(host, "drift", {}).get(name)
        confidence, input_mean = drift.take() if drift is not None else (None, None)
        shadow = model.shadow if model is not None else None
        models[name] = ModelTelemetry(
            version=model.version if model is not None else (w.version if w and w.version else "unknown"),
            provider=model.provider if model is not None else None,
            requests=w.requests if w else 0, errors=w.errors if w else 0,
            latency_ms_p50=_ms(w.p50_ms) if w else None, latency_ms_p95=_ms(w.p95_ms) if w else None,
            latency_ms_p99=_ms(w.p99_ms) if w else None,
            confidence=confidence, input_mean=input_mean,
            shadow=shadow.telemetry() if shadow is not None else None,
        )
    return Telemetry(window_s=window_s, models=models, cameras=cameras.telemetry() if cameras is not None else {},
                     health=health)


class ProcessProbe:
    """Memory of this process (for the benchmark and the health fallback)."""

    def __init__(self) -> None:
        self._proc = psutil.Process(os.getpid())

    def rss_mb(self) -> float:
        return self._proc.memory_info().rss / (1 << 20)


class TelemetryLoop:
    """Every `interval_s`, one Telemetry message to `send` (the MQTT shell's `send_telemetry`)."""

    def __init__(self, host, send: Callable[[Telemetry], None], interval_s: float, cameras: Any = None,
                 health: Callable[[], Health | None] | None = None, on_tick: Callable[[], None] | None = None) -> None:
        self.host = host
        self.send = send
        self.interval_s = interval_s
        self.cameras = cameras
        self.health = health or (lambda: None)
        self.on_tick = on_tick  # e.g. the reconciler republishing camera states that changed
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    def start(self) -> None:
        self.host.stats.windows()  # requests before the loop started belong to no window
        self._last = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def tick(self) -> Telemetry:
        now = time.monotonic()
        window_s, self._last = max(now - self._last, 1e-3), now
        try:
            health = self.health()
        except Exception as exc:  # health is a nice-to-have: never lose the request numbers over it
            log.warning("device health not collected: %s", exc)
            health = None
        telemetry = build_telemetry(self.host.stats, self.host, window_s, self.cameras, health)
        self.send(telemetry)
        if self.on_tick is not None:
            self.on_tick()
        return telemetry

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception as exc:  # telemetry must never take the agent down; the next tick tries again
                log.warning("telemetry not sent: %s", exc)

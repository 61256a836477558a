"""The shadow runner: mirrors a sample of live inputs to a candidate on its own thread, within a CPU budget.

The request path only calls `offer`, which costs a random draw and a deque append: the candidate runs on a
worker, never on the caller's thread, and never answers a client. The budget is a token bucket of CPU
seconds: it fills at `cpu_budget` seconds per second of wall time and each candidate run spends what it took,
so on a busy device the candidate sees fewer samples instead of slowing the live model (skips are counted).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fleet_protocol.messages import ShadowTelemetry

from .compare import Comparer

log = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]
Run = Callable[[Feeds], Sequence[np.ndarray]]
# A sample the candidate disagreed on: (inputs, the live outputs), for data capture (edge_agent/sampler.py).
Disagreed = Callable[[Feeds, Sequence[np.ndarray]], None]
# Below this agreement a sample counts as a disagreement for capture: a different top-1 class, or fewer than
# half the boxes matched (F1), or most values not close.
DISAGREES_BELOW = 0.5


@dataclass
class ShadowTotals:
    """Everything since the shadow started: what the rollout's gates read."""

    samples: int = 0
    agreement_sum: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    max_abs_diff: float = 0.0
    mean_abs_diff_sum: float = 0.0
    dropped: int = 0
    errors: int = 0

    @property
    def agreement(self) -> float | None:
        return self.agreement_sum / self.samples if self.samples else None


SHADOW_NICE = 19


def lower_priority() -> None:
    """The calling thread at the lowest CPU priority (Linux: a thread id is a process id to setpriority): on a
    loaded device the scheduler runs the live model first and the candidate in what is left. With one
    intra-op thread onnxruntime runs the candidate's ops on this very thread, so they inherit it."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICE)
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted: the token bucket still bounds it
        log.debug("shadow thread priority not lowered: %s", exc)


class ShadowRunner:
    def __init__(
        self,
        version: str,
        candidate: Run,
        compare: Comparer,
        *,
        sample_rate: float,
        cpu_budget: float,
        queue_size: int = 4,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.version = version
        self.candidate = candidate
        self.compare = compare
        self.sample_rate = sample_rate
        self.cpu_budget = cpu_budget
        self.clock = clock
        self.rng = rng or random.Random()
        self._queue: deque[tuple[Feeds, Sequence[np.ndarray]]] = deque(maxlen=queue_size)
        self._wake = threading.Condition()
        self._lock = threading.Lock()
        self._stop = False
        self._allowance = cpu_budget  # CPU seconds the candidate may spend now
        self._refilled = clock()
        self.totals = ShadowTotals()
        self.on_disagree: Disagreed | None = None
        self._thread = threading.Thread(target=self._work, name=f"shadow-{version}", daemon=True)

    def start(self) -> ShadowRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(5)

    # --- the request path ---------------------------------------------------------------------------------
    def offer(self, feeds: Feeds, live_outputs: Sequence[np.ndarray]) -> None:
        if self.rng.random() >= self.sample_rate:
            return
        if not self._has_budget():
            self._count_dropped()
            return
        with self._wake:
            if len(self._queue) == self._queue.maxlen:
                self._count_dropped()  # the oldest waiting sample is pushed out
            # Inputs are the caller's arrays: they must not change under the worker (the HTTP path builds fresh ones).
            self._queue.append((feeds, live_outputs))
            self._wake.notify()

    def _has_budget(self) -> bool:
        with self._lock:
            now = self.clock()
            # At most one second's worth is saved up, so an idle hour does not buy a burst that stalls the device.
            self._allowance = min(self.cpu_budget, self._allowance + (now - self._refilled) * self.cpu_budget)
            self._refilled = now
            return self._allowance > 0

    def _count_dropped(self) -> None:
        with self._lock:
            self.totals.dropped += 1

    # --- the worker ---------------------------------------------------------------------------------------
    def _work(self) -> None:
        lower_priority()
        while True:
            with self._wake:
                while not self._queue and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                feeds, live = self._queue.popleft()
            self.process(feeds, live)

    def process(self, feeds: Feeds, live: Sequence[np.ndarray]) -> None:
        """Run the candidate on one sample and record how it compares (the worker's step; tests call it directly)."""
        start_cpu, start = time.thread_time(), time.perf_counter()
        try:
            out = self.candidate(feeds)
            result = self.compare(live, out)
        except Exception as exc:  # a candidate that fails on live inputs disagrees; it must not kill the worker
            log.warning("shadow %s failed on a sample: %s", self.version, exc)
            with self._lock:
                self.totals.errors += 1
                self.totals.samples += 1
            return
        elapsed_ms = (time.perf_counter() - start) * 1000
        spent = time.thread_time() - start_cpu
        with self._lock:
            self._allowance -= max(spent, elapsed_ms / 1000 / 4)  # thread_time misses onnxruntime's own threads
            t = self.totals
            t.samples += 1
            t.agreement_sum += result.agreement
            t.latencies_ms.append(elapsed_ms)
            t.max_abs_diff = max(t.max_abs_diff, result.max_abs_diff)
            t.mean_abs_diff_sum += result.mean_abs_diff
            if len(self.totals.latencies_ms) > 10_000:
                del self.totals.latencies_ms[:5_000]
        if result.agreement < DISAGREES_BELOW and self.on_disagree is not None:
            try:
                self.on_disagree(feeds, live)
            except Exception as exc:  # capture must never stop the comparison
                log.warning("shadow %s: capturing a disagreement failed: %s", self.version, exc)

    def telemetry(self) -> ShadowTelemetry:
        """Everything since the shadow started: the gates judge the candidate on all of it."""
        with self._lock:
            t = self.totals
            lat = np.asarray(t.latencies_ms) if t.latencies_ms else None
            finite = t.max_abs_diff if np.isfinite(t.max_abs_diff) else 1e30
            return ShadowTelemetry(
                version=self.version,
                samples=t.samples,
                agreement=None if t.agreement is None else min(1.0, max(0.0, t.agreement)),
                max_abs_diff=finite if t.samples else None,
                mean_abs_diff=min(1e30, t.mean_abs_diff_sum / t.samples) if t.samples else None,
                latency_ms_p50=float(np.percentile(lat, 50)) if lat is not None else None,
                latency_ms_p95=float(np.percentile(lat, 95)) if lat is not None else None,
                dropped=t.dropped,
            )

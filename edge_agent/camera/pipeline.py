"""One camera: capture thread → newest-frame queue → worker thread (detector → later stages on the crops).

Capture and inference overlap, so the pipeline runs at the rate of its slowest stage, not of their sum. The
worker publishes each result as `latest`; viewers (the MJPEG stream) wait for a newer one and draw it
themselves, so a browser costs the detector nothing. The models are looked up by name for every frame
(`resolve`), so a hot-swapped model is used from the next frame on and a missing one stops nothing but
inference: the camera reports why and resumes by itself once the model is there.
"""

from __future__ import annotations

import bisect
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fleet_protocol.cameras import Camera
from fleet_protocol.messages import Detection

from ..runtime.model import camera_run
from .capture import Capture
from .events import EventGate, EventSink
from .frames import Frame, LatestQueue, RateMeter
from .stages import Chain, ModelUnavailable, Resolve

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Result:
    frame: Frame
    detections: list[Detection]
    latency_s: float  # from the start of reading the frame to the end of post-processing
    model: str | None  # the chain that made it, e.g. 'ocr-det 1.0.0 → ocr-rec 1.0.0'


@dataclass
class StageTimes:
    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    stages: float = 0.0  # the later stages: cropping and reading every box
    frames: int = 0


@dataclass
class LatencyStats:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))

    def add(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1
        self.recent.append(seconds)

    def quantile(self, q: float) -> float | None:
        values = sorted(self.recent)
        return values[min(len(values) - 1, int(q * len(values)))] if values else None


class FrameSampler(Protocol):
    """Data capture as a camera offers its frames (edge_agent/sampler.py): decided at once, prepared elsewhere."""

    def offer_frame(self, camera: str, model: Any, frame: Callable[[], np.ndarray], frame_size: tuple[int, int],
                    outputs: Sequence[np.ndarray], detections: Sequence[Detection]) -> bool: ...


class Pipeline:
    def __init__(self, camera: Camera, resolve: Resolve, on_event: EventSink | None = None,
                 source=None, on_result=None, sampler: FrameSampler | None = None) -> None:
        self.camera = camera
        self.resolve = resolve
        self.on_result = on_result  # called on the worker thread with every Result (tests, benchmarks)
        self.sampler = sampler
        self.name = camera.name
        self.events = EventGate(camera.name, camera.events, on_event)
        self.queue = LatestQueue(camera.queue_size)
        # With later stages the crops must come from the whole frame, not from one decoded small for the detector.
        self.capture = Capture(camera.source, self.queue, self.events.lifecycle, source=source, prepare=self._prepare,
                               scale=None if camera.stages else self._decode_scale)
        self.meter = RateMeter()
        self.times = StageTimes()
        self.latency = LatencyStats()
        self.errors = 0
        self.last_error: str | None = None
        self.problem: str | None = None  # why frames are not inferred now (a model missing or unusable)
        self.skipped = 0  # frames not inferred because of `problem`
        self.chain: Chain | None = None  # the chain of the latest frame
        self.started_at = time.monotonic()
        self._period = 1.0 / camera.fps if camera.fps else 0.0
        self._due = 0.0
        self._latest: Result | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)

    # --- control ---------------------------------------------------------------------------------------
    def start(self) -> Pipeline:
        self.capture.start()
        self._worker.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.capture.stop(timeout)
        self._worker.join(timeout)
        with self._cond:
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self._worker.is_alive()

    # --- results ---------------------------------------------------------------------------------------
    @property
    def latest(self) -> Result | None:
        return self._latest

    def wait_result(self, after_seq: int, timeout: float) -> Result | None:
        """The newest result with a frame later than `after_seq`, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                r = self._latest
                if r is not None and r.frame.seq > after_seq:
                    return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        return None

    # --- the worker ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            frame = self.queue.get(timeout=0.25)
            if frame is None:
                continue
            if self._period:  # the camera's `fps`: infer at most this often, always on the newest frame
                now = time.monotonic()
                if now < self._due:
                    continue
                self._due = max(self._due + self._period, now - self._period)
            try:
                chain = self.resolve()
            except ModelUnavailable as exc:
                self.skipped += 1
                self._set_problem(str(exc))
                continue
            self._set_problem(None, chain)
            try:
                with camera_run():  # the frame itself is offered for capture below, not the model's input
                    detections, outputs = self._detect(chain, frame)
            except Exception as exc:  # one bad frame (or a model that chokes on it) must not stop the camera
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.errors == 1 or self.errors % 100 == 0:
                    log.warning("%s: frame %d failed (%d so far): %s", self.name, frame.seq, self.errors, self.last_error)
                continue
            done = time.perf_counter()
            result = Result(frame, detections, done - frame.t_grab, chain.describe())
            self.latency.add(result.latency_s)
            self.meter.tick()
            with self._cond:
                self._latest = result
                self._cond.notify_all()
            if self.on_result is not None:
                self.on_result(result)
            if self.sampler is not None:
                self._offer(chain, frame, outputs, detections)
            if detections:
                self.events.offer(frame.ts, detections, {"frame": frame.seq, "model": result.model})

    def _set_problem(self, problem: str | None, chain: Chain | None = None) -> None:
        """Report changes only: a model going missing, coming back, or being swapped for another version."""
        # State first, then the event: whoever the event makes look (the reported state) sees the new state.
        if problem is not None:
            changed, self.problem = problem != self.problem, problem
            if changed:
                log.warning("camera %s: %s; frames are not inferred until it is", self.name, problem)
                self.events.lifecycle("models_unavailable", {"error": problem})
            return
        before, self.chain = self.chain, chain
        had_problem, self.problem = self.problem is not None, None
        if had_problem or before is not chain:
            if had_problem or before is not None:
                log.info("camera %s: now %s", self.name, chain.describe() if chain else None)
            self.events.lifecycle("models_ready", {"models": chain.describe() if chain else ""})

    def _decode_scale(self, frame_size: tuple[int, int]) -> int:
        chain = self.chain
        return chain.detector.decode_scale(frame_size) if chain is not None else 1

    def _prepare(self, image, frame_size: tuple[int, int]):
        """Runs on the capture thread; a failure here is left for the worker to meet (and count)."""
        chain = self.chain
        if chain is None:
            return None
        t0 = time.perf_counter()
        try:
            x, geo = chain.detector.preprocess(image, frame_size)
        except Exception:
            return None
        self.times.preprocess += time.perf_counter() - t0
        return chain.detector, x, geo

    def _offer(self, chain: Chain, frame: Frame, outputs: dict[str, np.ndarray], detections: list[Detection]) -> None:
        detector = chain.detector
        try:
            assert self.sampler is not None
            self.sampler.offer_frame(self.name, detector.model, frame.full, frame.frame_size,
                                     [outputs[n] for n in detector.output_names], detections)
        except Exception as exc:  # capture must never stop a camera
            log.warning("%s: offering frame %d for capture failed: %s", self.name, frame.seq, exc)

    def _detect(self, chain: Chain, frame: Frame) -> tuple[list[Detection], dict[str, np.ndarray]]:
        detector = chain.detector
        t0 = time.perf_counter()
        if frame.prepared is not None and frame.prepared[0] is detector:
            _, x, geo = frame.prepared
        else:  # the model was swapped since (or preprocessing failed): do it here, from the whole frame
            x, geo = detector.preprocess(frame.full())
            self.times.preprocess += time.perf_counter() - t0
        t1 = time.perf_counter()
        outputs = detector.infer(x)
        t2 = time.perf_counter()
        detections = detector.postprocess(outputs, geo)
        t3 = time.perf_counter()
        if chain.readers and detections:
            detections = chain.read(frame.image, frame.frame_size, detections)
        t4 = time.perf_counter()
        t = self.times
        t.inference += t2 - t1
        t.postprocess += t3 - t2
        t.stages += t4 - t3
        t.frames += 1
        return detections, outputs

    # --- numbers for the page, /metrics and the benchmark -----------------------------------------------
    def stats(self) -> dict[str, Any]:
        latest = self._latest
        chain = self.chain
        p50, p95 = self.latency.quantile(0.5), self.latency.quantile(0.95)
        return {
            "name": self.name,
            "source": self.capture.source.name,  # described: never with credentials
            "state": self.capture.state,
            "error": self.capture.error,
            "problem": self.problem,
            "model": chain.describe() if chain is not None else None,
            "models": self.camera.models(),
            "capture_fps": round(self.capture.meter.rate(), 2),
            "inference_fps": round(self.meter.rate(), 2),
            "frames_captured": self.capture.meter.total,
            "frames_processed": self.meter.total,
            "frames_dropped": self.queue.dropped,
            "frames_skipped": self.skipped,
            "frames_corrupt": self.capture.corrupt,
            "frame_errors": self.errors,
            "reconnects": self.capture.reconnects,
            "latency_ms_p50": round(p50 * 1000, 2) if p50 is not None else None,
            "latency_ms_p95": round(p95 * 1000, 2) if p95 is not None else None,
            "detections": len(latest.detections) if latest else 0,
            "texts": [d.text for d in latest.detections if d.text] if latest else [],
            "events_sent": self.events.sent,
            "frame_size": list(latest.frame.frame_size) if latest else None,
        }

"""One camera: capture thread → newest-frame queue → worker thread (preprocess → infer → postprocess).

Capture and inference overlap, so the pipeline runs at the rate of its slowest stage, not of their sum. The
worker publishes each result as `latest`; viewers (the MJPEG stream) wait for a newer one and draw it
themselves, so a browser costs the detector nothing. The detector can be swapped between two frames.
"""

from __future__ import annotations

import bisect
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fleet_protocol.messages import Detection

from .capture import Capture
from .config import CameraConfig
from .detector import Detector
from .events import EventGate, EventSink
from .frames import Frame, LatestQueue, RateMeter

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Result:
    frame: Frame
    detections: list[Detection]
    latency_s: float  # from the start of reading the frame to the end of post-processing
    model: str | None


@dataclass
class StageTimes:
    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
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


class Pipeline:
    def __init__(self, config: CameraConfig, detector: Detector | None = None, on_event: EventSink | None = None,
                 source=None, on_result=None) -> None:
        self.config = config
        self.on_result = on_result  # called on the worker thread with every Result (tests, benchmarks)
        self.name = config.name
        self.detector = detector
        self.events = EventGate(config.name, config.events, on_event)
        self.queue = LatestQueue(config.queue_size)
        self.capture = Capture(config.source, self.queue, self.events.lifecycle, source=source, prepare=self._prepare,
                               scale=self._decode_scale)
        self.meter = RateMeter()
        self.times = StageTimes()
        self.latency = LatencyStats()
        self.errors = 0
        self.last_error: str | None = None
        self.note: str | None = None  # e.g. why a new model was refused
        self.started_at = time.monotonic()
        self._latest: Result | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)

    # --- control ---------------------------------------------------------------------------------------
    def start(self) -> "Pipeline":
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

    def swap_detector(self, detector: Detector) -> None:
        self.detector = detector  # one reference: the frame in progress finishes on the old detector

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
            detector = self.detector
            try:
                detections = self._detect(detector, frame) if detector is not None else []
            except Exception as exc:  # one bad frame (or a model that chokes on it) must not stop the camera
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.errors == 1 or self.errors % 100 == 0:
                    log.warning("%s: frame %d failed (%d so far): %s", self.name, frame.seq, self.errors, self.last_error)
                continue
            done = time.perf_counter()
            result = Result(frame, detections, done - frame.t_grab, detector.spec.describe() if detector else None)
            self.latency.add(result.latency_s)
            self.meter.tick()
            with self._cond:
                self._latest = result
                self._cond.notify_all()
            if self.on_result is not None:
                self.on_result(result)
            if detections:
                self.events.offer(frame.ts, detections, {"frame": frame.seq, "model": result.model})

    def _decode_scale(self, frame_size: tuple[int, int]) -> int:
        detector = self.detector
        return detector.decode_scale(frame_size) if detector is not None else 1

    def _prepare(self, image, frame_size: tuple[int, int]):
        """Runs on the capture thread; a failure here is left for the worker to meet (and count)."""
        detector = self.detector
        if detector is None:
            return None
        t0 = time.perf_counter()
        try:
            x, geo = detector.preprocess(image, frame_size)
        except Exception:
            return None
        self.times.preprocess += time.perf_counter() - t0
        return detector, x, geo

    def _detect(self, detector: Detector, frame: Frame) -> list[Detection]:
        t0 = time.perf_counter()
        if frame.prepared is not None and frame.prepared[0] is detector:
            _, x, geo = frame.prepared
        else:  # the detector was swapped since (or preprocessing failed): do it here, from the whole frame
            x, geo = detector.preprocess(frame.full())
            self.times.preprocess += time.perf_counter() - t0
        t1 = time.perf_counter()
        outputs = detector.infer(x)
        t2 = time.perf_counter()
        detections = detector.postprocess(outputs, geo)
        t3 = time.perf_counter()
        t = self.times
        t.inference += t2 - t1
        t.postprocess += t3 - t2
        t.frames += 1
        return detections

    # --- numbers for the page, /metrics and the benchmark -----------------------------------------------
    def stats(self) -> dict[str, Any]:
        latest = self._latest
        p50, p95 = self.latency.quantile(0.5), self.latency.quantile(0.95)
        return {
            "name": self.name,
            "source": self.capture.source.name,
            "state": self.capture.state,
            "error": self.capture.error,
            "model": self.detector.spec.describe() if self.detector else None,
            "note": self.note,
            "capture_fps": round(self.capture.meter.rate(), 2),
            "inference_fps": round(self.meter.rate(), 2),
            "frames_captured": self.capture.meter.total,
            "frames_processed": self.meter.total,
            "frames_dropped": self.queue.dropped,
            "frames_corrupt": self.capture.corrupt,
            "frame_errors": self.errors,
            "reconnects": self.capture.reconnects,
            "latency_ms_p50": round(p50 * 1000, 2) if p50 is not None else None,
            "latency_ms_p95": round(p95 * 1000, 2) if p95 is not None else None,
            "detections": len(latest.detections) if latest else 0,
            "events_sent": self.events.sent,
            "frame_size": list(latest.frame.frame_size) if latest else None,
        }

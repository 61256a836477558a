"""Frames and the hand-over between capture and inference: a small queue where the newest frame wins."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # H×W×3 uint8 BGR, as OpenCV decodes
    seq: int
    ts: float  # wall-clock time the frame was taken off the source (for events)
    t_grab: float  # perf_counter when reading it began: end-to-end latency is measured from here
    t_ready: float  # perf_counter when it was decoded
    prepared: Any = None  # (detector, model input, geometry) when preprocessed on the capture thread
    jpeg: np.ndarray | None = None  # the encoded frame when `image` was decoded at reduced size
    size: tuple[int, int] | None = None  # (w, h) at the source's full size, which boxes are given in

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.size or (self.image.shape[1], self.image.shape[0])

    def full(self) -> np.ndarray:
        """The frame at full size, for people to look at: decoded again from `jpeg` when the detector only
        needed it smaller (the view does this at most a few times a second, and only while someone watches)."""
        if self.jpeg is not None:
            image = cv2.imdecode(self.jpeg, cv2.IMREAD_COLOR)
            if image is not None:
                return image
        return self.image


class LatestQueue:
    """Bounded FIFO that drops the *oldest* frame when full, and counts what it dropped.

    A slow consumer therefore always works on recent frames: the lag is bounded by the queue's length, and the
    rest of the backlog is thrown away instead of growing without limit.
    """

    def __init__(self, maxsize: int = 1) -> None:
        self._items: collections.deque[Frame] = collections.deque()
        self._maxsize = maxsize
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item: Frame, wait: threading.Event | None = None) -> None:
        """With `wait` (a stop flag), block while full instead of dropping: for a file read as fast as the
        detector goes, where every frame is worth processing and none is ever stale."""
        with self._cond:
            while wait is not None and len(self._items) >= self._maxsize and not wait.is_set():
                self._cond.wait(0.1)
            if len(self._items) >= self._maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()

    def get(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        return len(self._items)


class RateMeter:
    """Events per second over a sliding window (the last `window` seconds)."""

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self._times: collections.deque[float] = collections.deque()
        self.total = 0

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._times.append(now)
        self.total += 1
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        times = list(self._times)
        times = [t for t in times if t >= now - self.window]
        if len(times) < 2:
            return 0.0
        span = max(now - times[0], times[-1] - times[0])
        return (len(times) - 1) / span if span > 0 else 0.0

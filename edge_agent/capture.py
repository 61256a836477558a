"""Opt-in data capture on the device: which live inputs are kept, at what rate, and faces blurred before they leave.

The pieces the sampler (edge_agent/sampler.py) puts together and the uploader (edge_agent/capture_upload.py)
drains: plain classes with injected clocks, so the caps are tested over simulated weeks.

- `CaptureGate`: `Desired.capture` says whether the device takes part (`enabled`), how many samples an hour
  (`max_per_hour`, any sliding hour) and how many bytes a day (`max_bytes_per_day`, any sliding 24 h) it may
  keep. A sample qualifies when the model was unsure (confidence below `min_confidence`) or the shadow
  candidate disagreed with the live answer.
- `FaceBlur`: BlazeFace boxes (any detector callable: image → boxes in pixels), each grown by a margin and
  pixelated; the frame is checked again and a face still found is pixelated again; a frame where one is still
  found after that is refused (None): nothing with a recognisable face leaves the device.
- `Spool`: kept samples on disk as whole envelopes (fleet_protocol/capture.py) until the API acknowledges them,
  bounded in bytes (the oldest go first, counted): a device that cannot upload does not fill its disk.
- `fit_jpeg`: a frame as a JPEG that fits one message, re-encoded smaller until it does.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fleet_protocol.capture import MAX_SAMPLE_BYTES, Sample, pack
from fleet_protocol.messages import Capture

HOUR, DAY = 3600.0, 86_400.0

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
FindFaces = Callable[[np.ndarray], Sequence[Box]]


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str  # low_confidence, shadow_disagrees; or why not: not_opted_in, confident, hourly_cap, daily_bytes


class CaptureGate:
    def __init__(self, policy: Capture, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.clock = clock
        self._kept: deque[float] = deque()  # times of samples kept in the last hour
        self._bytes: deque[tuple[float, int]] = deque()  # (time, size) of samples kept in the last day
        self._bytes_sum = 0

    def update(self, policy: Capture) -> None:
        """A new desired state: the caps change, what was kept still counts against them."""
        self.policy = policy

    def qualifies(self, confidence: float | None, shadow_agrees: bool | None) -> str | None:
        if shadow_agrees is False:
            return "shadow_disagrees"
        if confidence is not None and confidence < self.policy.min_confidence:
            return "low_confidence"
        return None

    def decide(self, size: int, confidence: float | None, shadow_agrees: bool | None = None) -> Decision:
        p = self.policy
        if not p.enabled:
            return Decision(False, "not_opted_in")
        why = self.qualifies(confidence, shadow_agrees)
        if why is None:
            return Decision(False, "confident")
        now = self.clock()
        while self._kept and self._kept[0] <= now - HOUR:
            self._kept.popleft()
        while self._bytes and self._bytes[0][0] <= now - DAY:
            self._bytes_sum -= self._bytes.popleft()[1]
        if len(self._kept) >= p.max_per_hour:
            return Decision(False, "hourly_cap")
        if self._bytes_sum + size > p.max_bytes_per_day:
            return Decision(False, "daily_bytes")
        self._kept.append(now)
        self._bytes.append((now, size))
        self._bytes_sum += size
        return Decision(True, why)

    def correct(self, delta: int) -> None:
        """The size a sample was kept with was an estimate (a frame's JPEG is made later, off the caller's
        thread): count the difference now, so the daily byte cap holds on what was really kept."""
        if delta:
            self._bytes.append((self.clock(), delta))
            self._bytes_sum += delta


def pixelate(image: np.ndarray, box: Box, margin: float = 0.25, cells: int = 6) -> None:
    """In place: the box, grown by `margin` of its size on each side, as a few coarse cells (no features left)."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    a, b = max(0, int(x1 - mx)), max(0, int(y1 - my))
    c, d = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    if c - a < 2 or d - b < 2:
        return
    region = image[b:d, a:c]
    small = cv2.resize(region, (cells, cells), interpolation=cv2.INTER_AREA)
    image[b:d, a:c] = cv2.GaussianBlur(cv2.resize(small, (c - a, d - b), interpolation=cv2.INTER_NEAREST), (0, 0), 3)


class FaceBlur:
    def __init__(self, find_faces: FindFaces, passes: int = 2) -> None:
        self.find_faces = find_faces
        self.passes = passes

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """A copy of `image` with every face BlazeFace finds pixelated; None if a face survives every pass."""
        out = image.copy()
        for _ in range(self.passes):
            boxes = list(self.find_faces(out))
            if not boxes:
                return out
            for box in boxes:
                pixelate(out, box)
        return None if list(self.find_faces(out)) else out


def new_sample_id() -> str:
    """32 hex digits, ordered by time (microseconds, then random): a spool read back after a restart sorts its
    samples oldest first even where the disk's timestamps are too coarse to tell them apart."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(9)}"


def fit_jpeg(image: np.ndarray, max_bytes: int = MAX_SAMPLE_BYTES) -> tuple[bytes, int, int]:
    """→ (JPEG, width, height): quality 90 and the frame's own size when that fits, else lower quality, then
    smaller, until it fits one message (a sample is never split)."""
    for scale in (1.0, 0.75, 0.5, 0.35, 0.25, 0.18, 0.125):
        frame = image if scale == 1.0 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        for quality in (90, 75, 60):
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise ValueError("the image does not encode as JPEG")
            if jpeg.size <= max_bytes:
                return jpeg.tobytes(), frame.shape[1], frame.shape[0]
    raise ValueError(f"the image does not fit {max_bytes} bytes even at 1/8 of its size")


SUFFIX = ".efc"


class Spool:
    """Kept samples on the device's disk until the API acknowledges them: one file per sample, `<id>.efc`, the
    envelope exactly as it is sent (header and data, fleet_protocol/capture.py), written through a temporary name
    so a crash leaves no half sample; what an agent restart finds is uploaded after it. At most `max_bytes`: a
    new sample pushes out the oldest (counted in `dropped`)."""

    def __init__(self, folder: Path, max_bytes: int = 256 * 1024**2) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.dropped = 0
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        for part in folder.glob(".*.part"):  # a write a crash cut short
            part.unlink(missing_ok=True)
        found = sorted(folder.glob(f"*{SUFFIX}"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        self._sizes: OrderedDict[str, int] = OrderedDict((p.stem, p.stat().st_size) for p in found)  # oldest first
        self._total = sum(self._sizes.values())

    def put(self, header: Sample, data: bytes) -> list[str]:
        """Keep one sample (ValueError when the header does not describe the data); → the ids pushed out."""
        envelope = pack(header, data)
        if len(envelope) > self.max_bytes:
            raise ValueError(f"a sample of {len(envelope)} bytes does not fit a spool of {self.max_bytes}")
        tmp = self.folder / f".{header.id}{SUFFIX}.part"
        tmp.write_bytes(envelope)
        dropped = []
        with self._lock:
            while self._sizes and self._total + len(envelope) > self.max_bytes:
                old, size = self._sizes.popitem(last=False)
                (self.folder / f"{old}{SUFFIX}").unlink(missing_ok=True)
                self._total -= size
                dropped.append(old)
            tmp.rename(self.folder / f"{header.id}{SUFFIX}")
            self._sizes[header.id] = len(envelope)
            self._total += len(envelope)
            self.dropped += len(dropped)
        return dropped

    def get(self, sample_id: str) -> bytes | None:
        """The envelope as it is sent; None when it is no longer here (acknowledged, or pushed out)."""
        if sample_id not in self._sizes:
            return None
        try:
            return (self.folder / f"{sample_id}{SUFFIX}").read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, sample_id: str) -> bool:
        with self._lock:
            size = self._sizes.pop(sample_id, None)
            if size is None:
                return False
            self._total -= size
        (self.folder / f"{sample_id}{SUFFIX}").unlink(missing_ok=True)
        return True

    def pending(self) -> list[str]:
        """Every sample not yet acknowledged, oldest first."""
        with self._lock:
            return list(self._sizes)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def total_bytes(self) -> int:
        return self._total

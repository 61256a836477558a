"""Opt-in data capture on the device: which live inputs are kept, at what rate, and faces blurred before they leave.

Only the device-side core is here (selection, caps, face blurring, a local spool); the upload to the fleet API is
not built yet (see docs/agent.md). Plain classes with injected clocks: the caps are tested over simulated weeks.

- `CaptureGate`: `Desired.capture` says whether the device takes part (`enabled`), how many samples an hour
  (`max_per_hour`, any sliding hour) and how many bytes a day (`max_bytes_per_day`, any sliding 24 h) it may
  keep. A sample qualifies when the model was unsure (confidence below `min_confidence`) or the shadow
  candidate disagreed with the live answer.
- `FaceBlur`: BlazeFace boxes (any detector callable: image → boxes in pixels), each grown by a margin and
  pixelated; the frame is checked again and a face still found is pixelated again; a frame where one is still
  found after that is refused (None): nothing with a recognisable face leaves the device.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

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


class Spool:
    """Kept samples on the device's disk until they are uploaded: `<id>.jpg` and `<id>.json` (the model's outputs
    as provisional labels, why it was kept); written through a temporary name, so a crash leaves no half sample."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, image: np.ndarray, meta: dict[str, Any]) -> str:
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise ValueError("the image does not encode as JPEG")
        sample_id = uuid.uuid4().hex
        for suffix, data in ((".jpg", jpeg.tobytes()), (".json", json.dumps({"id": sample_id, **meta}).encode())):
            tmp = self.folder / f".{sample_id}{suffix}.part"
            tmp.write_bytes(data)
            tmp.rename(self.folder / f"{sample_id}{suffix}")
        return sample_id

    def pending(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json"))

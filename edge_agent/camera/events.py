"""What the camera reports: detections above a minimum score, at most `max_per_s` events a second, and nothing
at all for frames without detections; plus lifecycle notes (source lost, back, models unavailable)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from fleet_protocol.cameras import CameraEvents
from fleet_protocol.messages import Detection, Event

log = logging.getLogger(__name__)

EventSink = Callable[[Event], None]


def bounded(detail: dict[str, Any]) -> dict[str, Any]:
    """The contract bounds an event's detail strings (256 characters): a long error (an OpenCV message, a chain
    of long model names) is cut, never a validation error on the capture or worker thread."""
    return {k: v[:253] + "…" if isinstance(v, str) and len(v) > 256 else v for k, v in detail.items()}


class EventGate:
    def __init__(self, source: str, config: CameraEvents, sink: EventSink | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.config = config
        self.sink = sink
        self.clock = clock
        self.interval = 1.0 / config.max_per_s
        self._last = float("-inf")
        self.sent = 0

    def offer(self, frame_ts: float, detections: list[Detection], detail: dict[str, Any] | None = None) -> Event | None:
        hits = [d for d in detections if d.score >= self.config.min_score]
        if not hits:
            return None
        now = self.clock()
        if now - self._last < self.interval:  # within the rate limit: dropped
            return None
        self._last = now
        return self._send(Event(kind="detections", source=self.source, frame_ts=frame_ts, detections=hits[:1000],
                                detail=bounded(detail or {})))

    def lifecycle(self, what: str, detail: dict[str, Any] | None = None) -> Event | None:
        return self._send(Event(kind="lifecycle", source=self.source, detail=bounded({"event": what, **(detail or {})})))

    def _send(self, event: Event) -> Event | None:
        if self.sink is None:
            return event
        try:
            self.sink(event)
            self.sent += 1
        except Exception:  # the broker being away must never stop the camera
            log.exception("could not send a camera event")
        return event

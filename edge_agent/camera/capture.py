"""The capture thread: reads a source as fast as it delivers, hands the newest frames on, reconnects.

It never waits for inference: frames go into a LatestQueue, which drops the oldest when the detector is
behind. A failing source is closed and reopened with exponential backoff; nothing above it sees more than
a pause in frames and a lifecycle note.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .frames import Frame, LatestQueue, RateMeter
from .sources import CorruptFrame, EndOfStream, Source, SourceError, create

log = logging.getLogger(__name__)


class Capture:
    def __init__(self, source_config, queue: LatestQueue, on_lifecycle: Callable[[str, dict[str, Any]], object] | None = None,
                 source: Source | None = None, prepare: Callable[[Any, tuple[int, int]], Any] | None = None,
                 scale: Callable[[tuple[int, int]], int] | None = None) -> None:
        self.config = source_config
        # Preprocessing on this thread, overlapped with inference on the worker: it balances the two threads.
        self.prepare = prepare
        # How much smaller a JPEG frame may be decoded, given its full size: the detector needs far fewer pixels.
        self.scale = scale
        self.source = source or create(source_config)
        self.queue = queue
        self.on_lifecycle = on_lifecycle or (lambda _kind, _detail: None)
        self.meter = RateMeter()
        self.state = "starting"  # starting, live, reconnecting, ended, stopped
        self.ever_live = False  # a source that never opened is most likely misaddressed
        self.error: str | None = None
        self.corrupt = 0
        self.reconnects = 0
        self.skipped = 0  # frames a live source delivered that the frame-rate cap left undecoded
        self.grab_s = 0.0  # time spent reading and decoding, for the share-of-time report
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.source.name}", daemon=True)

    def start(self) -> Capture:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        delay = self.config.retry_s
        lost = False
        while not self._stop.is_set():
            try:
                self.source.open()
            except SourceError as exc:
                self.state, self.error = "reconnecting", str(exc)  # state before the event: reports read it
                if not lost:
                    log.warning("%s", exc)
                    self.on_lifecycle("source_unavailable", {"error": str(exc)})
                lost = True
                self._stop.wait(delay)
                delay = min(delay * 2, self.config.retry_max_s)
                continue
            self.state, self.error = "live", None
            self.ever_live = True
            if lost:
                self.reconnects += 1
                log.info("%s is back", self.source.name)
                self.on_lifecycle("source_reconnected", {"reconnects": self.reconnects})
            lost, delay = False, self.config.retry_s
            try:
                self._read_until_failure()
            except EndOfStream:
                self.state = "ended"
                self.on_lifecycle("source_ended", {})
                break
            except SourceError as exc:
                log.warning("%s", exc)
                lost = True
                self.state, self.error = "reconnecting", str(exc)
                self.on_lifecycle("source_lost", {"error": str(exc)})
            except Exception as exc:  # a backend bug must not kill the thread: treat it as a lost source
                log.exception("capture from %s failed", self.source.name)
                lost = True
                self.state, self.error = "reconnecting", f"{type(exc).__name__}: {exc}"
            finally:
                self.source.close()
        if self.state != "ended":
            self.state = "stopped"
        self.source.close()

    def _read_until_failure(self) -> None:
        period = 1.0 / self.config.max_fps if self.config.max_fps else 0.0
        due = time.monotonic()
        while not self._stop.is_set():
            if period:
                now = time.monotonic()
                if now < due:
                    if self.source.live:
                        # Drain the camera without decoding, so the frame we do decode is the current one.
                        self.source.grab()
                        self.skipped += 1
                        continue
                    self._stop.wait(due - now)
                due = max(due + period, time.monotonic() - period)
            self.source.pace()
            t0 = time.perf_counter()
            size = self.source.frame_size
            try:
                image = self.source.read(self.scale(size) if self.scale is not None and size else 1)
            except CorruptFrame as exc:
                self.corrupt += 1
                log.debug("%s", exc)
                continue
            t1 = time.perf_counter()
            self.grab_s += t1 - t0
            self._seq += 1
            self.meter.tick()
            ts = time.time()
            size = self.source.frame_size or (image.shape[1], image.shape[0])
            prepared = self.prepare(image, size) if self.prepare is not None else None
            frame = Frame(image=image, seq=self._seq, ts=ts, t_grab=t0, t_ready=t1, prepared=prepared,
                          jpeg=self.source.jpeg, size=size)
            self.queue.put(frame, wait=self._stop if self.source.waits_for_reader else None)

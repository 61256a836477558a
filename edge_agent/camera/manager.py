"""The cameras of one device, as its desired state lists them (`Desired.cameras`).

`apply` creates, changes and stops pipelines to match the list; a camera that is unchanged keeps running.
Each pipeline names its models and takes them from the ModelHost frame by frame, so a model rolled out or
hot-swapped later is picked up without restarting the camera, and a camera whose model is not (yet) on the
device reports `failed` with the reason while every other camera runs. Nothing here raises for one bad
camera: `report()` says what is wrong with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fleet_protocol.cameras import Camera
from fleet_protocol.manifest import Manifest
from fleet_protocol.messages import CameraReport, CameraState, CameraTelemetry, Event

from .events import EventSink, bounded
from .pipeline import FrameSampler, Pipeline
from .stages import Host, Resolver, check

log = logging.getLogger(__name__)


class CameraManager:
    def __init__(self, host: Host, on_event: EventSink | None = None, *, on_change: Callable[[], None] | None = None,
                 pipeline_factory: Callable[..., Pipeline] = Pipeline) -> None:
        self.host = host
        self.on_event = on_event
        # Called after a camera's state changed (its lifecycle events), so the agent can report it at once
        # instead of at its next model change. From a thread of its own: the caller may hold the lock under
        # which it called `apply`, and `apply` waits for pipelines whose threads send these events.
        self.on_change = on_change
        self._changed = threading.Event()
        self._closed = False
        self._notifier = threading.Thread(target=self._notify, name="camera-changes", daemon=True)
        self._notifier.start()
        self.pipelines: dict[str, Pipeline] = {}
        self.cameras: list[Camera] = []  # as last applied, including any that could not start
        self._factory = pipeline_factory
        self.sampler: FrameSampler | None = None  # data capture, offered every camera's frames (set before `apply`)
        self._lock = threading.Lock()

    # --- the desired state -------------------------------------------------------------------------------
    def apply(self, cameras: list[Camera]) -> None:
        """Run exactly these cameras: start new ones, restart changed ones, stop the ones no longer listed."""
        wanted = {c.name: c for c in cameras}
        with self._lock:
            self.cameras = list(cameras)
            for name, pipeline in list(self.pipelines.items()):
                if wanted.get(name) != pipeline.camera:
                    pipeline.stop()
                    del self.pipelines[name]
                    log.info("camera %s stopped%s", name, "" if name not in wanted else " (changed)")
            for camera in cameras:
                if camera.name in self.pipelines:
                    continue
                try:
                    pipeline = self._factory(camera, Resolver(camera, self.host), self._event,
                                             **({"sampler": self.sampler} if self.sampler is not None else {})).start()
                except Exception as exc:  # one camera must never stop the others from starting
                    log.error("camera %s could not start: %s", camera.name, exc)
                    self._lifecycle(camera.name, "camera_failed", f"{type(exc).__name__}: {exc}")
                    continue
                self.pipelines[camera.name] = pipeline
                log.info("camera %s: %s → %s", camera.name, camera.source.describe(), " → ".join(camera.models()))

    def check(self, models: dict[str, Manifest]) -> dict[str, str]:
        """camera name → why these models cannot play their parts in it (only such cameras are listed). The
        reconciler asks before it swaps a model in, so a model the cameras naming it cannot use is refused
        there (reported failed) and the one it would replace keeps serving. Models not given are not judged."""
        out = {}
        for camera in list(self.cameras):
            reason = check(camera, models)
            if reason is not None:
                out[camera.name] = reason
        return out

    # --- what the device reports -------------------------------------------------------------------------
    def report(self) -> dict[str, CameraReport]:
        return {name: report(p) for name, p in list(self.pipelines.items())}

    def telemetry(self) -> dict[str, CameraTelemetry]:
        out = {}
        for name, p in list(self.pipelines.items()):
            out[name] = CameraTelemetry(fps=min(round(p.meter.rate(), 2), 10_000), frames=p.meter.total, dropped=p.queue.dropped)
        return out

    def stats(self) -> list[dict]:
        """The numbers of every camera for the page and /camera/stats."""
        return [{**p.stats(), "refused": p.problem} for p in list(self.pipelines.values())]

    def stop(self) -> None:
        with self._lock:
            for pipeline in self.pipelines.values():
                pipeline.stop()
            self.pipelines.clear()
        self._closed = True
        self._changed.set()

    def _event(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)
        if event.kind == "lifecycle":
            self._changed.set()

    def _notify(self) -> None:
        while not self._closed:
            self._changed.wait()
            self._changed.clear()
            if self._closed:
                return
            time.sleep(0.05)  # a burst of changes (several cameras starting) is one report
            callback = self.on_change
            if callback is not None:
                try:
                    callback()
                except Exception:  # reporting must never stop a camera
                    log.exception("reporting a camera's change failed")

    def _lifecycle(self, camera: str, what: str, error: str) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(Event(kind="lifecycle", source=camera, detail=bounded({"event": what, "error": error})))
        except Exception:
            log.exception("could not report %s", what)


def report(pipeline: Pipeline) -> CameraReport:
    """A pipeline's state as the fleet sees it. A source that never opened is `failed` (most likely a wrong
    address; it is still retried), one that was live and went away is `reconnecting`."""
    capture = pipeline.capture
    error: str | None = None
    if pipeline.problem is not None:
        state, error = CameraState.failed, pipeline.problem
    elif capture.state == "reconnecting":
        state = CameraState.reconnecting if capture.ever_live else CameraState.failed
        error = capture.error
    elif capture.state == "ended":
        state, error = CameraState.failed, "the source ended (a file that does not loop)"
    elif capture.state == "live" and pipeline.chain is not None:
        state = CameraState.running
    else:
        state = CameraState.starting
    return CameraReport(state=state, source=pipeline.capture.source.name[:2048], models=pipeline.camera.models(),
                        error=error[:2000] if error else None)

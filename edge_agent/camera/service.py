"""The cameras of one device: pipelines started from config entries, and the model they share.

A new model or a new camera config is checked completely (every camera's post-processing plug-in built)
before anything running is touched; if any check fails it is refused, reported as a lifecycle event, and
the cameras carry on as they were.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from fleet_protocol.messages import Event

from .config import CameraConfig, parse_cameras
from .detector import Detector, ModelSpec
from .detectors import UnsupportedModel
from .events import EventSink
from .pipeline import Pipeline

log = logging.getLogger(__name__)


class CameraService:
    def __init__(self, on_event: EventSink | None = None) -> None:
        self.on_event = on_event
        self.pipelines: dict[str, Pipeline] = {}
        self.configs: list[CameraConfig] = []
        self.model: tuple[ModelSpec, Any, Any] | None = None  # spec, session, owner
        self.refused: str | None = None  # why the latest model or config was refused, for the page
        self._lock = threading.Lock()

    # --- the model -------------------------------------------------------------------------------------
    def set_model(self, spec: ModelSpec, session, owner: Any = None) -> None:
        """Use this model on every camera, or raise UnsupportedModel (reported) and keep the old one."""
        with self._lock:
            try:
                detectors = {c.name: self.detector(c, (spec, session, owner)) for c in self.configs}
            except (UnsupportedModel, ValueError) as exc:
                self._refuse("camera_model_refused", f"{spec.describe()}: {exc}", model=spec.describe())
                raise UnsupportedModel(str(exc)) from None
            self.model = (spec, session, owner)
            self.refused = None
            for name, detector in detectors.items():
                self.pipelines[name].swap_detector(detector)
                self.pipelines[name].note = None
            if detectors:
                log.info("cameras now detect with %s", spec.describe())

    # --- the cameras -----------------------------------------------------------------------------------
    def apply(self, entries: list[dict[str, Any]] | list[CameraConfig]) -> None:
        """Run exactly these cameras. Unchanged ones keep running; a bad entry refuses the whole list."""
        with self._lock:
            try:
                configs = parse_cameras([e.model_dump(mode="json") if isinstance(e, CameraConfig) else e for e in entries])
                detectors = {c.name: self.detector(c, self.model) for c in configs} if self.model else {}
            except (UnsupportedModel, ValueError) as exc:
                self._refuse("camera_config_refused", str(exc))
                raise ValueError(str(exc)) from None
            wanted = {c.name: c for c in configs}
            for name, pipeline in list(self.pipelines.items()):
                if wanted.get(name) != pipeline.config:
                    pipeline.stop()
                    del self.pipelines[name]
            for config in configs:
                if config.name not in self.pipelines:
                    self.pipelines[config.name] = Pipeline(config, detectors.get(config.name), self.on_event).start()
                    log.info("camera %s: %s", config.name, config.source.describe())
            self.configs = configs
            self.refused = None

    def stop(self) -> None:
        with self._lock:
            for pipeline in self.pipelines.values():
                pipeline.stop()
            self.pipelines.clear()
            self.configs = []

    def stats(self) -> list[dict[str, Any]]:
        return [{**p.stats(), "refused": self.refused} for p in list(self.pipelines.values())]

    # --- internals -------------------------------------------------------------------------------------
    @staticmethod
    def detector(config: CameraConfig, model: tuple[ModelSpec, Any, Any] | None) -> Detector | None:
        if model is None:
            return None
        spec, session, owner = model
        return Detector(spec, session, resize=config.resize, overrides=config.postprocess, owner=owner)

    def _refuse(self, what: str, error: str, **detail: Any) -> None:
        log.error("%s: %s", what.replace("_", " "), error)
        self.refused = error
        for pipeline in self.pipelines.values():
            pipeline.note = f"refused: {error}"
        if self.on_event is not None:
            try:
                self.on_event(Event(kind="lifecycle", detail={"event": what, "error": error, **detail}))
            except Exception:
                log.exception("could not report %s", what)

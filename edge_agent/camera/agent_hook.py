"""Wiring the cameras into the agent: one call from Agent.__init__.

The cameras follow the desired state: the runtime config's `sources` say which cameras run, and the model
the engine serves is the one they detect with. Both are watched (a cheap poll of two references), so the
runtime needs no knowledge of cameras. One hook goes the other way: an admission check the reconciler runs
before a swap, so a model whose task has no post-processing plug-in for the configured cameras is refused
there (reported `failed`, the old model keeps serving) instead of reaching the cameras.
"""

from __future__ import annotations

import logging
import threading

from ..reconcile import ModelRejected
from .config import parse_cameras
from .detector import ModelSpec
from .detectors import UnsupportedModel
from .metrics import register
from .service import CameraService
from .view import create_router

log = logging.getLogger(__name__)


class AgentWatcher:
    def __init__(self, service: CameraService, runtime, engine, interval: float = 0.5) -> None:
        self.service = service
        self.runtime = runtime  # () -> RuntimeConfig
        self.engine = engine
        self.interval = interval
        self._model_key: str | None = None
        self._sources: list | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera-watcher", daemon=True)

    def start(self) -> "AgentWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.service.stop()

    def check(self) -> None:
        model = self.engine.current
        if model is not None and model.sha256 != self._model_key:
            self._model_key = model.sha256  # refused or not, the same model is judged once
            try:
                self.service.set_model(ModelSpec.from_manifest(model.stored.manifest, model.sha256), model.session, owner=model)
            except UnsupportedModel:
                pass  # reported by the service
        sources = list(self.runtime().sources)
        if sources != self._sources:
            self._sources = sources
            try:
                self.service.apply(sources)
            except ValueError:
                pass  # reported by the service

    def admit(self, model, runtime) -> None:
        """Reconciler admission check: the configured cameras must be able to decode the new model."""
        if not runtime.sources:
            return
        spec = ModelSpec.from_manifest(model.stored.manifest, model.sha256)
        try:
            for config in parse_cameras(list(runtime.sources)):
                CameraService.detector(config, (spec, model.session, model))
        except (UnsupportedModel, ValueError) as exc:
            raise ModelRejected(f"the cameras cannot use {spec.describe()}: {exc}") from None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the watcher must outlive any surprise in one round
                log.exception("camera watcher")


def attach(agent) -> AgentWatcher:
    """Cameras for `agent`: events out through its MQTT link, the view on its local HTTP server."""
    service = CameraService(on_event=agent.link.send_event)
    register(service)
    agent.app.include_router(create_router(service))
    watcher = AgentWatcher(service, lambda: agent.reconciler.runtime, agent.engine)
    agent.reconciler.admission_checks.append(watcher.admit)
    return watcher.start()

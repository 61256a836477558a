"""Wiring: store, model host, reconciler, MQTT link, telemetry, cameras and the local HTTP server of one device."""

from __future__ import annotations

import importlib.util
import logging
import time

import uvicorn

from fleet_protocol.messages import Health

from . import health
from .capture import Spool
from .capture_metrics import CaptureCollector
from .capture_upload import Uploader
from .http.server import create_app
from .mqtt.link import AgentLink
from .reconcile import Reconciler
from .runtime.host import ModelHost
from .sampler import Sampler
from .settings import AgentSettings
from .store import ModelStore
from .telemetry import TelemetryLoop

log = logging.getLogger(__name__)


class ServeError(RuntimeError):
    """The local API could not be served: the agent stops rather than run half (no one could reach its models)."""


def uvicorn_config(app, host: str, port: int) -> uvicorn.Config:
    """httptools and uvloop when installed (uvicorn[standard]): measured ~2× less per-request overhead."""
    fast = importlib.util.find_spec("httptools") is not None
    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                          http="httptools" if fast else "h11", loop=loop)


def face_finder(host: ModelHost, settings: AgentSettings):
    """What blurs faces in captured frames (edge_agent/camera/faces.py), when the camera part is installed."""
    if importlib.util.find_spec("edge_agent.camera.faces") is None:
        return lambda: None
    from fleet_protocol.signing import public_keys

    from .camera.faces import FaceFinder

    return FaceFinder(host, settings.face_detector, public_keys(settings.trusted_keys), work_dir=settings.data_dir)


def camera_manager(host: ModelHost, on_event):
    """The camera pipelines (edge_agent/camera/manager.py) when that part of the agent is installed."""
    if importlib.util.find_spec("edge_agent.camera.manager") is None:
        return None
    from .camera.manager import CameraManager

    return CameraManager(host, on_event)


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.restarts = health.count_start(settings.data_dir)  # once per process: the starts before this one
        self.store = ModelStore(settings.data_dir, keep=settings.keep_models)
        self.host = ModelHost(batch_workers=settings.batch_workers)
        # Data capture: kept samples wait on disk (surviving a restart) until the fleet acknowledges them.
        spool = Spool(settings.data_dir / "capture", max_bytes=int(settings.capture_spool_mb * 1024 * 1024))
        self.sampler = Sampler(spool, find_faces=face_finder(self.host, settings))
        self.host.sampler = self.sampler  # before any model is served: every one is tapped
        self.reconciler = Reconciler(settings, self.store, self.host)
        self.link = AgentLink(settings, self.reconciler)
        self.reconciler.transport = self.link
        self.uploader = Uploader(spool, self.link.send_sample, timeout_s=settings.capture_ack_timeout_s)
        self.sampler.on_kept = self.uploader.wake
        self.link.uploader = self.uploader
        self.host.stats.registry.register(CaptureCollector(self.sampler, self.uploader))
        self.cameras = camera_manager(self.host, self.link.send_event)
        if self.cameras is not None:
            self.cameras.sampler = self.sampler
        self.reconciler.cameras = self.cameras
        if self.cameras is not None:  # a camera that fails, recovers or gets its models is reported at once
            self.cameras.on_change = self.reconciler.publish
        self.telemetry = TelemetryLoop(self.host, self.link.send_telemetry, settings.telemetry_interval_s,
                                       cameras=self.cameras, health=self.health, on_tick=self.reconciler.refresh)
        self.app = create_app(self.host, int(settings.max_request_mb * 1024 * 1024), control=self.reconciler,
                              inline_below_ms=settings.inline_below_ms, workers=settings.infer_workers or None)
        if self.cameras is not None:  # the camera page, /stream and /camera/stats; camera numbers on /metrics
            from .camera.metrics import register
            from .camera.view import create_router

            register(self.cameras)
            self.app.include_router(create_router(self.cameras))

    def health(self) -> Health | None:
        return health.collect(self.settings.data_dir, self.started_at, self.restarts)

    def start(self) -> None:
        """Everything but the local API. The models on disk are served before the network is even tried."""
        self.reconciler.boot()
        self.reconciler.start()
        self.sampler.start()
        self.uploader.start()
        self.link.start()
        self.telemetry.start()

    def stop(self) -> None:
        if self.cameras is not None:
            self.cameras.stop()
        self.telemetry.stop()
        self.sampler.stop()
        self.uploader.stop()
        self.link.stop()
        self.reconciler.stop()
        self.host.close()

    def run(self) -> None:
        """Serve until interrupted."""
        self.start()
        server = uvicorn.Server(uvicorn_config(self.app, self.settings.http_host, self.settings.http_port))
        log.info("device %s: local API on http://%s:%d", self.settings.device_id, self.settings.http_host, self.settings.http_port)
        try:
            try:
                server.run()
            except SystemExit:  # uvicorn's way of saying it could not start (the port is taken, say)
                pass
            if not server.started and not server.should_exit:
                raise ServeError(f"cannot serve the local API on http://{self.settings.http_host}:"
                                 f"{self.settings.http_port} (is the port taken?)")
        finally:
            self.stop()

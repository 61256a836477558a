"""Wiring: store, engine, reconciler, MQTT link and the local HTTP server of one device."""

from __future__ import annotations

import logging
import threading

import uvicorn

from .engine import Engine
from .reconcile import Reconciler
from .server import create_app
from .settings import AgentSettings
from .store import ModelStore
from .sync import AgentLink

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.data_dir, keep=settings.keep_models)
        self.engine = Engine()
        self.reconciler = Reconciler(settings, self.store, self.engine)
        self.link = AgentLink(settings, self.reconciler)
        self.reconciler.transport = self.link
        self.app = create_app(self.engine, int(settings.max_request_mb * 1024 * 1024))

    def run(self) -> None:
        """Serve until interrupted. The model on disk is served before the network is even tried."""
        self.reconciler.boot()
        self.reconciler.start()
        self.link.start()
        config = uvicorn.Config(self.app, host=self.settings.http_host, port=self.settings.http_port,
                                log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        log.info("device %s: local API on http://%s:%d", self.settings.device_id, self.settings.http_host, self.settings.http_port)
        try:
            server.run()
        finally:
            self.link.stop()
            self.reconciler.stop()

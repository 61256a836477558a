"""Wiring: database, broker connection, core service and HTTP routes in one FastAPI app."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .db.session import make_engine, make_sessions
from .errors import FleetError
from .mqtt import handlers
from .mqtt.broker import Broker
from .routes import devices, health, models, rollouts
from .service import FleetService
from .settings import ApiSettings

log = logging.getLogger(__name__)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = make_engine(settings.database_url)
        sessions = make_sessions(engine)
        broker = Broker(
            settings.broker_url, client_id=settings.mqtt_client_id, username=settings.mqtt_username,
            password=settings.mqtt_password, tls_ca=str(settings.mqtt_tls_ca) if settings.mqtt_tls_ca else None,
        )
        service = FleetService(settings, sessions, broker)
        broker.subscriptions = handlers.subscriptions(service.topics, settings.shared_subscription_group)
        broker.on_message = lambda topic, payload: handlers.handle(service, topic, payload)
        broker.on_connected = service.flush_outbox  # anything committed while we were away goes out now
        app.state.service, app.state.broker = service, broker
        broker.start()
        stop = threading.Event()

        def ticker() -> None:
            while not stop.wait(settings.tick_interval_s):
                try:
                    service.tick()
                except Exception:  # keep ticking; the next tick retries
                    log.exception("rollout tick failed")

        thread = threading.Thread(target=ticker, name="rollout-ticker", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            broker.stop()
            service.close()
            engine.dispose()

    app = FastAPI(title="edgefleet fleet API", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(FleetError)
    async def _fleet_error(_request: Request, exc: FleetError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    for router in (health.router, models.router, devices.router, rollouts.router):
        app.include_router(router)
    return app

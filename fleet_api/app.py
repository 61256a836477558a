"""Wiring: database, broker connection, core service, HTTP routes and the dashboard in one FastAPI app."""

from __future__ import annotations

import logging
import sys
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from fleet_protocol.topics import Topics

from . import web
from .captures.metrics import CaptureCollector
from .db.session import make_engine, make_sessions
from .errors import FleetError, Unauthorized
from .insights.metrics import AlertCollector
from .metrics import FleetCollector
from .mqtt import handlers
from .mqtt.broker import Broker
from .mqtt.dynsec import DynSec
from .mqtt.telemetry_receiver import TelemetryReceiver
from .routes import alerts, captures, devices, drift, health, models, profiles, rollouts, security
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
            workers=settings.mqtt_workers or (4 if engine.dialect.name == "postgresql" else 1),
        )
        topics = Topics(settings.topic_prefix)
        broker.subscriptions = handlers.subscriptions(topics, settings.shared_subscription_group)
        receiver = None
        if settings.telemetry_receiver:  # telemetry on a connection of its own; paho keeps the rest
            broker.subscriptions = [s for s in broker.subscriptions if not s[0].endswith("/telemetry")]
            receiver = TelemetryReceiver(
                settings.broker_url, handlers.telemetry_subscription(topics, settings.shared_subscription_group),
                lambda batch: handlers.handle_telemetry_batch(service, batch),
                client_id=f"{settings.mqtt_client_id}-telemetry" if settings.mqtt_client_id else "",
                username=settings.mqtt_username, password=settings.mqtt_password,
                tls_ca=str(settings.mqtt_tls_ca) if settings.mqtt_tls_ca else None,
            )
        dynsec = DynSec(broker, topics, settings.mqtt_username) if settings.dynsec else None
        # With per-device roles, a desired state reaches the broker only once its device may receive what it names.
        service = FleetService(settings, sessions, dynsec.granting(broker) if dynsec else broker)
        service.broker_admin = dynsec
        broker.on_message = lambda topic, payload: handlers.handle(service, topic, payload)
        broker.on_fast = lambda topic, payload: handlers.handle_fast(service, topic, payload)

        def on_connected() -> None:
            if dynsec is not None:  # before the outbox: desired states need the API's publish rights
                dynsec.ensure_api_role()
            service.chunks.forget_sent()  # a restarted broker lost its retained chunks
            service.flush_outbox()  # anything committed while we were away goes out now

        broker.on_connected = on_connected
        first_token = service.bootstrap()
        if first_token:
            # Shown once, on the first start of an empty database; only its hash is kept.
            print(f"fleet-api: first admin token (store it now, it is not shown again): {first_token}", file=sys.stderr, flush=True)
        app.state.service, app.state.broker = service, broker
        app.state.telemetry_receiver = receiver  # ready means its subscription holds too (GET /readyz)
        app.state.metrics = CollectorRegistry()
        app.state.metrics.register(FleetCollector(service))
        app.state.insights = service.insights  # GET /v1/alerts
        app.state.metrics.register(AlertCollector(service.insights))
        app.state.metrics.register(CaptureCollector(service.captures))
        broker.start()
        if receiver is not None:
            receiver.start()
        service.insights.start(settings.alert_eval_interval_s)
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
            if receiver is not None:
                receiver.stop()
            broker.stop()
            service.close()
            engine.dispose()

    app = FastAPI(title="edgefleet fleet API", version="0.2.0", lifespan=lifespan)

    @app.exception_handler(FleetError)
    async def _fleet_error(_request: Request, exc: FleetError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        # Not the offending input itself: it may be what JSON cannot carry back (NaN) or large.
        detail = [{"type": e.get("type"), "loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg")} for e in exc.errors()]
        return JSONResponse({"error": "invalid request: " + "; ".join(problems)[:2000], "detail": detail[:50]}, status_code=422)

    for router in (health.router, security.router, models.router, devices.router, profiles.router, rollouts.router,
                   drift.router, alerts.router, captures.router, web.router):
        app.include_router(router)
    return app

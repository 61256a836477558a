"""HTTP: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text

from .deps import ServiceDep
from .schemas import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}},
            summary="Readiness: database and broker reachable")
def readyz(request: Request, response: Response, service: ServiceDep) -> dict:
    receiver = getattr(request.app.state, "telemetry_receiver", None)  # telemetry's own connection, when on
    checks = {"broker": bool(request.app.state.broker.connected) and (receiver is None or receiver.connected)}
    try:
        with service.sessions() as db:
            db.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception:  # any driver error means not ready
        checks["database"] = False
    if not all(checks.values()):
        response.status_code = 503
    return {"ready": all(checks.values()), **checks}


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}},
            summary="Prometheus metrics: process counters, fleet by model state and version, rollout progress")
def metrics(request: Request) -> Response:
    # Unauthenticated like the probes: scrapers inside the cluster; it carries counts, not device data.
    body = generate_latest(REGISTRY) + generate_latest(request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)

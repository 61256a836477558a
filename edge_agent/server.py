"""Local HTTP API: KServe v2 inference protocol and Prometheus metrics. A thin shell over the engine."""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool

from . import kserve
from .engine import Engine, InputError

log = logging.getLogger(__name__)

REQUESTS = Counter("edgefleet_agent_requests_total", "Inference requests", ["model", "version", "provider", "outcome"])
LATENCY = Histogram(
    "edgefleet_agent_request_seconds", "Inference request latency, parse to response",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

HEADER_LENGTH = "inference-header-content-length"


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(engine: Engine, max_request_bytes: int = 64 << 20, on_request=None) -> FastAPI:
    """`on_request(seconds, ok)` lets telemetry see every request without knowing HTTP."""
    app = FastAPI(title="edgefleet agent", docs_url=None, redoc_url=None)

    @app.get("/v2/health/live")
    def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> Response:
        model = engine.current
        if model is None:
            return error(503, "no model loaded yet")
        return JSONResponse({"ready": True, "model": model.name, "version": model.version, "provider": model.provider})

    @app.get("/v2")
    def server_metadata() -> dict:
        return {"name": "edgefleet-agent", "version": "0.1.0", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}")
    def model_metadata(name: str) -> Response:
        model = engine.current
        if model is None or model.name != name:
            return error(404, f"model {name!r} is not served here")
        return JSONResponse(kserve.metadata(model))

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str) -> Response:
        model = engine.current
        if model is None or model.name != name:
            return error(404, f"model {name!r} is not served here")
        return JSONResponse({"name": name, "ready": True})

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        started = time.perf_counter()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_request_bytes:
            return error(413, f"request body of {declared} bytes exceeds the limit of {max_request_bytes}")
        body = bytearray()
        async for block in request.stream():
            body += block
            if len(body) > max_request_bytes:
                return error(413, f"request body exceeds the limit of {max_request_bytes} bytes")
        model = engine.current
        if model is None:
            return error(503, "no model loaded yet")
        if model.name != name or (version is not None and version != model.version):
            return error(404, f"model {name!r}{' version ' + version if version else ''} is not served here (serving {model.name} {model.version})")
        header = request.headers.get(HEADER_LENGTH)
        try:
            parsed, inputs = kserve.parse_request(bytes(body), int(header) if header and header.isdigit() else None)
            model.validate(inputs)
            outputs = await run_in_threadpool(model.session.run, model.output_names, inputs)
        except InputError as exc:
            REQUESTS.labels(model.name, model.version, model.provider, "bad_request").inc()
            return error(400, str(exc))
        except Exception as exc:  # onnxruntime's own errors: a bad request the validation could not foresee
            REQUESTS.labels(model.name, model.version, model.provider, "error").inc()
            log.warning("inference failed: %s", str(exc).splitlines()[0])
            if on_request:
                on_request(time.perf_counter() - started, False)
            return error(400, f"inference failed: {str(exc).splitlines()[0]}")
        payload, head_len = kserve.encode_response(
            parsed, model.name, model.version, dict(zip(model.output_names, outputs)), binary_default=header is not None
        )
        elapsed = time.perf_counter() - started
        LATENCY.observe(elapsed)
        REQUESTS.labels(model.name, model.version, model.provider, "ok").inc()
        if on_request:
            on_request(elapsed, True)
        headers = {HEADER_LENGTH: str(head_len)} if head_len is not None else None
        media = "application/octet-stream" if head_len is not None else "application/json"
        return Response(payload, media_type=media, headers=headers)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app

"""Local HTTP API: KServe v2 inference protocol for every model the device serves, and Prometheus metrics.
A thin shell over the ModelHost.

The infer path is a raw ASGI handler that runs before FastAPI's routing and middleware: FastAPI's request
and response objects, dependency resolution and threadpool hop cost more than the whole digits model
(measured: plain FastAPI JSON +0.35 ms over `session.run`). Everything else (health, metadata, metrics,
routers mounted by other parts of the agent) stays ordinary FastAPI.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from .. import __version__
from ..runtime.errors import InferenceError, InputError
from ..runtime.host import ModelHost
from ..runtime.model import LoadedModel
from . import kserve
from .images import ImageInputs

log = logging.getLogger(__name__)

HEADER_LENGTH = b"inference-header-content-length"  # the binary tensor extension's header, lower-case as ASGI gives it
_JSON = b"application/json"
_BINARY = b"application/octet-stream"


class Control(Protocol):
    """What the local API may ask of the agent's core besides inference."""

    def rollback(self, name: str, timeout: float = ...) -> str: ...


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _route(path: str) -> tuple[str, str | None] | None:
    """/v2/models/{name}/infer or /v2/models/{name}/versions/{version}/infer → (name, version)."""
    parts = path.split("/")
    if len(parts) == 5 and parts[4] == "infer" and parts[1] == "v2" and parts[2] == "models":
        return parts[3], None
    if len(parts) == 7 and parts[6] == "infer" and parts[4] == "versions" and parts[1] == "v2" and parts[2] == "models":
        return parts[3], parts[5]
    return None


class InferEndpoint:
    """POST …/infer as a raw ASGI handler.

    Small models run inline on the event loop: a hop to a worker thread and back costs ~50–100 µs, many
    times a digits CNN. Models slower than `inline_below_ms` go to a worker thread, which releases the
    loop for other requests while onnxruntime (GIL released) computes. With dynamic batching on, requests
    go to the batcher's thread and the loop awaits their future.
    """

    def __init__(self, host: ModelHost, max_request_bytes: int, inline_below_ms: float, workers: int | None = None) -> None:
        self.host = host
        self.max_request_bytes = max_request_bytes
        self.inline_below_ms = inline_below_ms
        # As many session runs at once as there are cores: more only thrash the caches (measured on BlazeFace).
        self.pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2, thread_name_prefix="infer")
        self.images = ImageInputs()

    async def __call__(self, scope: dict, receive, send, name: str, version: str | None) -> None:
        declared: int | None = None
        header_length: int | None = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = int(value) if value.isdigit() else None
            elif key == HEADER_LENGTH:
                header_length = int(value) if value.isdigit() else -1
        limit = self.max_request_bytes
        if declared is not None and declared > limit:
            return await _reply(send, 413, _error_body(f"request body of {declared} bytes exceeds the limit of {limit} bytes"), close=True)
        message = await receive()
        body = message.get("body", b"")  # the common case: the whole body in one message, no copy
        if message.get("more_body", False):
            chunks, size = [body], len(body)
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(part := message.get("body", b""))
                size += len(part)
                if size > limit:
                    return await _reply(send, 413, _error_body(f"request body exceeds the limit of {limit} bytes"), close=True)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
        if len(body) > limit:
            return await _reply(send, 413, _error_body(f"request body exceeds the limit of {limit} bytes"), close=True)

        model = self.host.get(name)  # one read: the whole request runs on this model, whatever swaps meanwhile
        if model is None or (version is not None and version != model.version):
            return await _reply(send, 404, _error_body(_not_served(self.host, name, version)))
        try:
            if header_length == -1:
                raise kserve.ProtocolError("Inference-Header-Content-Length must be a non-negative integer")
            request, inputs = kserve.parse_request(body, header_length)
            if ImageInputs.wanted(inputs):  # decoding takes milliseconds: never on the event loop
                inputs = await asyncio.get_running_loop().run_in_executor(self.pool, self.images.convert, model, inputs)
        except InputError as exc:
            model.record(0.0, None, exc)
            return await _reply(send, 400, _error_body(f"{exc}; the model takes {model.signature()}"))
        except Exception as exc:  # a request the parser did not foresee: still the client's, never a traceback
            bad = InputError(f"malformed request ({type(exc).__name__}: {exc})")
            log.warning("%s %s: %s", model.name, model.version, bad)
            model.record(0.0, None, bad)
            return await _reply(send, 400, _error_body(f"{bad}; the model takes {model.signature()}"))
        try:
            outputs = await self._run(model, inputs)  # accounts for its own failures
            payload, head_len = kserve.encode_response(request, model.name, model.version, outputs,
                                                       binary_default=header_length is not None)
        except InputError as exc:
            return await _reply(send, 400, _error_body(str(exc)))
        except InferenceError as exc:
            log.warning("%s %s: %s", model.name, model.version, exc)
            return await _reply(send, 500, _error_body(str(exc)))
        except Exception as exc:  # never a traceback in the device's log for what a request did
            log.error("%s %s: unexpected %s: %s", model.name, model.version, type(exc).__name__, exc)
            return await _reply(send, 500, _error_body(f"internal error: {type(exc).__name__}"))
        headers = [(b"content-type", _BINARY if head_len is not None else _JSON)]
        if head_len is not None:
            headers.append((HEADER_LENGTH, str(head_len).encode()))
        await _send(send, 200, payload, headers)

    async def _run(self, model: LoadedModel, inputs: dict) -> dict:
        if not model.batched:
            if model.run_ms is None or model.run_ms < self.inline_below_ms:
                return model.infer(inputs)
            return await asyncio.get_running_loop().run_in_executor(self.pool, model.infer, inputs)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        def answered(outputs, err) -> None:
            loop.call_soon_threadsafe(_resolve, future, outputs, err)

        model.submit(inputs, answered)
        return await future


def _not_served(host: ModelHost, name: str, version: str | None) -> str:
    model = host.get(name)
    wanted = f"model {name!r}" + (f" version {version!r}" if version else "")
    if model is not None:
        return f"{wanted} is not served here (serving {name} {model.version})"
    return f"{wanted} is not served here (serving: {', '.join(host.names()) or 'nothing yet'})"


def _resolve(future: asyncio.Future, outputs, err) -> None:
    if future.done():
        return
    if err is not None:
        future.set_exception(err)
    else:
        future.set_result(outputs)


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def _reply(send, status: int, body: bytes, close: bool = False) -> None:
    headers = [(b"content-type", _JSON)]
    if close:
        headers.append((b"connection", b"close"))  # the unread rest of the body must not be parsed as a request
    await _send(send, status, body, headers)


async def _send(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AgentApp(FastAPI):
    """FastAPI for everything, except the infer path, which is answered before FastAPI sees it."""

    infer_endpoint: InferEndpoint

    async def __call__(self, scope: Any, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and (route := _route(scope["path"])) is not None:
            await self.infer_endpoint(scope, receive, send, *route)
            return
        await super().__call__(scope, receive, send)


def create_app(host: ModelHost, max_request_bytes: int = 64 << 20, *, routers: Iterable[APIRouter] = (),
               control: Control | None = None, inline_below_ms: float = 0.25, workers: int | None = None) -> AgentApp:
    """The agent's local HTTP app. More routers can be passed here or added later with `include_router`."""
    app = AgentApp(title="edgefleet agent", docs_url=None, redoc_url=None, openapi_url=None)
    app.infer_endpoint = InferEndpoint(host, max_request_bytes, inline_below_ms, workers)

    def served(name: str, version: str | None) -> LoadedModel | None:
        model = host.get(name)
        return model if model is not None and (version is None or version == model.version) else None

    @app.get("/v2/health/live")
    def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> Response:
        """Ready once a model serves; the body says which (every model the device serves now)."""
        models = host.models()
        if not models:
            return error(503, "no model loaded yet")
        return JSONResponse({"ready": True, "models": {
            n: {"version": m.version, "provider": m.provider, "precision": m.precision.value} for n, m in sorted(models.items())}})

    @app.get("/v2")
    def server_metadata() -> dict:
        return {"name": "edgefleet-agent", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.post("/v2/repository/index")
    def repository_index() -> Response:
        return JSONResponse([{"name": n, "version": m.version, "state": "READY"} for n, m in sorted(host.models().items())])

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    def model_metadata(name: str, version: str | None = None) -> Response:
        model = served(name, version)
        if model is None:
            return error(404, _not_served(host, name, version))
        return JSONResponse(kserve.metadata(model))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    def model_ready(name: str, version: str | None = None) -> Response:
        model = served(name, version)
        if model is None:
            return error(404, _not_served(host, name, version))
        return JSONResponse({"name": name, "version": model.version, "ready": True})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY) + generate_latest(host.stats.registry), media_type=CONTENT_TYPE_LATEST)

    if control is not None:
        @app.post("/admin/models/{name}/rollback")
        def rollback(name: str, request: Request) -> Response:
            """Serve the previous version of a model again (it must pass its golden check first). Loopback
            clients only: the route has no authentication and the server may listen on a LAN address."""
            if not _loopback(request.client.host if request.client is not None else None):
                return error(403, "/admin rollback is only accepted from the device itself (127.0.0.1 or ::1)")
            try:
                return JSONResponse({"result": control.rollback(name)})
            except Exception as exc:
                return error(409, str(exc))

    for router in routers:
        app.include_router(router)
    return app


def _loopback(host: str | None) -> bool:
    """127.0.0.0/8 or ::1, also as an IPv4-mapped address (a server bound to '::' sees IPv4 clients so)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


"""HTTP: the model registry."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ..auth import Principal
from ..errors import Invalid, TooLarge
from .security import operator, viewer

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post("", status_code=201, response_model=None,
             summary="Upload a signed bundle (raw body, application/octet-stream)")
async def upload(request: Request, response: Response, who: Principal = operator) -> dict | Response:
    service = request.app.state.service
    limit = int(service.settings.max_bundle_mb * 1024 * 1024)
    idle_s = service.settings.upload_idle_timeout_s
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"bundle of {declared} bytes exceeds the {limit}-byte limit")
    client = f"{request.client.host}:{request.client.port}" if request.client else "?"
    # Spool the body to disk as it arrives: bundles may be far larger than memory on a small API pod.
    tmp = service.store.new_upload()
    total = 0
    try:
        with open(tmp, "wb") as out:
            blocks = request.stream().__aiter__()
            while True:
                # Each read has a deadline: a client that declares a length and stalls holds no request forever.
                try:
                    block = await asyncio.wait_for(blocks.__anext__(), idle_s)
                except StopAsyncIteration:
                    break
                total += len(block)
                if total > limit:
                    raise TooLarge(f"bundle exceeds the {limit}-byte limit")
                out.write(block)
        if total == 0:
            raise Invalid("empty body: send the bundle file as the request body")
    except asyncio.TimeoutError:
        tmp.unlink(missing_ok=True)
        log.warning("upload from %s cut off: no data for %gs after %d of %s bytes", client, idle_s, total, declared or "?")
        return JSONResponse({"error": f"upload stalled: no data for {idle_s:g}s"}, status_code=408,
                            headers={"Connection": "close"})
    except ClientDisconnect:
        tmp.unlink(missing_ok=True)
        log.warning("upload from %s aborted: the client disconnected after %d of %s bytes", client, total, declared or "?")
        return Response(status_code=400)  # nobody reads it: the client is gone
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    view, created = await run_in_threadpool(service.upload_bundle, tmp, who)
    if not created:
        response.status_code = 200
    return view


@router.get("", summary="List bundles")
def list_models(request: Request, _: Principal = viewer) -> list[dict]:
    return request.app.state.service.list_bundles()

"""HTTP: the model registry."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import Invalid, TooLarge
from . import body
from .deps import Operator, ServiceDep, Viewer
from .schemas import ERRORS, BundleOut

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERRORS)


@router.post("", status_code=201, response_model=BundleOut, responses={200: {"model": BundleOut}},
             summary="Upload a signed bundle (raw body, application/octet-stream); 200 if it was there already")
async def upload(request: Request, response: Response, service: ServiceDep, who: Operator) -> dict:
    limit = int(service.settings.max_bundle_mb * 1024 * 1024)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"bundle of {declared} bytes exceeds the {limit}-byte limit")
    # Spool the body to disk as it arrives: bundles may be far larger than memory on a small API pod.
    tmp = service.store.new_upload()
    try:
        total = await body.spool(request, tmp, limit, service.settings.upload_idle_timeout_s)
        if total == 0:
            raise Invalid("empty body: send the bundle file as the request body")
    except body.Stalled as exc:
        tmp.unlink(missing_ok=True)
        return JSONResponse({"error": str(exc)}, status_code=408, headers={"Connection": "close"})  # type: ignore[return-value]
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if total is None:  # the client went away (logged): nobody reads an answer
        tmp.unlink(missing_ok=True)
        return Response(status_code=400)  # type: ignore[return-value]
    view, created = await run_in_threadpool(service.upload_bundle, tmp, who)
    if not created:
        response.status_code = 200
    return view


@router.get("", response_model=list[BundleOut], summary="List bundles")
def list_models(service: ServiceDep, _: Viewer) -> list[dict]:
    return service.list_bundles()

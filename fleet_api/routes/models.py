"""HTTP: the model registry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ..errors import Invalid, TooLarge
from . import body
from .deps import Admin, ModelNamePath, Operator, ServiceDep, Viewer, token_of
from .schemas import ERRORS, BundleOut, DataKeyIn, DataKeyOut, PolicyIn, PolicyOut

DATA_KEY_HEADER = "X-Data-Key"
VersionPath = Annotated[str, Path(min_length=1, max_length=64, description="model version")]

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERRORS)


@router.post("", status_code=201, response_model=BundleOut, responses={200: {"model": BundleOut}},
             summary="Upload a signed bundle (raw body, application/octet-stream); 200 if it was there already")
async def upload(request: Request, response: Response, service: ServiceDep, who: Operator,
                 x_data_key: Annotated[str | None, Header(max_length=512, description=(
                     "the .key file of an encrypted bundle (its one-line JSON), kept with it; needs an admin token"))] = None,
                 ) -> dict:
    data_key = None
    if x_data_key is not None:
        who = service.authenticate(token_of(request), "admin")  # data keys are an admin's, as on PUT .../key
        try:
            data_key = DataKeyIn.model_validate_json(x_data_key).model_dump()
        except ValidationError as exc:
            raise Invalid(f"{DATA_KEY_HEADER}: not a data key file: {exc.errors()[0].get('msg')}") from None
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
    view, created = await run_in_threadpool(service.upload_bundle, tmp, who, data_key)
    if not created:
        response.status_code = 200
    return view


@router.get("", response_model=list[BundleOut], summary="List bundles")
def list_models(service: ServiceDep, _: Viewer) -> list[dict]:
    return service.list_bundles()


@router.put("/{name}/versions/{version}/key", response_model=DataKeyOut,
            summary="Upload an encrypted version's data key (the .key file); sealed at rest under the master key")
def put_key(name: ModelNamePath, version: VersionPath, body: DataKeyIn, service: ServiceDep, who: Admin) -> dict:
    return service.upload_key(name, version, body.model_dump(), who)


@router.get("/{name}/policy", response_model=PolicyOut, summary="What the fleet requires of this model's bundles")
def get_policy(name: ModelNamePath, service: ServiceDep, _: Viewer) -> dict:
    return service.get_policy(name)


@router.put("/{name}/policy", response_model=PolicyOut,
            summary="Require encryption for a model: rollouts and assignments of a plaintext version get 409")
def put_policy(name: ModelNamePath, body: PolicyIn, service: ServiceDep, who: Admin) -> dict:
    return service.set_policy(name, body.require_encryption, who)

"""HTTP: captured samples — list, one sample and its data, the dataset as a ZIP, deletion, the quota's use."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse, StreamingResponse

from ..captures import dataset
from ..errors import Invalid
from .capture_models import (
    CaptureDeleteQuery,
    CaptureFilters,
    CaptureListQuery,
    CaptureOut,
    CapturesOut,
    DeletedOut,
    UsageOut,
)
from .deps import MAX_ID, Operator, ServiceDep, Viewer
from .schemas import ERRORS

router = APIRouter(prefix="/v1/captures", tags=["captures"], responses=ERRORS)
CaptureId = Annotated[int, Path(ge=1, le=MAX_ID, description="capture id")]


BINARY = {"schema": {"type": "string", "format": "binary"}}  # OpenAPI: bytes, not JSON

@router.get("", response_model=CapturesOut, summary="Captured samples, newest taken first (filters combine)")
def list_captures(query: Annotated[CaptureListQuery, Query()], service: ServiceDep, _: Viewer) -> dict:
    page, total = service.captures.list(query.filters(), query.limit, query.offset)
    return {"total": total, "limit": query.limit, "offset": query.offset, "captures": page}


@router.get("/usage", response_model=UsageOut, summary="Bytes stored against the fleet's quota, per device and model")
def usage(service: ServiceDep, _: Viewer) -> dict:
    return service.captures.usage()


@router.get("/dataset", summary="The matching samples as a ZIP: data/ files, labels.json and labels.csv (streamed)",
            response_class=StreamingResponse, responses={200: {"content": {"application/zip": BINARY}}})
def download_dataset(query: Annotated[CaptureFilters, Query()], service: ServiceDep, _: Viewer) -> StreamingResponse:
    return StreamingResponse(dataset.stream(service.captures, query.filters()), media_type="application/zip",
                             headers={"Content-Disposition": 'attachment; filename="captures.zip"'})


@router.get("/{capture_id}", response_model=CaptureOut, summary="One sample: its header and provisional labels")
def get_capture(capture_id: CaptureId, service: ServiceDep, _: Viewer) -> dict:
    return service.captures.get(capture_id)


@router.get("/{capture_id}/data", summary="The sample's data as the device sent it (JPEG or .npy)",
            response_class=FileResponse, responses={200: {"content": {"image/jpeg": BINARY, "application/x-npy": BINARY}}})
def get_data(capture_id: CaptureId, service: ServiceDep, _: Viewer) -> FileResponse:
    path, content_type = service.captures.data(capture_id)
    return FileResponse(path, media_type=content_type, filename=path.name,
                        headers={"Cache-Control": "private, max-age=86400"})  # a sample's bytes never change


@router.delete("/{capture_id}", response_model=CaptureOut, summary="Delete one sample (its bytes leave the quota)")
def delete_capture(capture_id: CaptureId, service: ServiceDep, who: Operator) -> dict:
    return service.delete_capture(capture_id, who)


@router.delete("", response_model=DeletedOut, summary="Delete the matching samples (all=true to delete every one)")
def delete_captures(query: Annotated[CaptureDeleteQuery, Query()], service: ServiceDep, who: Operator) -> dict:
    filters = query.filters()
    if filters.empty() and not query.all:
        raise Invalid("no filter given: name one (device, model, version, reason, since, until) or all=true")
    return {"deleted": service.delete_captures(filters, who)}

"""HTTP: the device registry."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from ..auth import Principal
from .security import admin, viewer

router = APIRouter(prefix="/v1/devices", tags=["devices"])


class DeviceIn(BaseModel):
    id: str = Field(description="device id: letters, digits, '.', '_', '-' (max 64)")
    labels: dict[str, str] = Field(default_factory=dict, description="e.g. {'site': 'plant-3', 'hw': 'jetson'}")


@router.post("", status_code=201, summary="Register a device; with broker dynamic security, returns its credentials once")
def register(body: DeviceIn, request: Request, who: Principal = admin) -> dict:
    return request.app.state.service.register_device(body.id, body.labels, who)


@router.get("", summary="List devices with their reported state")
def list_devices(request: Request, _: Principal = viewer) -> list[dict]:
    return request.app.state.service.list_devices()


@router.get("/{device_id}", summary="One device")
def get_device(device_id: str, request: Request, _: Principal = viewer) -> dict:
    return request.app.state.service.get_device(device_id)


@router.delete("/{device_id}", summary="Revoke a device: its broker client is removed and it leaves active rollouts")
def revoke(device_id: str, request: Request, who: Principal = admin) -> dict:
    return request.app.state.service.revoke_device(device_id, who)


@router.post("/{device_id}/credentials", summary="New broker credentials for a device (the old ones stop working)")
def rotate(device_id: str, request: Request, who: Principal = admin) -> dict:
    return request.app.state.service.rotate_credentials(device_id, who)


@router.get("/{device_id}/telemetry", summary="Telemetry rolled up per minute, newest first")
def device_telemetry(device_id: str, request: Request, _: Principal = viewer,
                     since: dt.datetime | None = Query(None, description="ISO 8601"), until: dt.datetime | None = None,
                     limit: int = Query(60, ge=1, le=10_000)) -> dict:
    return request.app.state.service.device_telemetry(device_id, since, until, limit)

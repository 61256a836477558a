"""HTTP: the device registry."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

router = APIRouter(prefix="/v1/devices", tags=["devices"])


class DeviceIn(BaseModel):
    id: str = Field(description="device id: letters, digits, '.', '_', '-' (max 64)")
    labels: dict[str, str] = Field(default_factory=dict, description="e.g. {'site': 'plant-3', 'hw': 'jetson'}")


@router.post("", status_code=201, summary="Register a device")
def register(body: DeviceIn, request: Request) -> dict:
    return request.app.state.service.register_device(body.id, body.labels)


@router.get("", summary="List devices with their reported state")
def list_devices(request: Request) -> list[dict]:
    return request.app.state.service.list_devices()


@router.get("/{device_id}", summary="One device")
def get_device(device_id: str, request: Request) -> dict:
    return request.app.state.service.get_device(device_id)

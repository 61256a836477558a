"""HTTP: devices — registry, labels, own configuration, models assigned directly, the composed desired state."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query

from ..desired.specs import DeviceConfig
from .deps import Admin, DeviceIdPath, ModelNamePath, Operator, ServiceDep, Viewer
from .schemas import (
    ERRORS,
    DesiredOut,
    DeviceConfigOut,
    DeviceIn,
    DeviceOut,
    DeviceWithCredentials,
    LabelsPatch,
    ModelAssignIn,
    PublicKeyIn,
    TelemetryOut,
)

router = APIRouter(prefix="/v1/devices", tags=["devices"], responses=ERRORS)


@router.post("", status_code=201, response_model=DeviceWithCredentials,
             summary="Register a device; with broker dynamic security, returns its credentials once")
def register(body: DeviceIn, service: ServiceDep, who: Admin) -> dict:
    return service.register_device(body.id, body.labels, who, body.public_key)


@router.get("", response_model=list[DeviceOut], summary="List devices with their reported models and cameras")
def list_devices(service: ServiceDep, _: Viewer) -> list[dict]:
    return service.list_devices()


@router.get("/{device_id}", response_model=DeviceOut, summary="One device")
def get_device(device_id: DeviceIdPath, service: ServiceDep, _: Viewer) -> dict:
    return service.get_device(device_id)


@router.patch("/{device_id}", response_model=DeviceOut,
              summary="Change labels (null removes one); the profiles that apply may change with them")
def patch_device(device_id: DeviceIdPath, body: LabelsPatch, service: ServiceDep, who: Operator) -> dict:
    return service.update_labels(device_id, body.labels, who)


@router.delete("/{device_id}", response_model=DeviceOut,
               summary="Revoke a device: its broker client and retained messages go, it leaves active rollouts")
def revoke(device_id: DeviceIdPath, service: ServiceDep, who: Admin) -> dict:
    return service.revoke_device(device_id, who)


@router.post("/{device_id}/credentials", response_model=DeviceWithCredentials,
             summary="New broker credentials for a device (the old ones stop working)")
def rotate(device_id: DeviceIdPath, service: ServiceDep, who: Admin) -> dict:
    return service.rotate_credentials(device_id, who)


@router.put("/{device_id}/public-key", response_model=DeviceOut,
            summary="Enrol (or replace) the device's X25519 public key: encrypted models' data keys are wrapped for it")
def put_public_key(device_id: DeviceIdPath, body: PublicKeyIn, service: ServiceDep, who: Admin) -> dict:
    return service.set_public_key(device_id, body.public_key, who)


@router.delete("/{device_id}/public-key", response_model=DeviceOut,
               summary="Revoke the device's key: it gets no data key for anything new, and none is pinned again")
def revoke_public_key(device_id: DeviceIdPath, service: ServiceDep, who: Admin) -> dict:
    return service.set_public_key(device_id, None, who)


@router.get("/{device_id}/config", response_model=DeviceConfigOut, summary="The device's own configuration")
def get_config(device_id: DeviceIdPath, service: ServiceDep, _: Viewer) -> dict:
    return service.get_config(device_id)


@router.put("/{device_id}/config", response_model=DeviceConfigOut,
            summary="Replace the device's own configuration: runtime per model, cameras, capture, memory budget "
                    "(wins over profiles)")
def put_config(device_id: DeviceIdPath, body: DeviceConfig, service: ServiceDep, who: Operator) -> dict:
    return service.set_config(device_id, body, who)


@router.put("/{device_id}/models/{name}", response_model=DesiredOut,
            summary="Assign a version of a model to this device directly (409 while a rollout moves that model here)")
def assign_model(device_id: DeviceIdPath, name: ModelNamePath, body: ModelAssignIn, service: ServiceDep,
                 who: Operator) -> dict:
    return service.assign_model(device_id, name, body.version, body.runtime, who)


@router.delete("/{device_id}/models/{name}", response_model=DesiredOut,
               summary="Remove a model from this device (409 while a rollout moves that model here)")
def remove_model(device_id: DeviceIdPath, name: ModelNamePath, service: ServiceDep, who: Operator) -> dict:
    return service.remove_model(device_id, name, who)


@router.get("/{device_id}/desired", response_model=DesiredOut,
            summary="The device's composed desired state, and which input decided each part")
def get_desired(device_id: DeviceIdPath, service: ServiceDep, _: Viewer) -> dict:
    return service.get_desired(device_id)


@router.get("/{device_id}/telemetry", response_model=TelemetryOut,
            summary="Telemetry rolled up per minute and model, newest first")
def device_telemetry(device_id: DeviceIdPath, service: ServiceDep, _: Viewer,
                     since: Annotated[dt.datetime | None, Query(description="ISO 8601")] = None,
                     until: dt.datetime | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 60,
                     model: Annotated[str | None, Query(max_length=128, description="one model ('' the device)")] = None,
                     ) -> dict:
    return service.device_telemetry(device_id, since, until, limit, model)

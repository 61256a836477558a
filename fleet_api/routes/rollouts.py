"""HTTP: rollouts."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from .deps import Operator, RolloutId, ServiceDep, Viewer
from .schemas import ERRORS, ControlIn, RolloutIn, RolloutOut

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"], responses=ERRORS)


@router.post("", status_code=201, response_model=RolloutOut,
             summary="Start a rollout of one model (409 if a device is in another active rollout of that model)")
def create(body: RolloutIn, service: ServiceDep, who: Operator) -> dict:
    return service.create_rollout(body.model, body.version, body.selector, body.waves, body.gates, who, body.runtime,
                                  shadow=body.shadow.model_dump() if body.shadow is not None else None)


@router.get("", response_model=list[RolloutOut], summary="List rollouts")
def list_rollouts(service: ServiceDep, _: Viewer) -> list[dict]:
    return service.list_rollouts()


@router.get("/{rollout_id}", response_model=RolloutOut, summary="A rollout with its waves and per-device progress")
def get_rollout(rollout_id: RolloutId, service: ServiceDep, _: Viewer) -> dict:
    return service.get_rollout(rollout_id)


@router.post("/{rollout_id}/{action}", response_model=RolloutOut,
             summary="pause, resume, abort, or rollback (devices get their previous bundle of the model back)")
def control(rollout_id: RolloutId, action: Literal["pause", "resume", "abort", "rollback"], service: ServiceDep,
            who: Operator, body: ControlIn | None = None) -> dict:
    return service.control_rollout(rollout_id, action, who, body.reason if body else None)

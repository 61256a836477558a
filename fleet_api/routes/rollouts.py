"""HTTP: rollouts."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from ..auth import Principal
from .security import operator, viewer

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"])


class RolloutIn(BaseModel):
    model: str
    version: str
    selector: str | dict[str, str] = Field(default="", description="labels, e.g. 'site=plant-3,hw=jetson'; empty: all devices")
    waves: str | list[str | int] = Field(default="100%", description="cumulative, e.g. '1,10%,50%,100%'")
    gates: dict[str, Any] = Field(
        default_factory=dict,
        description="min_success_ratio, max_failure_ratio, soak_s, wave_timeout_s, max_p95_increase_pct, max_error_rate, "
                    "baseline_window_s",
    )


class ControlIn(BaseModel):
    reason: str | None = Field(default=None, max_length=500)


@router.post("", status_code=201, summary="Start a rollout (409 if a device is in another active rollout)")
def create(body: RolloutIn, request: Request, who: Principal = operator) -> dict:
    return request.app.state.service.create_rollout(body.model, body.version, body.selector, body.waves, body.gates, who)


@router.get("", summary="List rollouts")
def list_rollouts(request: Request, _: Principal = viewer) -> list[dict]:
    return request.app.state.service.list_rollouts()


@router.get("/{rollout_id}", summary="A rollout with its per-device state")
def get_rollout(rollout_id: int, request: Request, _: Principal = viewer) -> dict:
    return request.app.state.service.get_rollout(rollout_id)


@router.post("/{rollout_id}/{action}", summary="pause, resume, abort, or rollback (devices get their previous model)")
def control(rollout_id: int, action: Literal["pause", "resume", "abort", "rollback"], request: Request,
            body: ControlIn | None = None, who: Principal = operator) -> dict:
    return request.app.state.service.control_rollout(rollout_id, action, who, body.reason if body else None)

"""HTTP: rollouts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"])


class RolloutIn(BaseModel):
    model: str
    version: str
    selector: str | dict[str, str] = Field(default="", description="labels, e.g. 'site=plant-3,hw=jetson'; empty: all devices")
    waves: str | list[str | int] = Field(default="100%", description="cumulative, e.g. '1,10%,50%,100%'")
    gates: dict[str, Any] = Field(default_factory=dict, description="min_success_ratio, max_failure_ratio, soak_s, wave_timeout_s")


@router.post("", status_code=201, summary="Start a rollout")
def create(body: RolloutIn, request: Request) -> dict:
    return request.app.state.service.create_rollout(body.model, body.version, body.selector, body.waves, body.gates)


@router.get("", summary="List rollouts")
def list_rollouts(request: Request) -> list[dict]:
    return request.app.state.service.list_rollouts()


@router.get("/{rollout_id}", summary="A rollout with its per-device state")
def get_rollout(rollout_id: int, request: Request) -> dict:
    return request.app.state.service.get_rollout(rollout_id)

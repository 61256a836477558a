"""HTTP: drift — per-device PSI scores against each model version's baseline, and the drift alerts."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from .deps import ServiceDep, Viewer
from .schemas import ERRORS

router = APIRouter(prefix="/v1/drift", tags=["drift"], responses=ERRORS)


class DriftOut(BaseModel):
    alerts: list[dict[str, Any]]
    scores: list[dict[str, Any]]
    baselines: list[dict[str, Any]] | None = None


@router.get("", response_model=DriftOut, summary="Drift alerts and scores (optionally of one device or alert state)")
def drift(service: ServiceDep, _: Viewer, device: str | None = None,
          state: Literal["open", "resolved"] | None = None, baselines: bool = False) -> dict:
    d = service.drift
    return {"alerts": d.alerts(device, state), "scores": d.scores(device),
            "baselines": d.baselines() if baselines else None}

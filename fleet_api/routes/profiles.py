"""HTTP: profiles — settings for every device whose labels match a selector."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..desired.specs import ProfileSpec
from .deps import Operator, ProfileNamePath, ServiceDep, Viewer
from .schemas import ERRORS, ProfileIn, ProfileOut

router = APIRouter(prefix="/v1/profiles", tags=["profiles"], responses=ERRORS)


@router.post("", status_code=201, response_model=ProfileOut,
             summary="Create a profile (409 if the name exists); matching devices get a new desired revision")
def create(body: ProfileIn, service: ServiceDep, who: Operator) -> dict:
    spec = ProfileSpec.model_validate(body.model_dump(exclude={"name"}))
    return service.put_profile(body.name, spec, who, create_only=True)[0]


@router.get("", response_model=list[ProfileOut], summary="List profiles, the one that wins first")
def list_profiles(service: ServiceDep, _: Viewer) -> list[dict]:
    return service.list_profiles()


@router.get("/{name}", response_model=ProfileOut, summary="One profile")
def get_profile(name: ProfileNamePath, service: ServiceDep, _: Viewer) -> dict:
    return service.get_profile(name)


@router.put("/{name}", response_model=ProfileOut, summary="Create or replace a profile")
def put_profile(name: ProfileNamePath, body: ProfileSpec, service: ServiceDep, who: Operator, response: Response) -> dict:
    view, created = service.put_profile(name, body, who)
    response.status_code = 201 if created else 200
    return view


@router.delete("/{name}", response_model=ProfileOut, summary="Delete a profile; its devices fall back to the rest")
def delete_profile(name: ProfileNamePath, service: ServiceDep, who: Operator) -> dict:
    return service.delete_profile(name, who)

"""Typed dependencies of the HTTP routes: the core service, and the caller's principal by role."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from ..auth import Principal
from ..service import FleetService

COOKIE = "edgefleet_token"  # the dashboard's way to carry the same bearer token
# Ids are database integers (32-bit on PostgreSQL): anything beyond is a 422, never an overflow deep down.
MAX_ID = 2**31 - 1


def get_service(request: Request) -> FleetService:
    return request.app.state.service


ServiceDep = Annotated[FleetService, Depends(get_service)]


def token_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE)


def _role(role: str):
    def dependency(request: Request, service: ServiceDep) -> Principal:
        return service.authenticate(token_of(request), role)

    return dependency


Viewer = Annotated[Principal, Depends(_role("viewer"))]
Operator = Annotated[Principal, Depends(_role("operator"))]
Admin = Annotated[Principal, Depends(_role("admin"))]

RolloutId = Annotated[int, Path(ge=1, le=MAX_ID, description="rollout id")]
TokenId = Annotated[int, Path(ge=1, le=MAX_ID, description="token id")]
BeforeId = Annotated[int | None, Query(ge=1, le=MAX_ID, description="entries with a smaller id (paging)")]
DeviceIdPath = Annotated[str, Path(max_length=64, description="device id")]
ModelNamePath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$", description="model name")]
ProfileNamePath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="profile name")]

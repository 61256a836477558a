"""HTTP: bearer tokens → the caller's role (the core decides), and the token and audit endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from ..auth import Principal

COOKIE = "edgefleet_token"  # the dashboard's way to carry the same bearer token


def token_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE)


def require(role: str):
    def dependency(request: Request) -> Principal:
        return request.app.state.service.authenticate(token_of(request), role)

    return Depends(dependency)


viewer, operator, admin = require("viewer"), require("operator"), require("admin")

router = APIRouter(tags=["auth"])


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    role: str = Field(description="viewer (read), operator (+ upload models, roll out), admin (+ devices, tokens)")


@router.post("/v1/tokens", status_code=201, summary="Create an API token (shown once)")
def create_token(body: TokenIn, request: Request, who: Principal = admin) -> dict:
    return request.app.state.service.create_token(who, body.name, body.role)


@router.get("/v1/tokens", summary="List API tokens (never the tokens themselves)")
def list_tokens(request: Request, _: Principal = admin) -> list[dict]:
    return request.app.state.service.list_tokens()


@router.delete("/v1/tokens/{token_id}", summary="Revoke an API token")
def revoke_token(token_id: int, request: Request, who: Principal = admin) -> dict:
    return request.app.state.service.revoke_token(who, token_id)


@router.get("/v1/whoami", summary="The caller's token name and role")
def whoami(who: Principal = viewer) -> dict:
    return {"name": who.name, "role": who.role, "token_id": who.token_id}


@router.get("/v1/audit", summary="Audit log, newest first")
def audit(request: Request, _: Principal = viewer, limit: int = Query(100, ge=1, le=1000),
          action: str | None = Query(None, description="prefix, e.g. 'rollout.'"), before_id: int | None = None) -> list[dict]:
    return request.app.state.service.audit_log(limit, action, before_id)

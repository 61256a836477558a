"""HTTP: the token and audit endpoints (bearer tokens → the caller's role: see deps.py; the core decides)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from .deps import COOKIE, Admin, BeforeId, ServiceDep, TokenId, Viewer, token_of
from .schemas import ERRORS, AuditOut, TokenCreated, TokenIn, TokenOut, WhoAmI

__all__ = ["COOKIE", "router", "token_of"]

router = APIRouter(tags=["auth"], responses=ERRORS)


@router.post("/v1/tokens", status_code=201, response_model=TokenCreated, summary="Create an API token (shown once)")
def create_token(body: TokenIn, service: ServiceDep, who: Admin) -> dict:
    return service.create_token(who, body.name, body.role)


@router.get("/v1/tokens", response_model=list[TokenOut], summary="List API tokens (never the tokens themselves)")
def list_tokens(service: ServiceDep, _: Admin) -> list[dict]:
    return service.list_tokens()


@router.delete("/v1/tokens/{token_id}", response_model=TokenOut, summary="Revoke an API token")
def revoke_token(token_id: TokenId, service: ServiceDep, who: Admin) -> dict:
    return service.revoke_token(who, token_id)


@router.get("/v1/whoami", response_model=WhoAmI, summary="The caller's token name and role")
def whoami(who: Viewer) -> dict:
    return {"name": who.name, "role": who.role, "token_id": who.token_id}


@router.get("/v1/audit", response_model=list[AuditOut], summary="Audit log, newest first")
def audit(service: ServiceDep, _: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
          action: Annotated[str | None, Query(max_length=64, description="prefix, e.g. 'rollout.'")] = None,
          before_id: BeforeId = None) -> list[dict]:
    return service.audit_log(limit, action, before_id)

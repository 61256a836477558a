"""API tokens with roles, and the audit log. Core code: the HTTP shell only extracts the bearer token."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .db.tables import ApiToken, AuditEntry, utcnow
from .errors import Forbidden, Invalid, NotFound, Unauthorized

# Each role may do everything the roles before it may.
ROLES = ("viewer", "operator", "admin")
TOKEN_PREFIX = "eft_"


@dataclass(frozen=True)
class Principal:
    token_id: int | None
    name: str
    role: str

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}:{self.name}" if self.token_id is not None else self.name


SYSTEM = Principal(None, "system", "admin")  # the API's own automatic actions (auto-abort, …)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def authenticate(db: Session, token: str | None, need: str) -> Principal:
    if not token:
        raise Unauthorized("missing API token: send 'Authorization: Bearer <token>'")
    row = db.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest(token)))
    if row is None or row.revoked_at is not None:
        raise Unauthorized("invalid or revoked API token")
    principal = Principal(row.id, row.name, row.role)
    if not principal.allows(need):
        raise Forbidden(f"token {row.name!r} has role {row.role!r}; this needs {need!r}")
    return principal


def create_token(db: Session, name: str, role: str, created_by: str, token: str | None = None) -> tuple[ApiToken, str]:
    if role not in ROLES:
        raise Invalid(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not name or len(name) > 128:
        raise Invalid("a token needs a name of 1 to 128 characters")
    token = token or new_token()
    row = ApiToken(name=name, role=role, token_sha256=digest(token), created_by=created_by)
    db.add(row)
    db.flush()
    return row, token


def revoke_token(db: Session, token_id: int) -> ApiToken:
    row = db.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"unknown token {token_id}")
    row.revoked_at = row.revoked_at or utcnow()
    return row


def list_tokens(db: Session) -> list[ApiToken]:
    return list(db.scalars(select(ApiToken).order_by(ApiToken.id)))


def bootstrap(db: Session, admin_token: str | None) -> str | None:
    """Make sure someone can log in. With a configured admin token: register it (once). With none and no token
    at all in the database: create one and return it, to be printed once. Otherwise nothing."""
    if admin_token:
        if db.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest(admin_token))) is None:
            create_token(db, "bootstrap-admin", "admin", "system", admin_token)
            audit(db, SYSTEM.actor, "token.bootstrap", "bootstrap-admin", {"source": "EDGEFLEET_API_ADMIN_TOKEN"})
        return None
    if db.scalar(select(func.count()).select_from(ApiToken)):
        return None
    _, token = create_token(db, "first-admin", "admin", "system")
    audit(db, SYSTEM.actor, "token.bootstrap", "first-admin", {"source": "generated on first start"})
    return token


def token_view(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.id, "name": t.name, "role": t.role, "created_at": t.created_at.isoformat(), "created_by": t.created_by,
        "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
    }


# --- audit ---------------------------------------------------------------------------------------------------
def audit(db: Session, actor: str, action: str, target: str | None = None, detail: dict[str, Any] | None = None) -> None:
    """Recorded in the caller's transaction: a change and its audit entry commit, or roll back, together."""
    db.add(AuditEntry(actor=actor, action=action, target=target, detail=detail or {}))


def list_audit(db: Session, limit: int = 100, action: str | None = None, before_id: int | None = None) -> list[dict[str, Any]]:
    q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(max(1, min(limit, 1000)))
    if action:
        q = q.where(AuditEntry.action.like(f"{action}%"))
    if before_id:
        q = q.where(AuditEntry.id < before_id)
    return [
        {"id": a.id, "ts": a.ts.isoformat(), "actor": a.actor, "action": a.action, "target": a.target, "detail": a.detail}
        for a in db.scalars(q)
    ]

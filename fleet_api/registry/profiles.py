"""Profiles: settings for every device whose labels match a selector (see desired/compose.py for precedence)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.tables import Profile
from ..desired.specs import ProfileSpec
from ..errors import Conflict, NotFound


def _store(row: Profile, spec: ProfileSpec) -> None:
    row.selector = dict(spec.selector)
    row.priority = spec.priority
    row.spec = spec.model_dump(mode="json", exclude={"selector", "priority"}, exclude_none=True)


def create(db: Session, name: str, spec: ProfileSpec) -> Profile:
    if db.get(Profile, name) is not None:
        raise Conflict(f"profile {name!r} exists; PUT /v1/profiles/{name} replaces it")
    row = Profile(name=name)
    _store(row, spec)
    db.add(row)
    db.flush()
    return row


def get(db: Session, name: str, lock: bool = False) -> Profile:
    q = select(Profile).where(Profile.name == name)
    if lock:
        q = q.with_for_update().execution_options(populate_existing=True)
    row = db.scalar(q)
    if row is None:
        raise NotFound(f"unknown profile {name!r}")
    return row


def replace(db: Session, name: str, spec: ProfileSpec) -> tuple[Profile, bool]:
    """Create or replace; → (row, created)."""
    row = db.scalar(select(Profile).where(Profile.name == name).with_for_update().execution_options(populate_existing=True))
    created = row is None
    if row is None:
        row = Profile(name=name)
        db.add(row)
    _store(row, spec)
    db.flush()
    return row, created


def delete(db: Session, name: str) -> Profile:
    row = get(db, name, lock=True)
    db.delete(row)
    db.flush()
    return row


def list_all(db: Session) -> list[Profile]:
    return list(db.scalars(select(Profile).order_by(Profile.priority.desc(), Profile.name)))


def view(row: Profile) -> dict[str, Any]:
    spec = ProfileSpec.model_validate({**row.spec, "selector": row.selector, "priority": row.priority})
    return {"name": row.name, **spec.model_dump(mode="json"), "created_at": row.created_at.isoformat(),
            "updated_at": row.updated_at.isoformat()}

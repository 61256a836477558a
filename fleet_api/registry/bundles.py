"""Model registry: signed bundles, one row per variant of a model version."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fleet_protocol.bundle import BundleError, read_bundle
from fleet_protocol.signing import sha256_file

from ..db.tables import Bundle
from ..errors import Conflict, Invalid, NotFound
from .artifacts import ArtifactStore


def register_bundle(db: Session, store: ArtifactStore, upload: Path, trusted_keys: list) -> tuple[Bundle, bool]:
    """Verify an uploaded bundle and record it. → (row, created). Same name+version+variant, other bytes → Conflict."""
    try:
        try:
            verified = read_bundle(upload, trusted_keys)
        except BundleError as exc:
            raise Invalid(f"bundle rejected: {exc}") from None
        m = verified.manifest
        digest = sha256_file(upload)
        existing = db.scalar(
            select(Bundle).where(Bundle.name == m.name, Bundle.version == m.version, Bundle.hardware_class == m.hardware_class)
        )
        if existing is not None:
            if existing.sha256 != digest:
                raise Conflict(
                    f"{m.name} {m.version} ({m.hardware_class}) exists with other bytes; bundles are immutable, publish a new version"
                )
            return existing, False
        store.add(upload)
        row = Bundle(
            name=m.name, version=m.version, hardware_class=m.hardware_class, sha256=digest,
            size=store.path(digest).stat().st_size, task=m.task, signed_by=verified.signed_by,
            manifest=m.model_dump(mode="json"),
        )
        db.add(row)
        try:
            db.flush()
        except IntegrityError:  # the same version uploaded twice at once: the other upload won
            raise Conflict(f"{m.name} {m.version} ({m.hardware_class}) was registered by a concurrent upload") from None
        return row, True
    finally:
        upload.unlink(missing_ok=True)


def list_bundles(db: Session, name: str | None = None) -> list[Bundle]:
    q = select(Bundle).order_by(Bundle.name, Bundle.created_at)
    if name:
        q = q.where(Bundle.name == name)
    return list(db.scalars(q))


def variants(db: Session, name: str, version: str) -> list[Bundle]:
    rows = list(db.scalars(select(Bundle).where(Bundle.name == name, Bundle.version == version)))
    if not rows:
        raise NotFound(f"no bundle for model {name!r} version {version!r}")
    return rows


def pick_variant(rows: list[Bundle], hardware_class: str | None) -> Bundle:
    """The variant for a device's hardware class, else the generic one, else the first registered."""
    by_class = {r.hardware_class: r for r in rows}
    return by_class.get(hardware_class or "") or by_class.get("generic") or sorted(rows, key=lambda r: r.id)[0]

"""Desired state per device, and the outbox that publishes each revision once, after its commit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_protocol.messages import Desired, ModelRef

from ..db.tables import Bundle, Device


def model_ref(bundle: Bundle, chunk_size: int) -> ModelRef:
    return ModelRef(name=bundle.name, version=bundle.version, sha256=bundle.sha256, size=bundle.size, chunk_size=chunk_size)


def set_desired(db: Session, device: Device, model: ModelRef | dict[str, Any] | None, rollout_id: int | None) -> int:
    """Give a device a new desired model; returns the new revision (published by the outbox after commit)."""
    if isinstance(model, dict):
        model = ModelRef.model_validate(model)
    # A runtime config set for the device is carried over; without one the device keeps its own settings.
    runtime = (device.desired or {}).get("runtime")
    device.desired_revision += 1
    desired = Desired(revision=device.desired_revision, model=model, runtime=runtime, rollout_id=rollout_id)
    device.desired = desired.model_dump(mode="json")
    return device.desired_revision


def current_model(device: Device) -> dict[str, Any] | None:
    return (device.desired or {}).get("model")


def claim_unpublished(db: Session, limit: int = 500) -> list[tuple[str, int, bytes]]:
    """Devices whose newest desired revision is not published yet, row-locked for this transaction.

    The lock is held while the caller publishes and marks them: another API process skips these rows (or, on
    SQLite, waits for the whole transaction) and then finds them published, so no revision goes out twice.
    """
    q = select(Device).where(Device.desired_revision > Device.published_revision).order_by(Device.id).limit(limit)
    if db.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    rows = db.scalars(q).all()
    return [(d.id, d.desired_revision, Desired.model_validate(d.desired).to_bytes() if d.desired else b"") for d in rows]


def mark_published(db: Session, device_id: str, revision: int) -> None:
    device = db.get(Device, device_id)
    if device is not None and device.published_revision < revision:
        device.published_revision = revision

"""The outbox: each device's newest desired revision is published after the commit that made it.

Guarantee: at least once. A revision is marked published only after the broker acknowledged it; an API process
killed between that acknowledgement and its commit leaves it owed, and it is published again (by this process
on restart, or another). A device's `hello` also asks for it again. The device takes a revision it already
applied, or is applying, as a no-op and acknowledges it, so a repeat costs one message, never a restarted
download. Order per device: revisions only grow, and only the newest is ever published.
"""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_protocol.messages import Desired

from ..db.tables import Device


def payload(device: Device) -> bytes:
    """The retained desired message; empty (clears the retained one) for a revoked device."""
    if not device.desired:
        return b""
    return Desired.model_validate({**device.desired, "issued_at": time.time()}).to_bytes()


def claim_unpublished(db: Session, limit: int = 500) -> list[tuple[str, int, bytes]]:
    """Devices whose newest desired revision is not published yet, row-locked for this transaction.

    On PostgreSQL the lock is held while the caller publishes and marks them: another API process skips these
    rows (SKIP LOCKED) and then finds them published. SQLite serialises writers on the whole file.
    """
    q = select(Device).where(Device.desired_revision > Device.published_revision).order_by(Device.id).limit(limit)
    if db.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True).execution_options(populate_existing=True)
    return [(d.id, d.desired_revision, payload(d)) for d in db.scalars(q).all()]


def mark_published(db: Session, device_id: str, revision: int) -> None:
    device = db.get(Device, device_id)
    if device is not None and device.published_revision < revision:
        device.published_revision = revision


def owe_again(device: Device) -> None:
    """Publish the device's current desired revision again (it asked: `hello`)."""
    if device.desired_revision > 0:
        device.published_revision = min(device.published_revision, device.desired_revision - 1)

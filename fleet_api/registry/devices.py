"""Device registry: identity, labels, and the last reported state and status."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_protocol.messages import DEVICE_ID_PATTERN, Reported, Status

from ..db.tables import Device, utcnow
from ..desired import specs
from ..errors import Conflict, Invalid, NotFound

HARDWARE_LABEL = "hw"  # the label whose value is the device's hardware class (variant selection)


def register_device(db: Session, device_id: str, labels: dict[str, str]) -> Device:
    if not re.match(DEVICE_ID_PATTERN, device_id):
        raise Invalid(f"device id {device_id!r} must match {DEVICE_ID_PATTERN}")
    if db.get(Device, device_id) is not None:
        raise Conflict(f"device {device_id!r} is already registered (a revoked id stays taken: its history is kept)")
    if len(labels) > specs.MAX_LABELS:
        raise Invalid(f"a device has at most {specs.MAX_LABELS} labels")
    device = Device(id=device_id, labels={str(k): str(v) for k, v in labels.items()})
    db.add(device)
    db.flush()
    return device


def get_device(db: Session, device_id: str, lock: bool = False) -> Device:
    if lock:
        device = db.scalar(select(Device).where(Device.id == device_id).with_for_update()
                           .execution_options(populate_existing=True))
    else:
        device = db.get(Device, device_id)
    if device is None:
        raise NotFound(f"unknown device {device_id!r}")
    return device


def list_devices(db: Session) -> list[Device]:
    return list(db.scalars(select(Device).order_by(Device.id)))


def parse_selector(selector: str | dict[str, str]) -> dict[str, str]:
    """`site=plant-3,hw=jetson` → {"site": "plant-3", "hw": "jetson"}."""
    try:
        return specs.parse_selector(selector)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def update_labels(db: Session, device_id: str, changes: dict[str, str | None]) -> Device:
    """Set labels; a None value removes that label."""
    device = get_active_device(db, device_id, lock=True)
    labels = dict(device.labels or {})
    for key, value in changes.items():
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
    if len(labels) > specs.MAX_LABELS:
        raise Invalid(f"a device has at most {specs.MAX_LABELS} labels")
    device.labels = labels
    return device


def select_devices(db: Session, selector: dict[str, str], lock: bool = False) -> list[Device]:
    # Labels are JSON; filtering in Python keeps SQLite and PostgreSQL on the same code.
    q = select(Device).where(Device.revoked.is_(False)).order_by(Device.id)
    if lock:  # two rollouts created at once for overlapping devices: the second waits, then sees the first
        q = q.with_for_update().execution_options(populate_existing=True)
    return [d for d in db.scalars(q) if all(d.labels.get(k) == v for k, v in selector.items())]


def get_active_device(db: Session, device_id: str, lock: bool = False) -> Device:
    """A device that may talk to us: registered and not revoked."""
    device = get_device(db, device_id, lock)
    if device.revoked:
        raise NotFound(f"device {device_id!r} is revoked")
    return device


def record_reported(db: Session, device_id: str, reported: Reported) -> Device:
    device = get_active_device(db, device_id)
    device.reported = reported.model_dump(mode="json", by_alias=True)
    device.reported_at = utcnow()
    device.last_seen = device.reported_at
    return device


def record_status(db: Session, device_id: str, status: Status) -> Device:
    device = get_active_device(db, device_id)
    device.online = status.online
    device.last_seen = utcnow()
    return device

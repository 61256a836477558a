"""Device registry: identity, labels, and the last reported state and status."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_protocol.messages import DEVICE_ID_PATTERN, Reported, Status

from ..db.tables import Device, utcnow
from ..errors import Conflict, Invalid, NotFound

HARDWARE_LABEL = "hw"  # the label whose value is the device's hardware class (variant selection)


def register_device(db: Session, device_id: str, labels: dict[str, str]) -> Device:
    if not re.match(DEVICE_ID_PATTERN, device_id):
        raise Invalid(f"device id {device_id!r} must match {DEVICE_ID_PATTERN}")
    if db.get(Device, device_id) is not None:
        raise Conflict(f"device {device_id!r} is already registered (a revoked id stays taken: its history is kept)")
    device = Device(id=device_id, labels={str(k): str(v) for k, v in labels.items()})
    db.add(device)
    db.flush()
    return device


def get_device(db: Session, device_id: str) -> Device:
    device = db.get(Device, device_id)
    if device is None:
        raise NotFound(f"unknown device {device_id!r}")
    return device


def list_devices(db: Session) -> list[Device]:
    return list(db.scalars(select(Device).order_by(Device.id)))


def parse_selector(selector: str | dict[str, str]) -> dict[str, str]:
    """`site=plant-3,hw=jetson` → {"site": "plant-3", "hw": "jetson"}."""
    if isinstance(selector, dict):
        return {str(k): str(v) for k, v in selector.items()}
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in selector.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise Invalid(f"selector term {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def select_devices(db: Session, selector: dict[str, str], lock: bool = False) -> list[Device]:
    # Labels are JSON; filtering in Python keeps SQLite and PostgreSQL on the same code.
    q = select(Device).where(Device.revoked.is_(False)).order_by(Device.id)
    if lock:  # two rollouts created at once for overlapping devices: the second waits, then sees the first
        q = q.with_for_update()
    return [d for d in db.scalars(q) if all(d.labels.get(k) == v for k, v in selector.items())]


def get_active_device(db: Session, device_id: str) -> Device:
    """A device that may talk to us: registered and not revoked."""
    device = get_device(db, device_id)
    if device.revoked:
        raise NotFound(f"device {device_id!r} is revoked")
    return device


def record_reported(db: Session, device_id: str, reported: Reported) -> Device:
    device = get_active_device(db, device_id)
    device.reported = reported.model_dump(mode="json")
    device.reported_at = utcnow()
    device.last_seen = device.reported_at
    return device


def record_status(db: Session, device_id: str, status: Status) -> Device:
    device = get_active_device(db, device_id)
    device.online = status.online
    device.last_seen = utcnow()
    return device

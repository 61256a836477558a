"""Desired state in the database: the inputs (assignments, device config, profiles) and the numbered result.

`recompose` runs the pure composition for a device and, when the result differs from what the device was last
given, stores it under the next revision; the outbox then publishes it after the commit. Every input change
(a profile, a device's labels or configuration, a model assigned or removed, a rollout step) ends here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_protocol.messages import BundleRef, Runtime, Shadow

from ..db.tables import Bundle, Device, DeviceModel, Profile
from .compose import EMPTY_BODY, Assignment, Composed, NamedProfile, compose
from .specs import DeviceConfig, ProfileSpec

KEYS = "keys"  # Session.info entry: the FleetService's KeyStore, put there by its transactions


def wrapped_key(db: Session, device: Device, bundle: Bundle):
    """An encrypted bundle's data key wrapped for `device`, or None: plaintext bundle, no key store, or a device
    without an enrolled key or with its key revoked (it then gets no key for anything new). A shadow's bundle
    (ModelSpec.shadow.key) is wrapped the same way, once shadows are composed."""
    enc = (bundle.manifest or {}).get("encryption")
    keys = db.info.get(KEYS)
    if enc is None or keys is None or device.key_revoked or not device.public_key:
        return None
    return keys.wrap_for(db, enc["key_id"], device.public_key)


def profiles(db: Session) -> list[NamedProfile]:
    return [NamedProfile(p.name, ProfileSpec.model_validate({**p.spec, "selector": p.selector, "priority": p.priority}))
            for p in db.scalars(select(Profile).order_by(Profile.name))]


def assignment_rows(db: Session, device_id: str) -> dict[str, DeviceModel]:
    return {r.model: r for r in db.scalars(select(DeviceModel).where(DeviceModel.device_id == device_id))}


def get_assignment(db: Session, device_id: str, model: str) -> DeviceModel | None:
    return db.get(DeviceModel, (device_id, model))


def assign(db: Session, device_id: str, model: str, bundle_sha256: str, runtime: dict[str, Any] | None,
           rollout_id: int | None) -> DeviceModel:
    row = get_assignment(db, device_id, model)
    if row is None:
        row = DeviceModel(device_id=device_id, model=model)
        db.add(row)
    row.bundle_sha256, row.runtime, row.rollout_id = bundle_sha256, runtime, rollout_id
    row.shadow = None  # a new bundle ends any shadow evaluation beside the old one
    db.flush()
    return row


def set_shadow(db: Session, device_id: str, model: str, shadow: dict[str, Any] | None) -> None:
    """Put a candidate beside the device's assigned bundle of `model` (None: take it away); the bundle stays."""
    row = get_assignment(db, device_id, model)
    if row is not None:
        row.shadow = shadow
        db.flush()


def unassign(db: Session, device_id: str, model: str) -> bool:
    row = get_assignment(db, device_id, model)
    if row is None:
        return False
    db.delete(row)
    db.flush()
    return True


def assignment_view(row: DeviceModel | None, bundle: Bundle | None) -> dict[str, Any] | None:
    """What a rollout remembers of a device's previous assignment, to give it back."""
    if row is None:
        return None
    return {"sha256": row.bundle_sha256, "version": bundle.version if bundle else None, "runtime": row.runtime,
            "rollout_id": row.rollout_id}


def compose_device(db: Session, device: Device, chunk_size: int, named: list[NamedProfile] | None = None) -> Composed:
    rows = assignment_rows(db, device.id)
    shas = {r.bundle_sha256 for r in rows.values()} | {r.shadow["sha256"] for r in rows.values() if r.shadow}
    bundles = {b.sha256: b for b in db.scalars(select(Bundle).where(Bundle.sha256.in_(shas)))} if shas else {}
    assignments = {}
    for name, r in rows.items():
        b = bundles.get(r.bundle_sha256)
        if b is None:  # bundles are never deleted; a dangling row would be a bug, not a reason to fail everything
            continue
        shadow = None
        if r.shadow and (c := bundles.get(r.shadow["sha256"])) is not None:
            shadow = Shadow(bundle=BundleRef(name=c.name, version=c.version, sha256=c.sha256, size=c.size,
                                             chunk_size=chunk_size),
                            sample_rate=r.shadow["sample_rate"], cpu_budget=r.shadow["cpu_budget"])
        assignments[name] = Assignment(
            BundleRef(name=b.name, version=b.version, sha256=b.sha256, size=b.size, chunk_size=chunk_size),
            Runtime.model_validate(r.runtime) if r.runtime is not None else None, r.rollout_id,
            wrapped_key(db, device, b), shadow)
    config = DeviceConfig.model_validate(device.config) if device.config is not None else None
    return compose(device.labels or {}, config, profiles(db) if named is None else named, assignments)


def recompose(db: Session, device: Device, chunk_size: int, named: list[NamedProfile] | None = None) -> bool:
    """Store the device's composed desired state under a new revision if it changed; → whether it did."""
    if device.revoked:
        return False
    composed = compose_device(db, device, chunk_size, named)
    body = composed.body()
    current = dict(device.desired or {})
    current.pop("revision", None)
    current.pop("issued_at", None)
    if device.desired is not None and current == body:
        return False
    if device.desired is None and device.desired_revision == 0 and body == EMPTY_BODY:
        return False  # a device nothing was ever set for needs no revision yet
    device.desired_revision += 1
    device.desired = composed.desired.model_copy(update={"revision": device.desired_revision}).model_dump(
        mode="json", by_alias=True)
    device.desired.pop("issued_at", None)  # stamped when published
    return True


def recompose_all(db: Session, chunk_size: int, devices: Iterable[Device] | None = None) -> list[str]:
    """Recompose many devices (a profile changed); → the ids that got a new revision."""
    named = profiles(db)
    if devices is None:
        devices = db.scalars(select(Device).where(Device.revoked.is_(False)).order_by(Device.id).with_for_update())
    return [d.id for d in devices if recompose(db, d, chunk_size, named)]

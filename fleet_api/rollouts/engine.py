"""The rollout state machine. Plain functions over a database session: no HTTP, no MQTT.

pending → running (wave k) → succeeded | aborted; a device counts as succeeded only when it reports serving
the rollout's bundle (which the agent does only after the golden check), never when its download ended.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_protocol.messages import DeviceState, Reported

from ..db.tables import Device, Rollout, RolloutDevice, utcnow
from ..errors import Conflict, Invalid
from ..registry.bundles import pick_variant, variants
from ..registry.devices import HARDWARE_LABEL, select_devices
from . import waves as wave_plan
from .desired import current_model, model_ref, set_desired

log = logging.getLogger(__name__)

ACTIVE = ("pending", "running", "paused")
DEFAULT_GATES: dict[str, Any] = {
    "min_success_ratio": 1.0,  # share of a wave that must serve the new version before the next wave starts
    "max_failure_ratio": 0.0,  # share of a wave that may fail before the rollout aborts by itself
    "soak_s": 0.0,  # time a wave must stay healthy after reaching its success ratio
    "wave_timeout_s": 1800.0,  # a wave that has not passed by then aborts the rollout
}


def create_rollout(
    db: Session, *, model: str, version: str, selector: dict[str, str], waves: str | list, gates: dict[str, Any], chunk_size: int
) -> Rollout:
    bundles = variants(db, model, version)
    unknown = set(gates) - set(DEFAULT_GATES)
    if unknown:
        raise Invalid(f"unknown gate(s) {sorted(unknown)}; known: {sorted(DEFAULT_GATES)}")
    targets = select_devices(db, selector)
    if not targets:
        raise Invalid(f"no registered device matches selector {selector}")
    busy = db.scalars(
        select(RolloutDevice.device_id)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(Rollout.state.in_(ACTIVE), RolloutDevice.device_id.in_([d.id for d in targets]))
    ).all()
    if busy:
        raise Conflict(f"device(s) {sorted(busy)[:10]} are already in an active rollout")
    counts = wave_plan.plan(waves, len(targets))
    rollout = Rollout(
        model=model, version=version, selector=selector, waves=counts, gates={**DEFAULT_GATES, **gates}, state="pending"
    )
    db.add(rollout)
    db.flush()
    for i, device in enumerate(targets):
        wave = next(k for k, c in enumerate(counts) if i < c)
        bundle = pick_variant(bundles, device.labels.get(HARDWARE_LABEL))
        db.add(RolloutDevice(rollout_id=rollout.id, device_id=device.id, wave=wave, bundle_sha256=bundle.sha256))
    db.flush()
    _start_wave(db, rollout, 0, chunk_size)
    return rollout


def _start_wave(db: Session, rollout: Rollout, wave: int, chunk_size: int) -> None:
    from ..db.tables import Bundle

    rollout.state = "running"
    rollout.current_wave = wave
    rollout.wave_started_at = utcnow()
    members = db.scalars(
        select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.wave == wave)
    ).all()
    for member in members:
        device = db.get(Device, member.device_id)
        bundle = db.scalar(select(Bundle).where(Bundle.sha256 == member.bundle_sha256))
        member.previous = current_model(device)
        member.revision = set_desired(db, device, model_ref(bundle, chunk_size), rollout.id)
        member.state = "notified"
        # A device already serving this bundle has nothing to do.
        if _serves(device.reported, member.bundle_sha256):
            member.state = "succeeded"
    log.info("rollout %s: wave %d started (%d devices)", rollout.id, wave + 1, len(members))


def _serves(reported: dict[str, Any] | None, sha256: str) -> bool:
    return bool(reported) and reported.get("state") == "serving" and (reported.get("model") or {}).get("sha256") == sha256


def on_reported(db: Session, device_id: str, reported: Reported) -> list[int]:
    """Update the device's rollout membership from what it reported; returns the rollouts touched."""
    rows = db.execute(
        select(RolloutDevice, Rollout)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(RolloutDevice.device_id == device_id, Rollout.state.in_(ACTIVE), RolloutDevice.state == "notified")
    ).all()
    touched = []
    for member, rollout in rows:
        if member.revision is None or reported.revision < member.revision:
            continue  # about an older desired state
        if reported.state == DeviceState.serving and reported.model and reported.model.sha256 == member.bundle_sha256:
            member.state = "succeeded"
        elif reported.state in (DeviceState.failed, DeviceState.rolled_back):
            member.state = "failed"
            member.error = reported.error or reported.state.value
        else:
            continue
        touched.append(rollout.id)
    return touched


def evaluate(db: Session, rollout_id: int, chunk_size: int, now: dt.datetime | None = None) -> str:
    """Apply the current wave's gates: abort, wait, start the next wave, or finish. Returns the state."""
    now = now or utcnow()
    rollout = db.scalar(select(Rollout).where(Rollout.id == rollout_id).with_for_update())
    if rollout is None or rollout.state != "running":
        return rollout.state if rollout else "missing"
    gates = rollout.gates
    members = db.scalars(
        select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.wave == rollout.current_wave)
    ).all()
    total = len(members)
    failed = sum(m.state == "failed" for m in members)
    succeeded = sum(m.state == "succeeded" for m in members)
    if failed / total > gates["max_failure_ratio"]:
        errors = sorted({m.error for m in members if m.error})
        abort(db, rollout, f"wave {rollout.current_wave + 1}: {failed}/{total} devices failed ({'; '.join(errors)[:500]})", chunk_size)
        return rollout.state
    started = rollout.wave_started_at
    if started is not None and started.tzinfo is None:  # SQLite hands back naive datetimes
        started = started.replace(tzinfo=dt.timezone.utc)
    elapsed = (now - started).total_seconds() if started else 0.0
    if succeeded / total >= gates["min_success_ratio"]:
        if elapsed < gates["soak_s"]:
            return rollout.state
        if rollout.current_wave + 1 >= len(rollout.waves):
            rollout.state = "succeeded"
            log.info("rollout %s succeeded", rollout.id)
        else:
            _start_wave(db, rollout, rollout.current_wave + 1, chunk_size)
        return rollout.state
    if elapsed > gates["wave_timeout_s"]:
        abort(db, rollout, f"wave {rollout.current_wave + 1} timed out: {succeeded}/{total} succeeded", chunk_size)
    return rollout.state


def abort(db: Session, rollout: Rollout, reason: str, chunk_size: int) -> None:
    """Stop the rollout and give every device it moved its previous model back as desired state."""
    rollout.state = "aborted"
    rollout.reason = reason
    moved = db.scalars(
        select(RolloutDevice).where(
            RolloutDevice.rollout_id == rollout.id, RolloutDevice.state.in_(("notified", "succeeded", "failed"))
        )
    ).all()
    for member in moved:
        device = db.get(Device, member.device_id)
        set_desired(db, device, member.previous, None)
        member.state = "reverted"
    log.warning("rollout %s aborted: %s (%d devices reverted)", rollout.id, reason, len(moved))


def active_rollout_ids(db: Session) -> list[int]:
    return list(db.scalars(select(Rollout.id).where(Rollout.state == "running")))

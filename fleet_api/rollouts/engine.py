"""The rollout state machine. Plain functions over a database session: no HTTP, no MQTT.

pending → running (wave k) ⇄ paused → succeeded | aborted | rolled_back. A device counts as succeeded only when
it reports serving the rollout's bundle (which the agent does only after its golden check), never when its
download ended. A wave passes when enough devices succeeded, none too many failed, and their telemetry stayed
healthy for the soak time; otherwise the rollout aborts by itself and every device it moved gets its previous
model back as desired state. Every function expects the caller's transaction and takes the rollout's row lock
first, so two API processes never advance one rollout twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_protocol.messages import DeviceState, Reported

from .. import telemetry
from ..db.tables import Bundle, Device, Rollout, RolloutDevice, utcnow
from ..errors import Conflict, Invalid, NotFound
from ..registry.bundles import pick_variant, variants
from ..registry.devices import HARDWARE_LABEL, select_devices
from . import waves as wave_plan
from ..insights.rollouts import reason_with_analysis
from .desired import current_model, model_ref, set_desired

log = logging.getLogger(__name__)

ACTIVE = ("pending", "running", "paused")
FINAL = ("succeeded", "aborted", "rolled_back")
DEFAULT_GATES: dict[str, Any] = {
    "min_success_ratio": 1.0,  # share of a wave that must serve the new version before the next wave starts
    "max_failure_ratio": 0.0,  # share of a wave that may fail before the rollout aborts by itself
    "soak_s": 0.0,  # time a wave must stay healthy after reaching its success ratio
    "wave_timeout_s": 1800.0,  # a wave that has not passed by then aborts the rollout
    # Health during the soak (None: not checked). The wave's mean p95 on the new version may exceed the
    # previous version's by at most this many percent; its error rate (errors / requests) must stay below.
    "max_p95_increase_pct": None,
    "max_error_rate": None,
    "baseline_window_s": 3600.0,  # how far back the previous version's telemetry is taken for the baseline
}
MEMBER_MOVED = ("notified", "succeeded", "failed")


def _validate_gates(gates: dict[str, Any]) -> dict[str, Any]:
    unknown = set(gates) - set(DEFAULT_GATES)
    if unknown:
        raise Invalid(f"unknown gate(s) {sorted(unknown)}; known: {sorted(DEFAULT_GATES)}")
    merged = {**DEFAULT_GATES, **gates}
    for name, value in merged.items():
        if value is None and DEFAULT_GATES[name] is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise Invalid(f"gate {name} must be a non-negative number, not {value!r}")
    for name in ("min_success_ratio", "max_failure_ratio", "max_error_rate"):
        if merged[name] is not None and merged[name] > 1:
            raise Invalid(f"gate {name} is a ratio between 0 and 1, not {merged[name]!r}")
    return merged


def create_rollout(
    db: Session, *, model: str, version: str, selector: dict[str, str], waves: str | list, gates: dict[str, Any], chunk_size: int
) -> Rollout:
    bundles = variants(db, model, version)
    gates = _validate_gates(gates)
    targets = select_devices(db, selector, lock=True)
    if not targets:
        raise Invalid(f"no registered device matches selector {selector}")
    busy = db.scalars(
        select(RolloutDevice.device_id)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(Rollout.state.in_(ACTIVE), RolloutDevice.device_id.in_([d.id for d in targets]),
               RolloutDevice.state != "removed")
    ).all()
    if busy:
        raise Conflict(f"device(s) {sorted(set(busy))[:10]} are already in an active rollout")
    counts = wave_plan.plan(waves, len(targets))
    rollout = Rollout(model=model, version=version, selector=selector, waves=counts, gates=gates, state="pending")
    db.add(rollout)
    db.flush()
    for i, device in enumerate(targets):
        wave = next(k for k, c in enumerate(counts) if i < c)
        bundle = pick_variant(bundles, device.labels.get(HARDWARE_LABEL))
        db.add(RolloutDevice(rollout_id=rollout.id, device_id=device.id, wave=wave, bundle_sha256=bundle.sha256))
    db.flush()
    _start_wave(db, rollout, 0, chunk_size)
    return rollout


def lock(db: Session, rollout_id: int) -> Rollout:
    rollout = db.scalar(select(Rollout).where(Rollout.id == rollout_id).with_for_update())
    if rollout is None:
        raise NotFound(f"unknown rollout {rollout_id}")
    return rollout


def _start_wave(db: Session, rollout: Rollout, wave: int, chunk_size: int) -> None:
    rollout.state = "running"
    rollout.current_wave = wave
    rollout.wave_started_at = utcnow()
    rollout.soak_started_at = None
    members = db.scalars(
        select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.wave == wave,
                                    RolloutDevice.state == "waiting")
    ).all()
    shas = {m.bundle_sha256 for m in members}
    bundles = {b.sha256: b for b in db.scalars(select(Bundle).where(Bundle.sha256.in_(shas)))}
    for member in members:
        device = db.get(Device, member.device_id)
        member.previous = current_model(device)
        member.revision = set_desired(db, device, model_ref(bundles[member.bundle_sha256], chunk_size), rollout.id)
        member.state = "notified"
        # A device already serving this bundle has nothing to do.
        if _serves(device.reported, member.bundle_sha256):
            member.state = "succeeded"
            member.succeeded_at = utcnow()
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
            member.succeeded_at = utcnow()
        elif reported.state in (DeviceState.failed, DeviceState.rolled_back):
            member.state = "failed"
            member.error = reported.error or reported.state.value
        else:
            continue
        touched.append(rollout.id)
    return touched


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    return t.replace(tzinfo=dt.timezone.utc) if t is not None and t.tzinfo is None else t  # SQLite gives naive ones


def evaluate(db: Session, rollout_id: int, chunk_size: int, now: dt.datetime | None = None) -> str:
    """Apply the current wave's gates: abort, wait, start the next wave, or finish. Returns the state."""
    now = now or utcnow()
    rollout = db.scalar(select(Rollout).where(Rollout.id == rollout_id).with_for_update())
    if rollout is None or rollout.state != "running":
        return rollout.state if rollout else "missing"
    gates = rollout.gates
    members = [
        m for m in db.scalars(
            select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.wave == rollout.current_wave)
        ).all() if m.state != "removed"
    ]
    total = len(members)
    wave_no = rollout.current_wave + 1
    if total == 0:  # every device of the wave was revoked meanwhile
        return _next_wave_or_finish(db, rollout, chunk_size)
    failed = [m for m in members if m.state == "failed"]
    succeeded = [m for m in members if m.state == "succeeded"]
    if len(failed) / total > gates["max_failure_ratio"]:
        errors = sorted({m.error for m in failed if m.error})
        abort(db, rollout, f"wave {wave_no}: {len(failed)}/{total} devices failed ({'; '.join(errors)[:500]})", chunk_size)
        return rollout.state
    elapsed = (now - _aware(rollout.wave_started_at)).total_seconds() if rollout.wave_started_at else 0.0
    if len(succeeded) / total >= gates["min_success_ratio"]:
        if rollout.soak_started_at is None:
            rollout.soak_started_at = now
        soaked = (now - _aware(rollout.soak_started_at)).total_seconds()
        verdict, healthy_enough = _health_verdict(db, rollout, succeeded, now)
        if verdict:
            abort(db, rollout, f"wave {wave_no}: {verdict}", chunk_size)
            return rollout.state
        if soaked >= gates["soak_s"] and healthy_enough:
            return _next_wave_or_finish(db, rollout, chunk_size)
    if elapsed > gates["wave_timeout_s"]:
        abort(db, rollout, f"wave {wave_no} timed out: {len(succeeded)}/{total} succeeded, {len(failed)} failed", chunk_size)
    return rollout.state


def _next_wave_or_finish(db: Session, rollout: Rollout, chunk_size: int) -> str:
    if rollout.current_wave + 1 >= len(rollout.waves):
        rollout.state = "succeeded"
        log.info("rollout %s succeeded", rollout.id)
    else:
        _start_wave(db, rollout, rollout.current_wave + 1, chunk_size)
    return rollout.state


def _health_verdict(db: Session, rollout: Rollout, succeeded: list[RolloutDevice], now: dt.datetime) -> tuple[str | None, bool]:
    """(why the wave is unhealthy or None, whether there is enough telemetry to call it healthy)."""
    gates = rollout.gates
    max_increase, max_errors = gates.get("max_p95_increase_pct"), gates.get("max_error_rate")
    if max_increase is None and max_errors is None:
        return None, True
    ids = [m.device_id for m in succeeded]
    new_shas = {m.bundle_sha256 for m in succeeded}
    current = telemetry.health(db, ids, new_shas, _aware(rollout.soak_started_at))
    if current.messages == 0:
        return None, False  # nothing to judge yet: the soak goes on until telemetry comes or the wave times out
    if max_errors is not None and current.requests and current.error_rate > max_errors:
        return (f"error rate {current.error_rate:.1%} on the new version is above the {max_errors:.1%} limit "
                f"({current.errors}/{current.requests} requests)"), True
    if max_increase is not None and current.p95_ms is not None:
        old_shas = {(m.previous or {}).get("sha256") for m in succeeded} - {None}
        since = _aware(rollout.created_at) - dt.timedelta(seconds=gates.get("baseline_window_s") or 3600.0)
        baseline = telemetry.health(db, ids, old_shas, since)
        if baseline.p95_ms is None:  # these devices never reported on the old version: compare with the fleet's
            baseline = _fleet_baseline(db, old_shas, since)
        if baseline.p95_ms is not None and baseline.p95_ms > 0:
            increase = (current.p95_ms / baseline.p95_ms - 1) * 100
            if increase > max_increase:
                return (f"p95 latency {current.p95_ms:.2f} ms is {increase:.0f} % above the previous version's "
                        f"{baseline.p95_ms:.2f} ms (limit {max_increase:g} %)"), True
    return None, True


def _fleet_baseline(db: Session, shas: set[str], since: dt.datetime) -> telemetry.Health:
    from ..db.tables import TelemetryMinute

    ids = db.scalars(
        select(TelemetryMinute.device_id).where(TelemetryMinute.model_sha256.in_(shas), TelemetryMinute.minute >= since).distinct()
    ).all()
    return telemetry.health(db, ids, shas, since)


def _revert(db: Session, rollout: Rollout, states: tuple[str, ...]) -> int:
    moved = db.scalars(
        select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.state.in_(states))
    ).all()
    for member in moved:
        device = db.get(Device, member.device_id)
        if device is None or device.revoked:
            continue
        set_desired(db, device, member.previous, None)
        member.state = "reverted"
    return len(moved)


def abort(db: Session, rollout: Rollout, reason: str, chunk_size: int = 0) -> None:
    """Stop the rollout and give every device it moved its previous model back as desired state."""
    rollout.state = "aborted"
    rollout.reason = reason_with_analysis(db, rollout.id, reason)  # before the revert: who failed, and what they share
    n = _revert(db, rollout, MEMBER_MOVED)
    log.warning("rollout %s aborted: %s (%d devices reverted)", rollout.id, reason, n)


def pause(db: Session, rollout_id: int, reason: str | None) -> Rollout:
    rollout = lock(db, rollout_id)
    if rollout.state != "running":
        raise Conflict(f"rollout {rollout_id} is {rollout.state}; only a running rollout can be paused")
    rollout.state = "paused"
    rollout.reason = reason or "paused"
    return rollout


def resume(db: Session, rollout_id: int) -> Rollout:
    rollout = lock(db, rollout_id)
    if rollout.state != "paused":
        raise Conflict(f"rollout {rollout_id} is {rollout.state}; only a paused rollout can be resumed")
    rollout.state = "running"
    rollout.reason = None
    # The wave gets its full time again and soaks afresh: time spent paused proved nothing either way.
    rollout.wave_started_at = utcnow()
    rollout.soak_started_at = None
    return rollout


def abort_manually(db: Session, rollout_id: int, reason: str | None) -> Rollout:
    rollout = lock(db, rollout_id)
    if rollout.state not in ACTIVE:
        raise Conflict(f"rollout {rollout_id} is already {rollout.state}")
    abort(db, rollout, reason or "aborted by an operator")
    return rollout


def rollback(db: Session, rollout_id: int, reason: str | None) -> Rollout:
    """Send every device the rollout moved back to its previous model, also after the rollout succeeded."""
    rollout = lock(db, rollout_id)
    if rollout.state in ("aborted", "rolled_back"):
        raise Conflict(f"rollout {rollout_id} is {rollout.state}: its devices already went back")
    newer = db.scalar(
        select(RolloutDevice.device_id).join(Rollout, Rollout.id == RolloutDevice.rollout_id).where(
            Rollout.id > rollout.id, RolloutDevice.state.in_(("notified", "succeeded", "failed")),
            RolloutDevice.device_id.in_(select(RolloutDevice.device_id).where(RolloutDevice.rollout_id == rollout.id)),
        ).limit(1)
    )
    if newer is not None:
        raise Conflict(f"device {newer!r} was moved by a later rollout; roll that one back first")
    rollout.state = "rolled_back"
    rollout.reason = reason or "rolled back by an operator"
    n = _revert(db, rollout, MEMBER_MOVED)
    log.warning("rollout %s rolled back: %d devices reverted", rollout.id, n)
    return rollout


def remove_device(db: Session, device_id: str) -> None:
    """A revoked device leaves its active rollouts; the waves are judged without it."""
    members = db.scalars(
        select(RolloutDevice).join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(RolloutDevice.device_id == device_id, Rollout.state.in_(ACTIVE))
    ).all()
    for m in members:
        m.state = "removed"


def active_rollout_ids(db: Session) -> list[int]:
    return list(db.scalars(select(Rollout.id).where(Rollout.state == "running")))

"""The rollout machine. Plain functions over a database session: no HTTP, no MQTT.

A rollout moves ONE model name to one version on the devices its selector picks, wave by wave, and leaves every
other model of those devices alone; there is at most one active rollout per (device, model), so rollouts of
different models run on the same devices at once. States and their allowed moves are in `states.py`.

A device counts as succeeded only when its reported entry for the model serves the rollout's bundle with the
golden check passed, never when its download ended. A wave passes when enough devices succeeded, none too many
failed, and their telemetry for that model stayed healthy for the soak time; otherwise the rollout aborts by
itself and every device it moved gets its previous assignment of the model back (or loses the model, if it had
none). Every function expects the caller's transaction and takes the rollout's row lock first, refreshing the
row from the database (`populate_existing`): a rollout read earlier in the transaction may be stale, and
judging a stale copy would override a pause or an abort another API process committed meanwhile.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_protocol.messages import ModelState, Reported, Runtime, ShadowTelemetry

from .. import telemetry
from ..db.tables import (
    Bundle,
    Device,
    Rollout,
    RolloutDevice,
    TelemetryMinute,
    aware,
    utcnow,
)
from ..desired import state as desired_state
from ..errors import Conflict, Invalid, NotFound
from ..insights.rollouts import reason_with_analysis
from ..registry.bundles import pick_variant, variants
from ..registry.devices import HARDWARE_LABEL, select_devices
from . import shadow as shadow_mode
from . import waves as wave_plan
from .gates import Gates
from .states import (
    ACTIVE,
    MOVED,
    MemberState,
    RolloutState,
    check_member,
    check_rollout,
    values,
)

log = logging.getLogger(__name__)


def _set(rollout: Rollout, target: RolloutState) -> None:
    rollout.state = check_rollout(rollout.id, rollout.state, target).value


def _set_member(member: RolloutDevice, target: MemberState) -> None:
    member.state = check_member(member.device_id, member.state, target).value


def create_rollout(db: Session, *, model: str, version: str, selector: dict[str, str], waves: str | list,
                   gates: Gates, runtime: Runtime | None, chunk_size: int, now: dt.datetime | None = None,
                   shadow: dict[str, Any] | None = None) -> Rollout:
    bundles = variants(db, model, version)
    targets = select_devices(db, selector, lock=True)
    if not targets:
        raise Invalid(f"no registered device matches selector {selector}")
    if shadow is not None:
        if gates.max_concurrent is not None:
            raise Invalid("max_concurrent paces devices taking the bundle; a shadow wave compares on all its devices "
                          "at once (leave max_concurrent unset with shadow)")
        shadow_mode.check_live(db, model, [d.id for d in targets])
    busy = db.scalars(
        select(RolloutDevice.device_id)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(Rollout.state.in_(values(ACTIVE)), Rollout.model == model,
               RolloutDevice.device_id.in_([d.id for d in targets]), RolloutDevice.state != MemberState.removed.value)
    ).all()
    if busy:
        raise Conflict(f"device(s) {sorted(set(busy))[:10]} are already in an active rollout of model {model!r}")
    counts = wave_plan.plan(waves, len(targets))
    rollout = Rollout(model=model, version=version, selector=selector, waves=counts, gates=gates.model_dump(mode="json"),
                      runtime=runtime.model_dump(mode="json") if runtime is not None else None,
                      shadow=shadow, state=RolloutState.pending.value, current_wave=-1)
    db.add(rollout)
    db.flush()
    for i, device in enumerate(targets):
        wave = next(k for k, c in enumerate(counts) if i < c)
        bundle = pick_variant(bundles, device.labels.get(HARDWARE_LABEL))
        db.add(RolloutDevice(rollout_id=rollout.id, device_id=device.id, wave=wave, bundle_sha256=bundle.sha256,
                             state=MemberState.waiting.value))
    db.flush()
    _start_wave(db, rollout, 0, chunk_size, now or utcnow())
    return rollout


def lock(db: Session, rollout_id: int) -> Rollout:
    """The rollout, row-locked and re-read from the database (never the identity map's possibly stale copy)."""
    rollout = db.scalar(
        select(Rollout).where(Rollout.id == rollout_id).with_for_update().execution_options(populate_existing=True))
    if rollout is None:
        raise NotFound(f"unknown rollout {rollout_id}")
    return rollout


def _members(db: Session, rollout: Rollout, *where: Any, limit: int | None = None) -> list[RolloutDevice]:
    return list(db.scalars(
        select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id, *where).order_by(RolloutDevice.device_id)
        .limit(limit).execution_options(populate_existing=True)))


def _start_wave(db: Session, rollout: Rollout, wave: int, chunk_size: int, now: dt.datetime) -> None:
    if rollout.state != RolloutState.running.value:
        _set(rollout, RolloutState.running)
    rollout.current_wave = wave
    rollout.wave_started_at = now
    rollout.soak_started_at = None
    told = _fill(db, rollout, chunk_size, now)
    log.info("rollout %s (%s): wave %d started (%d devices told)", rollout.id, rollout.model, wave + 1, told)


def _fill(db: Session, rollout: Rollout, chunk_size: int, now: dt.datetime) -> int:
    """Tell waiting members of the current wave to take the bundle, as many as `max_concurrent` leaves room for
    (all of them without it). A member that already serves the bundle succeeds at once and takes no slot. Only
    the current wave can have members waiting: a wave passes only once all of it was told (`_judge`).
    → how many were told."""
    limit = Gates.model_validate(rollout.gates).max_concurrent
    waiting = (RolloutDevice.wave == rollout.current_wave, RolloutDevice.state == MemberState.waiting.value)
    if limit is None:
        return _notify(db, rollout, _members(db, rollout, *waiting), chunk_size, now)
    told = 0
    while (slots := limit - _count(db, rollout, MemberState.notified)) > 0:
        batch = _members(db, rollout, *waiting, limit=slots)
        if not batch:
            break
        told += _notify(db, rollout, batch, chunk_size, now)
        db.flush()
    return told


def _count(db: Session, rollout: Rollout, state: MemberState) -> int:
    return db.scalar(select(func.count()).select_from(RolloutDevice)
                     .where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.state == state.value)) or 0


def _notify(db: Session, rollout: Rollout, members: list[RolloutDevice], chunk_size: int, now: dt.datetime) -> int:
    """Point each member's desired state at the rollout's bundle (or its shadow); → members told."""
    named = desired_state.profiles(db)
    told = 0
    for member in members:
        device = _device_of(db, member)
        if device is None:
            continue
        told += 1
        before = desired_state.get_assignment(db, device.id, rollout.model)
        prev_bundle = db.scalar(select(Bundle).where(Bundle.sha256 == before.bundle_sha256)) if before else None
        member.previous = desired_state.assignment_view(before, prev_bundle)
        if rollout.shadow is not None and not _serves(device.reported, rollout.model, member.bundle_sha256):
            # Shadow mode: the live bundle stays; the candidate only compares beside it until the wave passes.
            desired_state.set_shadow(db, device.id, rollout.model, {**rollout.shadow, "sha256": member.bundle_sha256,
                                                                     "rollout_id": rollout.id})
            desired_state.recompose(db, device, chunk_size, named)
            member.revision = device.desired_revision
            _set_member(member, MemberState.shadowing)
            continue
        desired_state.assign(db, device.id, rollout.model, member.bundle_sha256, rollout.runtime, rollout.id)
        desired_state.recompose(db, device, chunk_size, named)
        member.revision = device.desired_revision
        _set_member(member, MemberState.notified)
        # A device already serving this bundle, and not told another runtime for it, has nothing to do.
        same_runtime = before is None or before.runtime == rollout.runtime
        if same_runtime and _serves(device.reported, rollout.model, member.bundle_sha256):
            _set_member(member, MemberState.succeeded)
            member.succeeded_at = now
    return told


def _serves(reported: dict[str, Any] | None, model: str, sha256: str) -> bool:
    entry = ((reported or {}).get("models") or {}).get(model) or {}
    return (entry.get("state") == ModelState.serving.value and (entry.get("serving") or {}).get("sha256") == sha256
            and entry.get("golden_passed") is True)


def on_reported(db: Session, device_id: str, reported: Reported, now: dt.datetime | None = None) -> list[int]:
    """Update the device's memberships in active rollouts from its report; returns the rollouts touched."""
    now = now or utcnow()
    candidates = db.scalars(
        select(RolloutDevice.rollout_id)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(RolloutDevice.device_id == device_id, Rollout.state.in_(values(ACTIVE)),
               RolloutDevice.state.in_([MemberState.notified.value, MemberState.shadowing.value]))
        .order_by(RolloutDevice.rollout_id)
    ).all()
    touched = []
    for rollout_id in candidates:
        # Lock the rollout, then re-read the member (the order evaluate takes them): an abort committed since the
        # query above must not be overwritten with a late "succeeded".
        rollout = lock(db, rollout_id)
        member = db.scalar(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id,
                                                       RolloutDevice.device_id == device_id)
                           .with_for_update().execution_options(populate_existing=True))
        if rollout.state not in values(ACTIVE) or member is None or \
                member.state not in (MemberState.notified.value, MemberState.shadowing.value):
            continue
        if member.revision is None or reported.revision < member.revision:
            continue  # about an older desired state
        entry = reported.models.get(rollout.model)
        if entry is None:
            continue
        if member.state == MemberState.shadowing.value:
            shadow = entry.shadow
            if shadow is None or shadow.bundle.sha256 != member.bundle_sha256 or shadow.state != ModelState.failed:
                continue
            _set_member(member, MemberState.failed)
            member.error = f"shadow: {shadow.error or 'failed'}"[:2000]
        elif (entry.state == ModelState.serving and entry.serving is not None
                and entry.serving.sha256 == member.bundle_sha256 and entry.golden_passed is True):
            _set_member(member, MemberState.succeeded)
            member.succeeded_at = now
        elif entry.state == ModelState.failed and (entry.desired is None or entry.desired.sha256 == member.bundle_sha256):
            _set_member(member, MemberState.failed)
            member.error = (entry.error or "failed")[:2000]
        else:
            continue
        touched.append(rollout.id)
    return touched


def worth_judging(db: Session, rollout_id: int) -> bool:
    """After a device's report: could judging the rollout now do more than wait? Only when the report pushed its
    wave over a threshold — too many failed, or enough succeeded and the soak has not started — or the wave is
    in shadow. Everything else a judgement decides depends on time and telemetry (soak, timeouts, health), which
    the periodic tick judges anyway. Judging once per report, under the rollout's row lock, made every report of
    a wave wait for the others: a rollout's pace was one report at a time."""
    rollout = db.scalar(select(Rollout).where(Rollout.id == rollout_id).execution_options(populate_existing=True))
    if rollout is None or rollout.state != RolloutState.running.value:
        return False
    counts, total = _wave_counts(db, rollout)
    if total == 0 or counts.get(MemberState.shadowing.value):
        return True
    gates = Gates.model_validate(rollout.gates)
    if counts.get(MemberState.failed.value, 0) / total > gates.max_failure_ratio:
        return True
    if gates.max_concurrent is not None and counts.get(MemberState.waiting.value):
        return True  # the report's verdict freed a slot: the next waiting device is told now, not at the tick
    return rollout.soak_started_at is None and counts.get(MemberState.succeeded.value, 0) / total >= gates.min_success_ratio


def evaluate(db: Session, rollout_id: int, chunk_size: int, now: dt.datetime | None = None) -> tuple[str, str]:
    """Apply the current wave's gates: abort, wait, start the next wave, or finish. → (state before, state after)."""
    try:
        rollout = lock(db, rollout_id)
    except NotFound:
        return "missing", "missing"
    before = rollout.state
    return before, _judge(db, rollout, chunk_size, now or utcnow())


def _wave_counts(db: Session, rollout: Rollout) -> tuple[dict[str, int], int]:
    """The current wave's members by state, counted in the database, and how many still count (not removed)."""
    counts: dict[str, int] = {state: n for state, n in db.execute(
        select(RolloutDevice.state, func.count())
        .where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.wave == rollout.current_wave)
        .group_by(RolloutDevice.state))}
    return counts, sum(n for state, n in counts.items() if state != MemberState.removed.value)


def _judge(db: Session, rollout: Rollout, chunk_size: int, now: dt.datetime) -> str:
    # Counts first; members are loaded only for what needs them (an abort's errors, the health gates, shadow
    # verdicts): a wave of 5,000 devices costs one GROUP BY per judgement, not 5,000 objects.
    if rollout.state != RolloutState.running.value:
        return rollout.state
    gates = Gates.model_validate(rollout.gates)
    counts, total = _wave_counts(db, rollout)
    wave_no = rollout.current_wave + 1
    if total == 0:  # every device of the wave was revoked meanwhile
        return _next_wave_or_finish(db, rollout, chunk_size, now)
    n_failed = counts.get(MemberState.failed.value, 0)
    in_wave = RolloutDevice.wave == rollout.current_wave
    if n_failed / total > gates.max_failure_ratio:
        failed = _members(db, rollout, in_wave, RolloutDevice.state == MemberState.failed.value)
        errors = sorted({m.error for m in failed if m.error})
        abort(db, rollout, f"wave {wave_no}: {n_failed}/{total} devices failed ({'; '.join(errors)[:500]})", chunk_size)
        return rollout.state
    # After the failure check: an aborting wave tells nobody more.
    if gates.max_concurrent is not None and counts.get(MemberState.waiting.value) and _fill(db, rollout, chunk_size, now):
        counts, total = _wave_counts(db, rollout)
    n_succeeded = counts.get(MemberState.succeeded.value, 0)
    started = aware(rollout.wave_started_at)
    elapsed = (now - started).total_seconds() if started else 0.0
    if counts.get(MemberState.shadowing.value):
        shadowing = _members(db, rollout, in_wave, RolloutDevice.state == MemberState.shadowing.value)
        return _judge_shadow(db, rollout, gates, shadowing, total, wave_no, elapsed, chunk_size, now)
    # A wave passes only once all of it was told (max_concurrent): a device still waiting for a slot when its
    # wave passed would never be told at all.
    if n_succeeded / total >= gates.min_success_ratio and not counts.get(MemberState.waiting.value):
        if rollout.soak_started_at is None:
            rollout.soak_started_at = now
        soak_start = aware(rollout.soak_started_at) or now
        soaked = (now - soak_start).total_seconds()
        health_gated = gates.max_p95_increase_pct is not None or gates.max_error_rate is not None
        succeeded = _members(db, rollout, in_wave, RolloutDevice.state == MemberState.succeeded.value) \
            if health_gated else []
        verdict, healthy_enough = _health_verdict(db, rollout, gates, succeeded, soak_start)
        if verdict:
            abort(db, rollout, f"wave {wave_no}: {verdict}", chunk_size)
            return rollout.state
        if soaked >= gates.soak_s and healthy_enough:
            return _next_wave_or_finish(db, rollout, chunk_size, now)
    if elapsed > gates.wave_timeout_s:
        abort(db, rollout, f"wave {wave_no} timed out: {n_succeeded}/{total} succeeded, {n_failed} failed", chunk_size)
    return rollout.state


def _judge_shadow(db: Session, rollout: Rollout, gates: Gates, shadowing: list[RolloutDevice], total: int,
                  wave_no: int, elapsed: float, chunk_size: int, now: dt.datetime) -> str:
    """A wave in shadow: abort on the first device whose numbers fail a gate; promote the wave (its devices are
    told to serve the candidate) once enough of them have enough samples and pass; abort at the wave's timeout."""
    verdicts = {m.device_id: shadow_mode.verdict(gates, rollout.version,
                                                 ShadowTelemetry.model_validate(m.shadow) if m.shadow else None)
                for m in shadowing}
    bad = {d: v for d, v in verdicts.items() if v.failed}
    if bad:
        detail = "; ".join(f"{d}: {v.text}" for d, v in sorted(bad.items()))
        abort(db, rollout, f"wave {wave_no} in shadow: {len(bad)}/{total} devices failed the shadow gates ({detail})"[:2000],
              chunk_size)
        return rollout.state
    passed = [m for m in shadowing if verdicts[m.device_id].passed]
    if len(passed) / total >= gates.min_success_ratio:
        _promote(db, rollout, shadowing, verdicts, chunk_size, now)
        return rollout.state
    if elapsed > gates.wave_timeout_s:
        detail = "; ".join(f"{d}: {v.text}" for d, v in sorted(verdicts.items()))
        abort(db, rollout, f"wave {wave_no} timed out in shadow: {len(passed)}/{total} passed ({detail})"[:2000], chunk_size)
    return rollout.state


def _device_of(db: Session, member: RolloutDevice) -> Device | None:
    """The member's device; None, with the member marked removed, when it was revoked or is gone."""
    device = db.get(Device, member.device_id)
    if device is None or device.revoked:
        _set_member(member, MemberState.removed)
        return None
    return device


def _promote(db: Session, rollout: Rollout, shadowing: list[RolloutDevice], verdicts: dict, chunk_size: int,
             now: dt.datetime) -> None:
    """The wave's candidate proved itself beside the live model: its devices are told to serve it (the shadow goes)."""
    named = desired_state.profiles(db)
    for member in shadowing:
        device = _device_of(db, member)
        if device is None:
            continue
        desired_state.assign(db, device.id, rollout.model, member.bundle_sha256, rollout.runtime, rollout.id)
        desired_state.recompose(db, device, chunk_size, named)
        member.revision = device.desired_revision
        _set_member(member, MemberState.notified)
    # The serving half of the wave gets its own time and soak.
    rollout.wave_started_at = now
    rollout.soak_started_at = None
    log.info("rollout %s (%s): wave %d promoted from shadow (%s)", rollout.id, rollout.model, rollout.current_wave + 1,
             "; ".join(f"{d}: {v.text}" for d, v in sorted(verdicts.items())))


def record_shadow(db: Session, device_id: str, model: str, shadow: ShadowTelemetry) -> bool:
    """Keep a shadowing device's latest numbers of the candidate (its telemetry); → whether one was kept."""
    member = db.scalar(
        select(RolloutDevice).join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(RolloutDevice.device_id == device_id, Rollout.model == model, Rollout.version == shadow.version,
               Rollout.state.in_(values(ACTIVE)), RolloutDevice.state == MemberState.shadowing.value).limit(1))
    if member is None:
        return False
    member.shadow = shadow.model_dump(mode="json")
    return True


def _next_wave_or_finish(db: Session, rollout: Rollout, chunk_size: int, now: dt.datetime) -> str:
    if rollout.current_wave + 1 >= len(rollout.waves):
        _set(rollout, RolloutState.succeeded)
        log.info("rollout %s succeeded", rollout.id)
    else:
        _start_wave(db, rollout, rollout.current_wave + 1, chunk_size, now)
    return rollout.state


def _health_verdict(db: Session, rollout: Rollout, gates: Gates, succeeded: list[RolloutDevice],
                    soak_start: dt.datetime) -> tuple[str | None, bool]:
    """(why the wave is unhealthy or None, whether there is enough telemetry to call it healthy)."""
    max_increase, max_errors = gates.max_p95_increase_pct, gates.max_error_rate
    if max_increase is None and max_errors is None:
        return None, True
    ids = [m.device_id for m in succeeded]
    current = telemetry.health(db, ids, rollout.model, {rollout.version}, soak_start)
    if current.messages == 0:
        return None, False  # nothing to judge yet: the soak goes on until telemetry comes or the wave times out
    if max_errors is not None and current.requests and current.error_rate > max_errors:
        return (f"error rate {current.error_rate:.1%} of {rollout.model} {rollout.version} is above the "
                f"{max_errors:.1%} limit ({current.errors}/{current.requests} requests)"), True
    if max_increase is not None and current.p95_ms is not None:
        old_versions = {str(v) for m in succeeded if (v := (m.previous or {}).get("version"))} - {rollout.version}
        created = aware(rollout.created_at) or soak_start
        since = created - dt.timedelta(seconds=gates.baseline_window_s)
        baseline = telemetry.health(db, ids, rollout.model, old_versions, since)
        if baseline.p95_ms is None:  # these devices never reported on the old version: compare with the fleet's
            baseline = _fleet_baseline(db, rollout.model, old_versions, since)
        if baseline.p95_ms is not None and baseline.p95_ms > 0:
            increase = (current.p95_ms / baseline.p95_ms - 1) * 100
            if increase > max_increase:
                return (f"p95 latency {current.p95_ms:.2f} ms is {increase:.0f} % above the previous version's "
                        f"{baseline.p95_ms:.2f} ms (limit {max_increase:g} %)"), True
    return None, True


def _fleet_baseline(db: Session, model: str, versions: set[str], since: dt.datetime) -> telemetry.Health:
    if not versions:
        return telemetry.Health()
    ids = db.scalars(
        select(TelemetryMinute.device_id).where(TelemetryMinute.model == model, TelemetryMinute.model_version.in_(versions),
                                                TelemetryMinute.minute >= since).distinct()
    ).all()
    return telemetry.health(db, ids, model, versions, since)


def _revert(db: Session, rollout: Rollout, chunk_size: int) -> int:
    """Every device the rollout moved gets its previous assignment of the model back, or loses the model."""
    moved = _members(db, rollout, RolloutDevice.state.in_(values(MOVED)))
    named = desired_state.profiles(db)
    for member in moved:
        device = db.get(Device, member.device_id)
        shadowed = member.state == MemberState.shadowing.value or (
            member.state == MemberState.failed.value and (member.error or "").startswith("shadow:"))
        _set_member(member, MemberState.reverted)
        if device is None or device.revoked:
            continue
        prev = member.previous
        if shadowed:
            desired_state.set_shadow(db, device.id, rollout.model, None)  # its live bundle never changed
        elif prev is None:
            desired_state.unassign(db, device.id, rollout.model)
        else:
            desired_state.assign(db, device.id, rollout.model, prev["sha256"], prev.get("runtime"), prev.get("rollout_id"))
        desired_state.recompose(db, device, chunk_size, named)
    return len(moved)


def abort(db: Session, rollout: Rollout, reason: str, chunk_size: int) -> None:
    """Stop the rollout and give every device it moved its previous bundle of the model back."""
    _set(rollout, RolloutState.aborted)
    rollout.reason = reason_with_analysis(db, rollout.id, reason)  # before the revert: who failed, and what they share
    n = _revert(db, rollout, chunk_size)
    log.warning("rollout %s aborted: %s (%d devices reverted)", rollout.id, reason, n)


def pause(db: Session, rollout_id: int, reason: str | None) -> Rollout:
    rollout = lock(db, rollout_id)
    _set(rollout, RolloutState.paused)
    rollout.reason = reason or "paused"
    return rollout


def resume(db: Session, rollout_id: int, now: dt.datetime | None = None) -> Rollout:
    rollout = lock(db, rollout_id)
    if rollout.state != RolloutState.paused.value:
        raise Conflict(f"rollout {rollout_id} is {rollout.state}; only a paused rollout can be resumed")
    _set(rollout, RolloutState.running)
    rollout.reason = None
    # The wave gets its full time again and soaks afresh: time spent paused proved nothing either way.
    rollout.wave_started_at = now or utcnow()
    rollout.soak_started_at = None
    return rollout


def abort_manually(db: Session, rollout_id: int, reason: str | None, chunk_size: int) -> Rollout:
    rollout = lock(db, rollout_id)
    if rollout.state not in values(ACTIVE):
        raise Conflict(f"rollout {rollout_id} is already {rollout.state}")
    abort(db, rollout, reason or "aborted by an operator", chunk_size)
    return rollout


def rollback(db: Session, rollout_id: int, reason: str | None, chunk_size: int) -> Rollout:
    """Give every device the rollout moved its previous bundle of the model back, also after it succeeded."""
    rollout = lock(db, rollout_id)
    check_rollout(rollout.id, rollout.state, RolloutState.rolled_back)
    for member in _members(db, rollout, RolloutDevice.state.in_(values(MOVED))):
        if member.state == MemberState.shadowing.value:
            continue  # its assignment is still its own: only the shadow goes
        current = desired_state.get_assignment(db, member.device_id, rollout.model)
        if current is not None and current.rollout_id != rollout.id:
            by = f"rollout {current.rollout_id}" if current.rollout_id else "a direct assignment"
            raise Conflict(f"device {member.device_id!r}'s {rollout.model} was changed since by {by}; undo that first")
    _set(rollout, RolloutState.rolled_back)
    rollout.reason = reason or "rolled back by an operator"
    n = _revert(db, rollout, chunk_size)
    log.warning("rollout %s rolled back: %d devices reverted", rollout.id, n)
    return rollout


def active_rollout_of(db: Session, device_id: str, model: str) -> int | None:
    """The active rollout moving this model on this device, if any (then nothing else may change it)."""
    return db.scalar(
        select(Rollout.id).join(RolloutDevice, RolloutDevice.rollout_id == Rollout.id)
        .where(RolloutDevice.device_id == device_id, Rollout.model == model, Rollout.state.in_(values(ACTIVE)),
               RolloutDevice.state != MemberState.removed.value).limit(1)
    )


def remove_device(db: Session, device_id: str) -> None:
    """A revoked device leaves its active rollouts; the waves are judged without it."""
    members = db.scalars(
        select(RolloutDevice).join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(RolloutDevice.device_id == device_id, Rollout.state.in_(values(ACTIVE)),
               RolloutDevice.state.not_in([MemberState.removed.value, MemberState.reverted.value]))
    ).all()
    for m in members:
        _set_member(m, MemberState.removed)


def active_rollout_ids(db: Session) -> list[int]:
    return list(db.scalars(select(Rollout.id).where(Rollout.state == RolloutState.running.value)))

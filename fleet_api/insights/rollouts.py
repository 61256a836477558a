"""Failure analysis of a rollout, from its members in the database: the hook the rollout engine calls when a
wave fails or the rollout aborts, and that `GET /v1/rollouts/{id}` shows."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.tables import Device, Rollout, RolloutDevice
from .failures import Analysis, analyze, facts_of

FAILED = ("failed",)
SUCCEEDED = ("succeeded",)


def analyze_rollout(db: Session, rollout_id: int, wave: int | None = None) -> Analysis:
    """Failed vs succeeded members of the rollout (of one wave, if given), over their labels, hardware class,
    execution provider, agent and onnxruntime versions. Members still waiting or reverted before they answered
    say nothing either way. A member that was failed and then reverted by the abort stays failed: `error` says
    why it failed, so members with an error count as failures whatever their state became."""
    rollout = db.get(Rollout, rollout_id)
    if rollout is None:
        return Analysis(0, 0, 0)
    q = select(RolloutDevice, Device).join(Device, Device.id == RolloutDevice.device_id).where(RolloutDevice.rollout_id == rollout_id)
    if wave is not None:
        q = q.where(RolloutDevice.wave == wave)
    facts = []
    for member, device in db.execute(q).all():
        failed = member.state in FAILED or (member.state == "reverted" and member.error is not None)
        if not failed and member.state not in SUCCEEDED and not (member.state == "reverted" and member.succeeded_at):
            continue
        facts.append(facts_of(device.id, failed, device.labels, device.reported, rollout.model))
    return analyze(facts)


def reason_with_analysis(db: Session, rollout_id: int, reason: str) -> str:
    """The abort reason, followed by what the failures share (when something is significant)."""
    analysis = analyze_rollout(db, rollout_id)
    if not analysis.findings:
        return reason
    return f"{reason} — {analysis.summary}"[:2000]

"""Shadow mode's verdict on one device: its numbers of the candidate against the rollout's shadow gates.

Plain data in, a verdict out (no database): the machine asks it for every shadowing device of a wave.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_protocol.messages import ShadowTelemetry

from ..db.tables import DeviceModel
from ..errors import Invalid
from .gates import Gates


@dataclass(frozen=True)
class Verdict:
    passed: bool  # enough samples and every gate holds
    failed: bool  # enough samples and a gate fails: the rollout aborts
    text: str  # the numbers, for the rollout's reason and its log


def verdict(gates: Gates, version: str, t: ShadowTelemetry | None) -> Verdict:
    if t is None or t.version != version:
        return Verdict(False, False, "no shadow numbers yet")
    agreement = "n/a" if t.agreement is None else f"{t.agreement:.3f}"
    p95 = "n/a" if t.latency_ms_p95 is None else f"{t.latency_ms_p95:.2f} ms"
    text = (f"agreement {agreement} (min {gates.min_shadow_agreement:g}) over {t.samples} samples, "
            f"p95 {p95}, max |diff| {t.max_abs_diff if t.max_abs_diff is not None else 'n/a'}")
    if t.samples < gates.min_shadow_samples:
        return Verdict(False, False, f"{text}; waiting for {gates.min_shadow_samples} samples")
    why = []
    if t.agreement is None or t.agreement < gates.min_shadow_agreement:
        why.append("agreement below the gate")
    if gates.max_shadow_p95_ms is not None and (t.latency_ms_p95 is None or t.latency_ms_p95 > gates.max_shadow_p95_ms):
        why.append(f"p95 above {gates.max_shadow_p95_ms:g} ms")
    if why:
        return Verdict(False, True, f"{text}: {', '.join(why)}")
    return Verdict(True, False, text)


def check_live(db: Session, model: str, device_ids: Iterable[str]) -> None:
    """Shadow mode compares with the live model: every target device must have one assigned."""
    ids = list(device_ids)
    have = set(db.scalars(select(DeviceModel.device_id).where(DeviceModel.model == model, DeviceModel.device_id.in_(ids))))
    missing = sorted(set(ids) - have)
    if missing:
        raise Invalid(f"shadow mode needs a live {model!r} to compare with; device(s) {missing[:10]} have none")

"""Failure analysis: a model failing on one hardware label is named first; random failures name nothing; the
rollout hook reads members and devices from the database (real SQLite, real migrations)."""

from __future__ import annotations

import numpy as np

from fleet_api.db.tables import Device, Rollout, RolloutDevice
from fleet_api.insights.failures import DeviceFacts, analyze, facts_of
from fleet_api.insights.rollouts import analyze_rollout, reason_with_analysis
from fleet_api.routes.alert_models import FailureAnalysisOut

from .helpers import sqlite_sessions

PROVIDER = {"jetson-orin": "TensorrtExecutionProvider", "jetson-nano": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def mixed_fleet(seed: int, fails_on: str | None, n: int = 60, random_failure_p: float = 0.0) -> list[DeviceFacts]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        hw = str(rng.choice(list(PROVIDER), p=[0.2, 0.3, 0.5]))
        failed = hw == fails_on if fails_on else bool(rng.random() < random_failure_p)
        out.append(DeviceFacts(f"d{i}", failed, {
            "hw": hw, "site": str(rng.choice(["plant-1", "plant-2", "plant-3"])), "provider": PROVIDER[hw],
            "agent_version": str(rng.choice(["0.3.0", "0.4.0"])), "onnxruntime_version": str(rng.choice(["1.17.3", "1.18.0"])),
        }))
    return out


def test_a_model_failing_on_one_hardware_label_is_named_first():
    devices = mixed_fleet(seed=4, fails_on="jetson-orin")
    failures = sum(d.failed for d in devices)
    analysis = analyze(devices)
    top = analysis.findings[0]
    assert ("hw", "jetson-orin") in top.feature_set and ("provider", "TensorrtExecutionProvider") in top.feature_set
    assert top.failed_with == failures == top.devices_with and top.failed_without == 0 and top.p_adjusted < 1e-6
    assert analysis.summary.startswith(f"{failures} of {failures} failures on hw=jetson-orin with TensorrtExecutionProvider")
    cpu = sum(1 for d in devices if d.features["hw"] == "cpu")
    assert f"0 of {cpu} on hw=cpu" in analysis.summary
    # pairs that only restate it ("hw=jetson-orin and site=plant-1") are left out
    assert all(not (f.feature_set & top.feature_set) for f in analysis.findings[1:])


def test_a_label_that_fails_only_partly_is_still_named_first():
    devices = mixed_fleet(seed=9, fails_on=None)
    rng = np.random.default_rng(1)
    devices = [DeviceFacts(d.device_id, d.features["hw"] == "jetson-nano" and rng.random() < 0.6 or rng.random() < 0.03,
                           d.features) for d in devices]
    top = analyze(devices).findings[0]
    assert ("hw", "jetson-nano") in top.feature_set


def test_random_failures_name_nothing_significant():
    named = [bool(analyze(mixed_fleet(seed=s, fails_on=None, random_failure_p=0.2)).findings) for s in range(40)]
    assert sum(named) <= 2, f"{sum(named)} of 40 random fleets named a cause"
    a = analyze(mixed_fleet(seed=0, fails_on=None, random_failure_p=0.2))
    assert a.summary.startswith("nothing over-represented") and a.tested > 10


def test_rollout_hook_reads_members_and_devices_from_the_database(tmp_path):
    engine, sessions = sqlite_sessions(tmp_path)
    with sessions() as db, db.begin():
        rollout = Rollout(model="faces", version="2.0.0", selector={}, waves=[47], gates={}, state="running", current_wave=0)
        db.add(rollout)
        db.flush()
        for i in range(47):
            hw = "jetson-orin" if i < 7 else "cpu"
            reported = {"schema": 2, "revision": 3, "agent_version": "0.4.0", "onnxruntime_version": "1.18.0",
                        "models": {"faces": {"state": "failed" if i < 7 else "serving", "provider": PROVIDER[hw]}}}
            db.add(Device(id=f"cam-{i}", labels={"hw": hw, "site": f"plant-{i % 3}"}, reported=reported))
            db.flush()
            db.add(RolloutDevice(rollout_id=rollout.id, device_id=f"cam-{i}", wave=0, bundle_sha256="a" * 64,
                                 state="failed" if i < 7 else "succeeded", error="golden check failed" if i < 7 else None))
        rid = rollout.id
    with sessions() as db:
        analysis = analyze_rollout(db, rid)
        assert analysis.failed == 7 and analysis.succeeded == 40
        reason = reason_with_analysis(db, rid, "wave 1: 7/47 devices failed (golden check failed)")
    assert reason.startswith("wave 1: 7/47 devices failed (golden check failed) — 7 of 7 failures on hw=jetson-orin "
                             "with TensorrtExecutionProvider (7 of 7 devices there failed); 0 of 40 on hw=cpu"), reason
    # after the abort reverted everyone, the members' errors still tell who failed
    with sessions() as db, db.begin():
        for m in db.query(RolloutDevice).all():
            m.state = "reverted"
            if m.error is None:
                m.succeeded_at = m.updated_at
    with sessions() as db:
        after = analyze_rollout(db, rid)
        assert after.findings[0].failed_with == 7
        # what GET /v1/rollouts/{id} carries, through its typed response model
        out = FailureAnalysisOut.model_validate(after.view())
        assert out.findings[0].features == [["hw=jetson-orin"], ["provider=TensorrtExecutionProvider"]]
        assert out.findings[0].others[0].feature == "hw=cpu" and out.findings[0].others[0].devices == 40
        assert analyze_rollout(db, 999).summary == "no failures to analyse"
    engine.dispose()


def test_facts_of_reads_labels_and_reported_state():
    f = facts_of("d", True, {"hw": "cpu"}, {"agent_version": "0.4.0", "onnxruntime_version": "1.18.0",
                                           "hardware": {"machine": "aarch64", "cpus": 4},
                                           "models": {"faces": {"provider": "CUDAExecutionProvider"}}}, "faces")
    assert f.features == {"hw": "cpu", "provider": "CUDAExecutionProvider", "agent_version": "0.4.0",
                          "onnxruntime_version": "1.18.0", "hardware.machine": "aarch64", "hardware.cpus": "4"}

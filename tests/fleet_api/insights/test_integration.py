"""The insights wired into the fleet core (FleetService): telemetry ingestion feeds them, an aborted rollout's
reason and GET /v1/rollouts/{id} carry the failure analysis. Real SQLite and PostgreSQL (the fleet_api fixtures).

Needs the v2 fleet core (branch api10); skipped in a tree without it."""

from __future__ import annotations

import pytest

pytest.importorskip("fleet_api.routes.deps", reason="needs the v2 fleet core (branch api10)")

from fleet_protocol.messages import Health, ModelState, Telemetry
from tests.fleet_api.devices import OPS, report, upload


def test_a_rollout_failing_on_one_hardware_class_names_it_in_its_reason(make_service, bundles):
    service = make_service()
    v1, v2 = upload(service, bundles["1.0.0"]), upload(service, bundles["2.0.0"])
    hw = {f"d{i:02d}": "jetson-orin" if i % 4 == 0 else "cpu" for i in range(20)}  # 5 orin, 15 cpu
    for device_id, label in hw.items():
        service.register_device(device_id, {"site": "lab", "hw": label})
    r = service.create_rollout("digits", "2.0.0", "site=lab", "100%", {"max_failure_ratio": 0.2}, OPS)
    members = sorted(r["devices"], key=lambda m: hw[m["device_id"]] == "jetson-orin")  # the cpu ones answer first
    for m in members:
        if hw[m["device_id"]] == "cpu":
            report(service, m["device_id"], m["revision"], v2)
        else:
            report(service, m["device_id"], m["revision"], v2, ModelState.failed, "EngineBuildError: out of memory")
    r = service.get_rollout(r["id"])
    assert r["state"] == "aborted"
    assert "5 of 5 failures on hw=jetson-orin (5 of 5 devices there failed); 0 of 15 on hw=cpu" in r["reason"], r["reason"]
    analysis = r["failure_analysis"]
    assert analysis["failed"] == 5 and analysis["succeeded"] == 15
    assert analysis["findings"][0]["features"] == [["hw=jetson-orin"]] and analysis["findings"][0]["p_adjusted"] < 0.05
    assert v1  # the devices went back to it (the rollout machine's own tests check how)


def test_telemetry_ingestion_feeds_the_insights(make_service):
    service = make_service()
    service.register_device("cam-1", {"hw": "cpu"})
    health = Health(disk_free_bytes=40 * 2**30, disk_total_bytes=64 * 2**30, memory_used_mb=1000, memory_total_mb=8000)
    service.on_telemetry("cam-1", Telemetry(window_s=10, health=health))
    history = service.insights.core.devices["cam-1"]
    assert len(history.disk) == 1 and len(history.memory) == 1
    assert service.insights.evaluate() == []  # one sample predicts nothing


def test_a_block_of_telemetry_feeds_the_rollups_the_insights_and_the_drift_monitor(make_service):
    from fleet_protocol.messages import Histogram, ModelTelemetry

    service = make_service()
    for device_id in ("cam-1", "cam-2"):
        service.register_device(device_id, {"hw": "cpu"})

    def window(k: int) -> Telemetry:
        return Telemetry(window_s=10, health=Health(disk_free_bytes=40 - k, disk_total_bytes=64), models={
            "m": ModelTelemetry(version="1", requests=100, errors=1, latency_ms_p95=10.0 + k,
                                input_mean=Histogram(counts=[10] * 10))})

    service.on_telemetry_batch([(d, window(k)) for k in range(8) for d in ("cam-1", "cam-2")])
    assert service.flush_telemetry() == 4  # a device row and a model row each, this minute
    for device_id in ("cam-1", "cam-2"):
        history = service.insights.core.devices[device_id]
        assert len(history.disk) == 8 and list(history.models["m"].p95._v) == [10.0 + k for k in range(8)]
        assert history.models["m"].baselines["error_rate"].ewma == pytest.approx(0.01)
    scores = {(s["device_id"], s["stat"]): s["windows"] for s in service.drift.scores()}
    assert scores == {("cam-1", "input_mean"): 8, ("cam-2", "input_mean"): 8}  # scored: equal histograms, PSI 0

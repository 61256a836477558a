"""Shadow-mode rollouts through the core service (real SQLite; devices played as the MQTT shell hands their
messages over; time injected): the candidate goes beside the live bundle, the gates read the devices' shadow
numbers, a wave promotes or the rollout aborts with the numbers, and an abort only takes the shadow away."""

from __future__ import annotations

import datetime as dt

import pytest

from fleet_api.errors import Invalid
from fleet_protocol.messages import (
    ModelReport,
    ModelState,
    ModelTelemetry,
    Reported,
    ServingModel,
    ShadowReport,
    ShadowTelemetry,
    Telemetry,
)
from tests.fleet_api.devices import model_of, model_report, play_devices, upload

SHADOW = {"sample_rate": 0.5, "cpu_budget": 0.2}
GATES = {"min_shadow_samples": 50, "min_shadow_agreement": 0.9, "max_shadow_p95_ms": 20.0, "wave_timeout_s": 600}


def now(seconds: float = 0) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


@pytest.fixture
def fleet(make_service, bundles):
    service = make_service()
    v1, v2 = upload(service, bundles["1.0.0"]), upload(service, bundles["2.0.0"])
    for i in range(3):
        service.register_device(f"d{i}", {"site": "lab"})
    r = service.create_rollout("digits", "1.0.0", "site=lab", "100%", {})
    play_devices(service, r["id"], lambda dev: (ModelState.serving, v1))
    return service, v1, v2


def shadow_numbers(service, device_id, version, samples, agreement, p95=5.0):
    service.on_telemetry(device_id, Telemetry(window_s=10, models={"digits": ModelTelemetry(
        version="1.0.0", requests=samples, shadow=ShadowTelemetry(
            version=version, samples=samples, agreement=agreement, max_abs_diff=0.5, mean_abs_diff=0.01,
            latency_ms_p50=p95 / 2, latency_ms_p95=p95))}))


def test_a_wave_in_shadow_keeps_the_live_bundle_and_promotes_when_its_numbers_pass(fleet):
    service, _, v2 = fleet
    r = service.create_rollout("digits", "2.0.0", "site=lab", "1,100%", GATES, shadow=SHADOW, now=now())
    assert [d["state"] for d in r["devices"]] == ["shadowing", "waiting", "waiting"]
    spec = model_of(service, "d0", "digits")
    assert spec["bundle"]["version"] == "1.0.0" and spec["shadow"]["bundle"]["version"] == "2.0.0"
    assert spec["shadow"]["sample_rate"] == 0.5 and spec["shadow"]["cpu_budget"] == 0.2
    assert model_of(service, "d1", "digits").get("shadow") is None
    # Too few samples: nothing happens yet, whatever the agreement.
    shadow_numbers(service, "d0", "2.0.0", 10, 1.0)
    service.tick(now(1))
    assert service.get_rollout(r["id"])["devices"][0]["state"] == "shadowing"
    # Numbers about another version (an old shadow) do not count.
    shadow_numbers(service, "d0", "9.9.9", 500, 1.0)
    service.tick(now(2))
    assert service.get_rollout(r["id"])["devices"][0]["shadow"]["samples"] == 10
    shadow_numbers(service, "d0", "2.0.0", 80, 0.97)
    service.tick(now(3))
    r = service.get_rollout(r["id"])
    assert r["devices"][0]["state"] == "notified"
    spec = model_of(service, "d0", "digits")
    assert spec["bundle"]["version"] == "2.0.0" and spec.get("shadow") is None
    play_devices(service, r["id"], lambda dev: (ModelState.serving, v2))  # serving + golden: wave 1 passes
    r = service.get_rollout(r["id"])
    assert r["current_wave"] == 1 and [d["state"] for d in r["devices"]][1:] == ["shadowing", "shadowing"]
    for dev in ("d1", "d2"):
        shadow_numbers(service, dev, "2.0.0", 60, 1.0)
    service.tick(now(4))
    play_devices(service, r["id"], lambda dev: (ModelState.serving, v2))
    assert service.get_rollout(r["id"])["state"] == "succeeded"


@pytest.mark.parametrize("agreement,p95,why", [(0.4, 5.0, "agreement 0.400 (min 0.9) over 60 samples"),
                                               (1.0, 45.0, "p95 above 20 ms")])
def test_a_failing_gate_aborts_with_the_numbers_and_only_the_shadow_goes(fleet, agreement, p95, why):
    service, v1, _ = fleet
    r = service.create_rollout("digits", "2.0.0", "site=lab", "2,100%", GATES, shadow=SHADOW, now=now())
    revision = service.get_device("d0")["desired_revision"]
    shadow_numbers(service, "d0", "2.0.0", 60, agreement, p95)
    service.tick(now(1))
    r = service.get_rollout(r["id"])
    assert r["state"] == "aborted" and "wave 1 in shadow: 1/2 devices failed the shadow gates" in r["reason"]
    assert why in r["reason"] and "d0:" in r["reason"], r["reason"]
    assert [d["state"] for d in r["devices"]] == ["reverted", "reverted", "waiting"]
    for dev in ("d0", "d1"):
        spec = model_of(service, dev, "digits")
        assert spec["bundle"]["version"] == "1.0.0" and spec.get("shadow") is None and spec["bundle"]["sha256"] == v1["sha256"]
    assert service.get_device("d0")["desired_revision"] == revision + 1  # one revision: the shadow taken away


def test_a_candidate_that_cannot_load_beside_the_live_model_aborts_and_a_timeout_names_the_numbers(fleet):
    service, v1, v2 = fleet
    r = service.create_rollout("digits", "2.0.0", "site=lab", "1,100%", GATES, shadow=SHADOW, now=now())
    revision = service.get_device("d0")["desired_revision"]
    service.on_reported("d0", Reported(revision=revision, models={"digits": ModelReport(
        **model_report(v1).model_dump(exclude={"shadow"}),
        shadow=ShadowReport(bundle=ServingModel(name="digits", version="2.0.0", sha256=v2["sha256"]),
                            state=ModelState.failed, error="MemoryBudgetError: digits needs ~9 MiB"))}))
    r = service.get_rollout(r["id"])
    assert r["state"] == "aborted" and "shadow: MemoryBudgetError" in r["reason"], r["reason"]
    assert model_of(service, "d0", "digits").get("shadow") is None

    r = service.create_rollout("digits", "2.0.0", "site=lab", "1,100%", GATES, shadow=SHADOW, now=now())
    shadow_numbers(service, "d0", "2.0.0", 12, 1.0)
    service.tick(now(601))
    r = service.get_rollout(r["id"])
    assert r["state"] == "aborted" and "timed out in shadow: 0/1 passed" in r["reason"]
    assert "over 12 samples" in r["reason"] and "waiting for 50 samples" in r["reason"], r["reason"]


def test_shadow_mode_needs_a_live_model_on_every_target(make_service, bundles):
    service = make_service()
    upload(service, bundles["2.0.0"])
    service.register_device("new", {"site": "lab"})
    with pytest.raises(Invalid, match="shadow mode needs a live 'digits'"):
        service.create_rollout("digits", "2.0.0", "site=lab", "100%", GATES, shadow=SHADOW)

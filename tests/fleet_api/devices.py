"""Devices played by calling the core service the way the MQTT shell does (schema 2 messages)."""

from __future__ import annotations

from fleet_api.auth import Principal
from fleet_protocol.messages import (
    ModelReport,
    ModelState,
    ModelTelemetry,
    Reported,
    ServingModel,
    Telemetry,
)

OPS = Principal(1, "ops", "operator")
ROOT = Principal(2, "root", "admin")


def upload(service, path) -> dict:
    tmp = service.store.new_upload()
    tmp.write_bytes(path.read_bytes())
    return service.upload_bundle(tmp)[0]


def ref(bundle: dict | None) -> ServingModel | None:
    return ServingModel(name=bundle["name"], version=bundle["version"], sha256=bundle["sha256"]) if bundle else None


def model_report(bundle, state=ModelState.serving, error=None, serving=None) -> ModelReport:
    """`bundle`: the desired bundle; serving: what serves (default: the bundle itself when serving)."""
    serving = serving if serving is not None else (bundle if state == ModelState.serving else None)
    return ModelReport(state=state, desired=ref(bundle), serving=ref(serving), error=error,
                       provider="CPUExecutionProvider" if serving else None,
                       golden_passed=True if state == ModelState.serving else None)


def report(service, device_id, revision, bundle, state=ModelState.serving, error=None, serving=None, others=None, now=None):
    """The device reports `bundle`'s model in `state` (plus any `others`: name → ModelReport)."""
    models = dict(others or {})
    if bundle is not None:
        models[bundle["name"]] = model_report(bundle, state, error, serving)
    service.on_reported(device_id, Reported(revision=revision, models=models), now=now)


def telemetry(service, device_id, bundle, p95, requests=100, errors=0):
    service.on_telemetry(device_id, Telemetry(window_s=10, models={bundle["name"]: ModelTelemetry(
        version=bundle["version"], provider="CPUExecutionProvider", requests=requests, errors=errors,
        latency_ms_p50=p95 / 2, latency_ms_p95=p95, latency_ms_p99=p95 * 1.2)}))


def desired_of(service, device_id) -> dict:
    return service.get_device(device_id)["desired"]


def model_of(service, device_id, name) -> dict | None:
    return ((desired_of(service, device_id) or {}).get("models") or {}).get(name)


def play_devices(service, rollout_id, outcome, now=None):
    """Every notified device of the rollout answers: outcome(device_id) → (state, bundle serving)."""
    rollout = service.get_rollout(rollout_id)
    for d in rollout["devices"]:
        if d["state"] != "notified":
            continue
        state, serving = outcome(d["device_id"])
        desired = {"name": rollout["model"], "version": rollout["version"], "sha256": d["bundle_sha256"]}
        report(service, d["device_id"], d["revision"], desired, state, serving=serving,
               error="GoldenCheckError: mismatch" if state == ModelState.failed else None, now=now)

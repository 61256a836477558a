"""The rollout machine and outbox through the core service, on real SQLite and real PostgreSQL.

Devices are played by calling the service the way the MQTT shell does (reported / telemetry messages); time is
injected (`now=`), never slept.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from fleet_api.db.tables import Rollout
from fleet_api.errors import Conflict, Invalid, NotFound
from fleet_protocol.messages import (
    Desired,
    ModelState,
    ModelTelemetry,
    ProtocolError,
    Telemetry,
)
from tests.bundles import digits_bundle
from tests.fleet_api.devices import (
    OPS,
    ROOT,
    desired_of,
    model_of,
    play_devices,
    ref,
    report,
    telemetry,
    upload,
)

SERVING, FAILED = ModelState.serving, ModelState.failed


def now(seconds: float = 0) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


@pytest.fixture
def fleet(make_service, bundles):
    """A service with six devices serving digits 1.0.0, and 2.0.0 uploaded."""
    service = make_service()
    v1, v2 = upload(service, bundles["1.0.0"]), upload(service, bundles["2.0.0"])
    for i in range(6):
        service.register_device(f"d{i}", {"site": "lab", "hw": "cpu"})
    r = service.create_rollout("digits", "1.0.0", "site=lab", "100%", {})
    play_devices(service, r["id"], lambda dev: (SERVING, v1))
    assert service.get_rollout(r["id"])["state"] == "succeeded"
    return service, v1, v2


def test_waves_advance_only_when_devices_serve_the_new_version(fleet):
    service, v1, v2 = fleet
    r = service.create_rollout("digits", "2.0.0", "site=lab", "1,50%,100%", {}, OPS)
    assert [d["wave"] for d in r["devices"]] == [0, 1, 1, 2, 2, 2]
    assert [d["state"] for d in r["devices"]] == ["notified"] + ["waiting"] * 5
    canary = r["devices"][0]
    # Downloading and verifying are not success; neither is serving without a passed golden check.
    report(service, canary["device_id"], canary["revision"], v2, ModelState.downloading, serving=v1)
    assert service.get_rollout(r["id"])["current_wave"] == 0
    report(service, canary["device_id"], canary["revision"], v2)
    r = service.get_rollout(r["id"])
    assert r["current_wave"] == 1 and [d["state"] for d in r["devices"]][:3] == ["succeeded", "notified", "notified"]
    assert r["devices"][0]["reported"]["version"] == "2.0.0" and r["devices"][0]["previous_version"] == "1.0.0"
    assert r["wave_progress"][0] == {"wave": 1, "devices": 1, "states": {"succeeded": 1}}
    play_devices(service, r["id"], lambda dev: (SERVING, v2))
    play_devices(service, r["id"], lambda dev: (SERVING, v2))
    r = service.get_rollout(r["id"])
    assert r["state"] == "succeeded" and {d["state"] for d in r["devices"]} == {"succeeded"}
    actions = [a["action"] for a in service.audit_log()]
    assert "rollout.create" in actions and "rollout.succeed" in actions


def test_serving_without_a_passed_golden_check_is_not_success(fleet):
    from fleet_protocol.messages import ModelReport, Reported

    service, v1, v2 = fleet
    r = service.create_rollout("digits", "2.0.0", "site=lab", "1,100%", {}, OPS)
    canary = r["devices"][0]
    entry = ModelReport(state=SERVING, desired=ref(v2), serving=ref(v2), golden_passed=None)
    service.on_reported(canary["device_id"], Reported(revision=canary["revision"], models={"digits": entry}))
    assert service.get_rollout(r["id"])["devices"][0]["state"] == "notified"


def test_a_failing_canary_aborts_and_every_moved_device_gets_the_old_model_back(fleet):
    service, v1, v2 = fleet
    r = service.create_rollout("digits", "2.0.0", "site=lab", "2,50%,100%", {"max_failure_ratio": 0.0}, OPS)
    first, second = r["devices"][0], r["devices"][1]
    report(service, first["device_id"], first["revision"], v2)  # one canary fine …
    report(service, second["device_id"], second["revision"], v2, FAILED, "GoldenCheckError: mismatch", serving=v1)  # … one not
    r = service.get_rollout(r["id"])
    assert r["state"] == "aborted" and r["current_wave"] == 0
    assert "1/2 devices failed" in r["reason"] and "GoldenCheckError" in r["reason"]
    states = {d["device_id"]: d["state"] for d in r["devices"]}
    assert states == {"d0": "reverted", "d1": "reverted", "d2": "waiting", "d3": "waiting", "d4": "waiting", "d5": "waiting"}
    for dev in ("d0", "d1"):
        spec = model_of(service, dev, "digits")
        assert spec["bundle"]["sha256"] == v1["sha256"] and spec["rollout_id"] == 1  # the first rollout's, as before
    # Devices of later waves were never told anything.
    assert model_of(service, "d4", "digits")["bundle"]["sha256"] == v1["sha256"] and desired_of(service, "d4")["revision"] == 1
    # Each device's revisions went out once each, in order.
    sent = [(t.split("/")[-2], Desired.parse(p).revision) for t, p in service.publisher.desired()]
    assert len(sent) == len(set(sent))
    assert [rev for dev, rev in sent if dev == "d0"] == [1, 2, 3]
    assert any(a["action"] == "rollout.auto_abort" for a in service.audit_log())


def test_soak_aborts_on_p95_latency_far_above_the_previous_version(fleet):
    service, v1, v2 = fleet
    for dev in ("d0", "d1", "d2"):
        telemetry(service, dev, v1, p95=2.0)
    service.tick()
    t0 = now()
    r = service.create_rollout("digits", "2.0.0", "site=lab", "1,50%,100%",
                               {"soak_s": 60, "max_p95_increase_pct": 50, "max_error_rate": 0.05}, OPS, now=t0)
    canary = r["devices"][0]
    report(service, canary["device_id"], canary["revision"], v2, now=t0)
    assert service.get_rollout(r["id"])["state"] == "running"  # soaking, no telemetry yet
    telemetry(service, canary["device_id"], v2, p95=9.0)
    service.tick(now=t0 + dt.timedelta(seconds=1))
    r = service.get_rollout(r["id"])
    assert r["state"] == "aborted" and r["current_wave"] == 0, r
    assert "p95 latency 9.00 ms" in r["reason"] and "2.00 ms" in r["reason"]
    assert model_of(service, canary["device_id"], "digits")["bundle"]["sha256"] == v1["sha256"]
    assert desired_of(service, "d1")["revision"] == 1  # wave 2 never started


def test_soak_passes_with_healthy_telemetry_after_the_injected_time_and_aborts_on_errors(fleet):
    service, v1, v2 = fleet
    telemetry(service, "d0", v1, p95=2.0)
    t0 = now()
    r = service.create_rollout("digits", "2.0.0", "site=lab", "1,100%",
                               {"soak_s": 300, "max_p95_increase_pct": 50, "max_error_rate": 0.05}, OPS, now=t0)
    canary = r["devices"][0]
    report(service, canary["device_id"], canary["revision"], v2, now=t0)
    telemetry(service, canary["device_id"], v2, p95=2.4)
    service.tick(now=t0 + dt.timedelta(seconds=299))
    assert service.get_rollout(r["id"])["current_wave"] == 0  # still soaking
    service.tick(now=t0 + dt.timedelta(seconds=301))
    r = service.get_rollout(r["id"])
    assert r["current_wave"] == 1 and r["state"] == "running", r
    for d in r["devices"][1:]:
        report(service, d["device_id"], d["revision"], v2)
        telemetry(service, d["device_id"], v2, p95=2.0, requests=100, errors=20)
    service.tick()
    r = service.get_rollout(r["id"])
    assert r["state"] == "aborted" and "error rate" in r["reason"], r
    assert {d["state"] for d in r["devices"]} == {"reverted"}


def test_a_wave_times_out_by_the_injected_clock(fleet):
    service, v1, v2 = fleet
    t0 = now()
    r = service.create_rollout("digits", "2.0.0", "site=lab", "1,100%", {"wave_timeout_s": 600}, OPS, now=t0)
    service.tick(now=t0 + dt.timedelta(seconds=599))
    assert service.get_rollout(r["id"])["state"] == "running"
    service.tick(now=t0 + dt.timedelta(seconds=601))
    r = service.get_rollout(r["id"])
    assert r["state"] == "aborted" and "timed out" in r["reason"]


def test_pause_resume_abort_and_rollback(fleet):
    service, v1, v2 = fleet
    r = service.create_rollout("digits", "2.0.0", "site=lab", "1,100%", {}, OPS)
    assert service.control_rollout(r["id"], "pause", OPS, "look at it")["state"] == "paused"
    canary = r["devices"][0]
    report(service, canary["device_id"], canary["revision"], v2)
    assert service.get_rollout(r["id"])["current_wave"] == 0  # paused: no advance
    with pytest.raises(Conflict):
        service.control_rollout(r["id"], "pause", OPS)
    r = service.control_rollout(r["id"], "resume", OPS)
    assert r["state"] == "running" and r["current_wave"] == 1
    play_devices(service, r["id"], lambda dev: (SERVING, v2))
    assert service.get_rollout(r["id"])["state"] == "succeeded"
    with pytest.raises(Conflict, match="succeeded; it cannot become paused"):
        service.control_rollout(r["id"], "pause", OPS)
    r = service.control_rollout(r["id"], "rollback", OPS, "customer complaint")
    assert r["state"] == "rolled_back"
    assert {model_of(service, f"d{i}", "digits")["bundle"]["version"] for i in range(6)} == {"1.0.0"}
    with pytest.raises(Conflict):
        service.control_rollout(r["id"], "rollback", OPS)
    # A rollout aborted by hand sends its devices back too.
    r2 = service.create_rollout("digits", "2.0.0", "site=lab", "3,100%", {}, OPS)
    r2 = service.control_rollout(r2["id"], "abort", OPS)
    assert r2["state"] == "aborted" and [d["state"] for d in r2["devices"]][:3] == ["reverted"] * 3
    assert [a["action"] for a in service.audit_log(action="rollout.")][:5] == [
        "rollout.abort", "rollout.create", "rollout.rollback", "rollout.succeed", "rollout.resume"]


def test_one_active_rollout_per_device_and_model_and_clear_errors(fleet):
    service, v1, v2 = fleet
    service.create_rollout("digits", "2.0.0", "site=lab", "1,100%", {}, OPS)
    with pytest.raises(Conflict, match="already in an active rollout of model 'digits'"):
        service.create_rollout("digits", "2.0.0", "site=lab", "100%", {}, OPS)
    with pytest.raises(Invalid, match="max_fail"):
        service.create_rollout("digits", "2.0.0", "site=lab", "100%", {"max_fail": 1}, OPS)
    with pytest.raises(Invalid, match="finite number"):
        service.create_rollout("digits", "2.0.0", "site=lab", "100%", {"soak_s": float("nan")}, OPS)
    with pytest.raises(Invalid, match="no registered device"):
        service.create_rollout("digits", "2.0.0", "site=nowhere", "100%", {}, OPS)


def test_variants_follow_the_hardware_class_label(make_service, keys, tmp_path):
    service = make_service()
    out = tmp_path / "variants"
    paths = {hw: digits_bundle(keys, out / hw, "3.0.0", epochs=1, hardware_class=hw) for hw in ("generic", "jetson-int8")}
    bundles = {hw: upload(service, p) for hw, p in paths.items()}
    service.register_device("cpu-1", {"hw": "x86"})
    service.register_device("jet-1", {"hw": "jetson-int8"})
    r = service.create_rollout("digits", "3.0.0", "", "100%", {}, OPS)
    by_dev = {d["device_id"]: d["bundle_sha256"] for d in r["devices"]}
    assert by_dev == {"cpu-1": bundles["generic"]["sha256"], "jet-1": bundles["jetson-int8"]["sha256"]}


def test_state_lives_in_the_database_and_two_processes_advance_a_rollout_once(fleet, make_service):
    service, v1, v2 = fleet
    r = service.create_rollout("digits", "2.0.0", "site=lab", "1,3,100%", {}, OPS)
    service.close()
    # Two API processes on the one database: both hear every report (plain subscription to retained reported).
    a, b = make_service(), make_service()
    canary = r["devices"][0]
    barrier = threading.Barrier(2)

    def both(fn):
        def run(svc):
            barrier.wait()
            fn(svc)
        threads = [threading.Thread(target=run, args=(s,)) for s in (a, b)]
        [t.start() for t in threads]
        [t.join() for t in threads]

    both(lambda svc: report(svc, canary["device_id"], canary["revision"], v2))
    r = a.get_rollout(r["id"])
    assert r["current_wave"] == 1
    both(lambda svc: svc.tick())
    for d in r["devices"]:
        if d["state"] == "notified":
            both(lambda svc, d=d: report(svc, d["device_id"], d["revision"], v2))
    both(lambda svc: svc.tick())
    for d in a.get_rollout(r["id"])["devices"]:
        if d["state"] == "notified":
            both(lambda svc, d=d: report(svc, d["device_id"], d["revision"], v2))
    final = b.get_rollout(r["id"])
    assert final["state"] == "succeeded"
    # Every device was moved exactly once (revision 2), and that revision was published exactly once in all.
    assert {desired_of(a, f"d{i}")["revision"] for i in range(6)} == {2}
    sent = [(t, Desired.parse(p).revision) for svc in (service, a, b) for t, p in svc.publisher.desired() if Desired.parse(p).revision == 2]
    assert len(sent) == 6 and len(set(sent)) == 6


def test_outbox_retries_what_the_broker_did_not_acknowledge(fleet):
    service, v1, v2 = fleet
    service.publisher.fail = True
    service.create_rollout("digits", "2.0.0", "site=lab", "100%", {}, OPS)
    assert service.get_device("d0")["published_revision"] == 1  # committed, not yet out
    service.publisher.fail = False
    assert service.flush_outbox() == 6
    assert service.flush_outbox() == 0
    assert all(service.get_device(f"d{i}")["published_revision"] == 2 for i in range(6))


def test_telemetry_is_rolled_up_per_device_minute_and_model(fleet):
    service, v1, v2 = fleet
    for p95 in (2.0, 4.0):
        telemetry(service, "d0", v1, p95=p95, requests=50, errors=1)
    rows = service.device_telemetry("d0", model="digits")["minutes"]
    assert len(rows) == 1
    row = rows[0]
    assert row["messages"] == 2 and row["requests"] == 100 and row["errors"] == 2 and row["model"] == "digits"
    assert row["latency_ms_p95"] == pytest.approx(3.0) and row["latency_ms_p95_max"] == 4.0
    assert row["model_version"] == "1.0.0" and row["error_rate"] == pytest.approx(0.02)
    # A second flush adds into the same minute row; the device's own row counts messages.
    telemetry(service, "d0", v1, p95=6.0)
    assert service.device_telemetry("d0", model="digits")["minutes"][0]["messages"] == 3
    assert service.device_telemetry("d0", model="")["minutes"][0]["messages"] == 3
    since = now(300)
    assert service.device_telemetry("d0", since=since)["minutes"] == []


def test_revoked_device_leaves_its_rollout_and_the_wave_passes_without_it(fleet):
    service, v1, v2 = fleet
    r = service.create_rollout("digits", "2.0.0", "site=lab", "2,100%", {}, OPS)
    first, second = r["devices"][0], r["devices"][1]
    report(service, first["device_id"], first["revision"], v2)
    assert service.get_rollout(r["id"])["current_wave"] == 0
    service.revoke_device(second["device_id"], ROOT)
    r = service.get_rollout(r["id"])
    assert r["current_wave"] == 1 and r["devices"][1]["state"] == "removed"
    assert (f"edgefleet/v1/devices/{second['device_id']}/desired", b"", 1, True) in service.publisher.messages
    with pytest.raises(NotFound, match="revoked"):
        report(service, second["device_id"], 9, v2)


def test_schema_matches_the_models(make_service):
    """The Alembic migrations create exactly what the SQLAlchemy tables describe."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from fleet_api.db.tables import Base

    service = make_service()
    with service.sessions() as db:
        diff = compare_metadata(MigrationContext.configure(db.connection()), Base.metadata)
    assert diff == []
    with service.transaction() as db:
        assert db.query(Rollout).count() == 0


def test_telemetry_is_filed_by_arrival_and_non_numbers_are_refused(fleet):
    """A device whose clock says 1970 still feeds the health gates; NaN never reaches the database."""
    service, v1, _ = fleet
    service.on_telemetry("d0", Telemetry(window_s=10, ts=0.0, models={"digits": ModelTelemetry(
        version="1.0.0", requests=5, latency_ms_p95=1.5)}))
    service.flush_telemetry()
    minutes = service.device_telemetry("d0", None, None, 10, "digits")["minutes"]
    assert len(minutes) == 1 and minutes[0]["requests"] == 5
    assert abs((dt.datetime.fromisoformat(minutes[0]["minute"]) - now()).total_seconds()) < 120  # not 1970
    for bad in (b"NaN", b"Infinity", b"-Infinity"):
        payload = b'{"schema": 2, "window_s": 10, "models": {"m": {"version": "1", "latency_ms_p95": ' + bad + b"}}}"
        with pytest.raises(ProtocolError, match="latency_ms_p95"):
            Telemetry.parse(payload)


def test_revocation_clears_desired_reported_and_status_through_the_outbox_even_when_the_broker_is_away(fleet):
    service, v1, _ = fleet
    service.publisher.fail = True
    service.revoke_device("d1", ROOT)
    d1 = service.get_device("d1")
    assert d1["desired"] is None and d1["published_revision"] < d1["desired_revision"]  # not lost: still owed
    service.publisher.fail = False
    service.flush_outbox()
    assert service.get_device("d1")["published_revision"] == service.get_device("d1")["desired_revision"]
    for channel in ("desired", "reported", "status"):  # the last retained word on each is "nothing"
        topic = f"edgefleet/v1/devices/d1/{channel}"
        assert [(p, retain) for t, p, _, retain in service.publisher.messages if t == topic][-1] == (b"", True)


def test_a_device_may_fetch_only_its_desired_artifact_in_its_chunk_size(fleet):
    from fleet_protocol.messages import Fetch

    service, v1, v2 = fleet
    r = service.create_rollout("digits", "2.0.0", "site=lab", "100%", {}, OPS)
    d0 = r["devices"][0]["device_id"]
    chunk = model_of(service, d0, "digits")["bundle"]["chunk_size"]
    assert service.on_fetch(d0, Fetch(sha256=v2["sha256"], chunk_size=chunk, missing=[0])) == 1
    with pytest.raises(Invalid, match="not in this device's desired state"):
        service.on_fetch(d0, Fetch(sha256=v1["sha256"], chunk_size=chunk, missing=[0]))  # another bundle
    with pytest.raises(Invalid, match="not in this device's desired state"):
        service.on_fetch(d0, Fetch(sha256=v2["sha256"], chunk_size=1024, missing=[0]))  # another cut


def test_the_api_keeps_answering_while_the_outbox_waits_for_the_broker(fleet):
    """Waiting for acknowledgements (seconds when the broker link drops) must not hold the database."""
    service, _, _ = fleet
    release, waiting = threading.Event(), threading.Event()
    publish_batch = service.publisher.publish_batch

    def slow_batch(messages, timeout=30.0):
        waiting.set()
        release.wait(10)
        return publish_batch(messages, timeout)

    service.publisher.publish_batch = slow_batch
    from fleet_api.db.tables import Device

    with service.transaction() as db:  # a desired change waiting in the outbox
        db.get(Device, "d0").desired_revision += 1
    flusher = threading.Thread(target=service.flush_outbox)
    flusher.start()
    try:
        assert waiting.wait(10)
        started = time.monotonic()
        service.register_device("cam-new", {"site": "elsewhere"}, ROOT)
        # not stuck behind the publish (the bound is generous: the point is "not the 10 s the publish waits")
        assert time.monotonic() - started < 5
    finally:
        release.set()
        flusher.join(10)
    assert service.get_device("d0")["published_revision"] == service.get_device("d0")["desired_revision"]


def test_a_report_is_judged_only_when_it_crosses_a_wave_threshold(fleet, monkeypatch):
    """The rollout's pace: a wave of N reports costs one judgement (when the last device serves), not N, and a
    report judged or not, the outcome is the same as judging every time (the tick judges what time decides)."""
    from fleet_api.rollouts import machine

    service, v1, v2 = fleet
    judged = []
    real = machine._judge
    monkeypatch.setattr(machine, "_judge", lambda db, rollout, *a: judged.append(rollout.id) or real(db, rollout, *a))
    r = service.create_rollout("digits", "2.0.0", "site=lab", "100%", {"max_failure_ratio": 0.5}, OPS)
    judged.clear()
    devices = r["devices"]
    for d in devices[:-1]:
        report(service, d["device_id"], d["revision"], v2)
    assert judged == [] and service.get_rollout(r["id"])["state"] == "running"
    report(service, devices[-1]["device_id"], devices[-1]["revision"], v2)
    assert judged == [r["id"]] and service.get_rollout(r["id"])["state"] == "succeeded"

    # A failure that stays within the ratio waits for the tick; one over it aborts at once.
    r = service.create_rollout("digits", "1.0.0", "site=lab", "100%", {"max_failure_ratio": 0.34}, OPS)
    judged.clear()
    devices = r["devices"]
    for d in devices[:2]:
        report(service, d["device_id"], d["revision"], v1, FAILED)
    assert judged == [] and service.get_rollout(r["id"])["state"] == "running"
    report(service, devices[2]["device_id"], devices[2]["revision"], v1, FAILED)
    assert judged == [r["id"]] and service.get_rollout(r["id"])["state"] == "aborted"


def test_max_concurrent_tells_a_started_wave_a_slot_at_a_time(fleet):
    """A wave bigger than max_concurrent: at most that many of its devices are told at once, each verdict (served
    or failed) tells the next at once (not at the tick), a device already serving the bundle takes no slot, and
    the wave passes only when all of them answered. Shadow rollouts refuse it."""
    service, v1, v2 = fleet
    report(service, "d5", 0, v2)  # d5 already serves 2.0.0 (installed by hand): told, it succeeds at once
    r = service.create_rollout("digits", "2.0.0", "site=lab", "1,100%", {"max_concurrent": 2, "max_failure_ratio": 0.5,
                                                                       "min_success_ratio": 0.8}, OPS)
    assert service.get_rollout(r["id"])["gates"]["max_concurrent"] == 2

    def states() -> list[str]:
        return [d["state"] for d in service.get_rollout(r["id"])["devices"]]

    def answer(device_id: str, state=SERVING) -> None:
        member = next(d for d in service.get_rollout(r["id"])["devices"] if d["device_id"] == device_id)
        assert member["state"] == "notified"
        bundle = v2 if r["version"] == "2.0.0" else v1
        report(service, device_id, member["revision"], bundle, state,
               error="GoldenCheckError: mismatch" if state == FAILED else None, serving=v1 if state == FAILED else None)

    assert states() == ["notified"] + ["waiting"] * 5
    answer("d0")  # the canary serves: wave 2 (five devices) starts with two of them told
    assert states() == ["succeeded", "notified", "notified", "waiting", "waiting", "waiting"]
    assert model_of(service, "d3", "digits")["bundle"]["version"] == "1.0.0"  # a waiting device keeps its model
    answer("d1")
    assert states() == ["succeeded", "succeeded", "notified", "notified", "waiting", "waiting"]
    answer("d2", FAILED)  # a failure frees its slot too (1 of 5 is within the ratio)
    assert states() == ["succeeded", "succeeded", "failed", "notified", "notified", "waiting"]
    answer("d3")  # d5 takes the slot, serves the bundle already, succeeds at once and gives the slot back
    assert states() == ["succeeded", "succeeded", "failed", "succeeded", "notified", "succeeded"]
    assert service.get_rollout(r["id"])["state"] == "running"  # 3 of 5 served, d4 has not answered
    answer("d4")
    assert states() == ["succeeded", "succeeded", "failed", "succeeded", "succeeded", "succeeded"]
    assert service.get_rollout(r["id"])["state"] == "succeeded"

    # A wave passes only once every device of it was told: with min_success_ratio 0.5, three of six serving is
    # not enough while others still wait for their slot (they would never be told).
    r = service.create_rollout("digits", "1.0.0", "site=lab", "100%", {"max_concurrent": 1, "min_success_ratio": 0.5},
                               OPS)
    for device_id in ("d0", "d1", "d2", "d3"):
        answer(device_id)
        assert service.get_rollout(r["id"])["state"] == "running"
    answer("d4")  # d5 is told: nobody waits any more, and 5 of 6 serve
    assert states() == ["succeeded"] * 5 + ["notified"] and service.get_rollout(r["id"])["state"] == "succeeded"
    assert model_of(service, "d5", "digits")["bundle"]["version"] == "1.0.0"

    with pytest.raises(Invalid, match="max_concurrent"):
        service.create_rollout("digits", "1.0.0", "site=lab", "100%", {"max_concurrent": 2}, OPS,
                               shadow={"sample_rate": 1.0})


def test_the_fleet_wide_max_concurrent_applies_where_a_rollout_does_not_set_it(make_service, bundles):
    service = make_service(rollout_max_concurrent=2)
    upload(service, bundles["1.0.0"])
    for i in range(4):
        service.register_device(f"d{i}", {"site": "lab"})
    paced = service.create_rollout("digits", "1.0.0", "site=lab", "100%", {})
    assert paced["gates"]["max_concurrent"] == 2
    assert [d["state"] for d in paced["devices"]] == ["notified", "notified", "waiting", "waiting"]
    service.control_rollout(paced["id"], "abort", OPS, "next")
    whole = service.create_rollout("digits", "1.0.0", "site=lab", "100%", {"max_concurrent": None})  # said: whole waves
    assert whole["gates"]["max_concurrent"] is None and {d["state"] for d in whole["devices"]} == {"notified"}


def test_telemetry_older_than_the_retention_is_pruned_by_the_tick_once_per_interval(make_service, bundles):
    """Rows older than telemetry_retention_days go, in batches, at the first tick and then once per prune interval
    by the tick's (injected) clock; newer rows stay; retention 0 keeps everything."""
    from sqlalchemy import select

    from fleet_api import telemetry as rollups
    from fleet_api.db.tables import TelemetryMinute, aware

    service = make_service(telemetry_retention_days=7, telemetry_prune_interval_s=3600)
    service.register_device("d0", {"site": "lab"})
    start = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    with service.transaction() as db:
        for day in range(10):  # one row a day, 10 days back from `start`
            db.add(TelemetryMinute(device_id="d0", minute=start - dt.timedelta(days=day, minutes=1), model="",
                                   model_version="", messages=1))

    def days_kept() -> list[int]:
        with service.transaction() as db:
            return sorted((start - aware(m)).days for m in db.scalars(select(TelemetryMinute.minute)))

    service.tick(now=start)
    assert days_kept() == [0, 1, 2, 3, 4, 5, 6]  # 7 days and a minute back: gone
    with service.transaction() as db:
        db.add(TelemetryMinute(device_id="d0", minute=start - dt.timedelta(days=30), model="", model_version="",
                               messages=1))
    service.tick(now=start + dt.timedelta(minutes=30))
    assert 30 in days_kept()  # within the interval: not pruned again
    service.tick(now=start + dt.timedelta(hours=1))
    assert days_kept() == [0, 1, 2, 3, 4, 5, 6]
    assert rollups.prune(service.sessions, start + dt.timedelta(days=1), batch=2) == 7  # in batches of 2: all of them
    assert days_kept() == []
    keep_all = make_service(telemetry_retention_days=0)
    assert keep_all.prune_telemetry(start + dt.timedelta(days=3650)) == 0


def test_a_telemetry_backlog_is_pruned_one_batch_a_tick(make_service, monkeypatch):
    """The prune shares the tick with the rollouts and the outbox: one batch per tick, the next tick goes on while
    batches come back full, and then it waits for the next interval again."""
    from sqlalchemy import func, select

    from fleet_api import telemetry as rollups
    from fleet_api.db.tables import TelemetryMinute

    monkeypatch.setattr(rollups, "PRUNE_BATCH", 2)
    service = make_service(telemetry_retention_days=7, telemetry_prune_interval_s=3600)
    service.register_device("d0", {"site": "lab"})
    start = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)

    def add_old(n: int) -> None:
        with service.transaction() as db:
            for i in range(n):
                db.add(TelemetryMinute(device_id="d0", minute=start - dt.timedelta(days=8, minutes=i), model="",
                                       model_version="", messages=1))

    def rows() -> int:
        with service.transaction() as db:
            return db.scalar(select(func.count()).select_from(TelemetryMinute))

    add_old(5)
    ticks = [start + dt.timedelta(seconds=s) for s in range(5)]
    left = []
    for t in ticks:
        service.tick(now=t)
        left.append(rows())
    assert left == [3, 1, 0, 0, 0]  # 2, 2, then 1 (not full: done until the next interval)
    add_old(3)
    service.tick(now=start + dt.timedelta(seconds=10))
    assert rows() == 3
    service.tick(now=start + dt.timedelta(hours=1))
    assert rows() == 1

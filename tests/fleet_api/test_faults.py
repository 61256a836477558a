"""Issue 12, the API's side: each fault found by adversarial testing, with a test named after it."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from fleet_api.db.tables import Device, Rollout
from fleet_api.mqtt import handlers
from fleet_api.rollouts import machine
from fleet_api.telemetry import Rollup, minute_of
from fleet_protocol.messages import (
    ModelTelemetry,
    ProtocolError,
    Status,
    Telemetry,
)
from fleet_protocol.topics import Topics
from tests.fleet_api.devices import OPS, desired_of, report, upload

TOPICS = Topics()


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def fleet(make_service, bundles):
    service = make_service()
    v1, v2 = upload(service, bundles["1.0.0"]), upload(service, bundles["2.0.0"])
    for i in range(4):
        service.register_device(f"d{i}", {"site": "lab"})
        service.assign_model(f"d{i}", "digits", "1.0.0", None, OPS)
    return service, v1, v2


def _soaking_rollout(service, v2, t0):
    """A rollout whose canary succeeded and whose wave passes once its 60 s soak is over."""
    r = service.create_rollout("digits", "2.0.0", "site=lab", "1,100%", {"soak_s": 60}, OPS, now=t0)
    canary = r["devices"][0]
    report(service, canary["device_id"], canary["revision"], v2, now=t0)
    r = service.get_rollout(r["id"])
    assert r["current_wave"] == 0 and r["devices"][0]["state"] == "succeeded"
    return r


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("action", ["pause", "abort"])
def test_postgres_a_pause_or_abort_committed_while_a_tick_evaluates_is_not_overridden(fleet, action):
    """#2: the tick read the rollout (running) before it took the row lock; another API process committed a pause
    (or an abort) in between. Judged on the stale copy, the wave would pass and wave 2 start."""
    service, v1, v2 = fleet
    t0 = dt.datetime.now(dt.UTC)
    r = _soaking_rollout(service, v2, t0)
    revisions = {f"d{i}": desired_of(service, f"d{i}")["revision"] for i in range(1, 4)}
    with service.transaction() as db:  # the tick's transaction …
        stale = db.get(Rollout, r["id"])
        assert stale.state == "running"
        # … meanwhile the other process (its own session and connection) commits the operator's action
        service.control_rollout(r["id"], action, OPS, "hold it")
        before, after = machine.evaluate(db, r["id"], service.settings.chunk_size, now=t0 + dt.timedelta(seconds=61))
        expected = "paused" if action == "pause" else "aborted"
        assert (before, after) == (expected, expected)  # judged on what is committed, not on the stale copy
    r = service.get_rollout(r["id"])
    assert r["state"] == ("paused" if action == "pause" else "aborted") and r["current_wave"] == 0
    # no wave 2: the later devices were never told anything
    assert {dev: desired_of(service, dev)["revision"] for dev in revisions} == revisions
    assert [m["state"] for m in r["devices"][1:]] == ["waiting"] * 3


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgres_rows_read_before_their_lock_are_refreshed_by_it(fleet):
    """The same fault one level down: a device row read, then changed by another session, then locked."""
    service, *_ = fleet
    from fleet_api.registry.devices import get_device

    with service.transaction() as db:
        assert db.get(Device, "d0").labels == {"site": "lab"}
        service.update_labels("d0", {"site": "yard"}, OPS)
        assert get_device(db, "d0", lock=True).labels == {"site": "yard"}


def test_a_telemetry_flush_that_meets_a_bad_row_stores_the_others_and_counts_the_bad_one(fleet):
    """#4: one device's rollup the database refuses (here: a sum beyond BIGINT) used to drop every device's minute."""
    service, *_ = fleet
    refused = counter("edgefleet_api_telemetry_rollups_refused_total")
    for dev in ("d0", "d1"):
        service.on_telemetry(dev, Telemetry(window_s=10, models={"digits": ModelTelemetry(version="1.0.0", requests=7)}))
    # The contract bounds each message (≤ 2**53); many of them summed in one minute can still pass what BIGINT holds.
    service.telemetry._rollups[("d2", minute_of(dt.datetime.now().timestamp()), "digits", "1.0.0")] = Rollup(
        messages=1, requests=2**63)
    stored = service.flush_telemetry()
    assert stored == 4  # d0 and d1: their model rows and their device rows
    assert counter("edgefleet_api_telemetry_rollups_refused_total") == refused + 1
    for dev in ("d0", "d1"):
        assert service.device_telemetry(dev, model="digits")["minutes"][0]["requests"] == 7
    assert service.device_telemetry("d2")["minutes"] == []
    # and the next flush works as usual
    service.on_telemetry("d2", Telemetry(window_s=10, models={"digits": ModelTelemetry(version="1.0.0", requests=3)}))
    assert service.device_telemetry("d2", model="digits")["minutes"][0]["requests"] == 3


def test_a_telemetry_count_beyond_the_contract_is_refused_at_the_door():
    """#4 at its cause: `"requests": 2**63` is not a Telemetry message at all."""
    payload = json.dumps({"schema": 2, "window_s": 10, "models": {"digits": {"version": "1", "requests": 2**63}}})
    with pytest.raises(ProtocolError, match="requests"):
        Telemetry.parse(payload)


def test_revocation_clears_the_retained_status_reported_and_desired(fleet):
    """#11: a revoked device's retained status (online) and reported stayed on the broker."""
    service, *_ = fleet
    service.revoke_device("d3", OPS)
    cleared = {t.rsplit("/", 1)[1] for t, p, _, retain in service.publisher.messages if "/d3/" in t and p == b"" and retain}
    assert cleared == {"desired", "reported", "status"}


def test_a_fetch_with_an_out_of_range_chunk_index_is_counted_as_a_reject(fleet):
    """#11: it was neither served nor counted."""
    service, v1, _ = fleet
    before = counter("edgefleet_api_messages_rejected_total", channel="fetch", reason="invalid")
    payload = json.dumps({"sha256": v1["sha256"], "chunk_size": desired_of(service, "d0")["models"]["digits"]["bundle"]["chunk_size"],
                          "missing": [10**6]}).encode()
    handlers.handle(service, TOPICS.fetch("d0"), payload)
    assert counter("edgefleet_api_messages_rejected_total", channel="fetch", reason="invalid") == before + 1


def test_status_online_yes_is_refused_and_counted(fleet):
    """#11: `{"online": "yes"}` was accepted as true."""
    service, *_ = fleet
    before = counter("edgefleet_api_messages_rejected_total", channel="status", reason="malformed")
    handlers.handle(service, TOPICS.status("d0"), b'{"online": "yes"}')
    assert counter("edgefleet_api_messages_rejected_total", channel="status", reason="malformed") == before + 1
    assert service.get_device("d0")["online"] is False


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
                    max_leaves=12)
FIELDS = {"revision", "schema", "models", "online", "sha256", "missing", "window_s", "kind", "state", "chunk_size"}
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(sorted(FIELDS)), JSON, max_size=5).map(lambda d: json.dumps(d).encode()),
)


def test_arbitrary_payloads_on_every_channel_never_crash_are_counted_and_the_next_message_is_handled(make_service):
    """Property: whatever arrives on a device topic, the handler returns, a refused payload is counted, and the next
    valid message is handled as usual."""
    service = make_service()
    service.register_device("d0", {})
    channels = list(handlers.ROUTES)

    def rejects() -> float:
        return sum(counter("edgefleet_api_messages_rejected_total", channel=c, reason=r) for c in channels
                   for r in ("malformed", "schema", "invalid", "notfound", "conflict", "error"))

    @given(channel=st.sampled_from(channels), payload=PAYLOADS, online=st.booleans())
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def run(channel, payload, online):
        message_type = handlers.ROUTES[channel][0]
        try:
            message_type.parse(payload)
            valid = True
        except ProtocolError:
            valid = False
        before = rejects()
        handlers.handle(service, TOPICS.device("d0", channel), payload)  # never raises
        if not valid and not (channel in ("status", "reported") and payload == b""):
            assert rejects() == before + 1, (channel, payload)
        handlers.handle(service, TOPICS.status("d0"), Status(online=online).to_bytes())
        assert service.get_device("d0")["online"] is online

    run()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgres_reports_and_ticks_of_two_model_rollouts_on_the_same_devices_run_concurrently(fleet, keys, tmp_path):
    """Two rollouts of different models move the same devices while reports and ticks arrive on other threads
    (the MQTT worker and the ticker): nothing deadlocks, nothing is lost, both finish."""
    import threading

    from model_tools.pack import pack_bundle
    from tests.bundles import digits
    from tests.fleet_api.devices import model_report

    service, v1, v2 = fleet
    zoo = digits(1)
    path, _ = pack_bundle(zoo.onnx, name="letters", version="1.0.0", golden_inputs=zoo.golden_inputs,
                          private_key_pem=keys.private_path.read_bytes(), out_dir=tmp_path / "letters",
                          task="classification", labels=zoo.labels, preprocessing=zoo.preprocessing)
    letters = upload(service, path)
    a = service.create_rollout("digits", "2.0.0", "site=lab", "1,2,100%", {}, OPS)
    b = service.create_rollout("letters", "1.0.0", "site=lab", "2,100%", {}, OPS)
    errors: list[BaseException] = []
    stop = threading.Event()

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                errors.append(exc)
        return run

    def devices():
        while not stop.is_set():
            for i in range(4):
                rev = desired_of(service, f"d{i}")["revision"]
                models = desired_of(service, f"d{i}")["models"]
                others = {}
                if "letters" in models:
                    others["letters"] = model_report(letters)
                report(service, f"d{i}", rev, v2 if models["digits"]["bundle"]["version"] == "2.0.0" else v1,
                       others=others)

    def ticker():
        while not stop.is_set():
            service.tick()

    threads = [threading.Thread(target=guarded(devices)), threading.Thread(target=guarded(ticker))]
    [t.start() for t in threads]
    try:
        from demo.cluster import wait_for

        wait_for(lambda: errors or {service.get_rollout(r["id"])["state"] for r in (a, b)} == {"succeeded"}, 120,
                 "both rollouts to finish")
    finally:
        stop.set()
        [t.join(30) for t in threads]
    assert errors == []
    for i in range(4):
        models = desired_of(service, f"d{i}")["models"]
        assert models["digits"]["bundle"]["version"] == "2.0.0" and models["letters"]["bundle"]["version"] == "1.0.0"

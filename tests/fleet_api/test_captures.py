"""Captured samples in the API's core: stored once per device and id, refused beyond the fleet's quota (and stored
again once samples are deleted), refused for a model the device does not run, exported as a dataset ZIP."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import zipfile

import pytest
from prometheus_client import REGISTRY

from fleet_api.captures import dataset
from fleet_api.captures.store import Filters
from fleet_api.errors import NotFound
from fleet_api.mqtt import handlers
from fleet_protocol import capture
from fleet_protocol.topics import Topics
from tests.fleet_api.captures import jpeg, npy, packed, sample
from tests.fleet_api.devices import OPS, upload

TOPICS = Topics()


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def fleet(make_service, bundles):
    """Two devices running digits 1.0.0; a quota of 0.05 MB (52,428 bytes)."""
    service = make_service(capture_quota_mb=0.05)
    upload(service, bundles["1.0.0"])
    for dev in ("d0", "d1"):
        service.register_device(dev, {"site": "lab"})
        service.assign_model(dev, "digits", "1.0.0", None, OPS)
    return service


def acks(service, device="d0") -> list[capture.SampleAck]:
    return [capture.SampleAck.parse(p) for t, p, q, _ in service.publisher.messages
            if t == TOPICS.capture_ack(device) and q == 1]


def test_a_sample_is_stored_with_its_labels_and_a_repeat_is_acknowledged_again_but_stored_once(fleet):
    header, data = sample(jpeg(1), outputs={"detections": [{"box": [0.1, 0.2, 0.5, 0.6], "label": "face", "score": 0.4}]})
    stored = counter("edgefleet_api_captures_stored_total")
    first = fleet.on_capture("d0", (header, data))
    again = fleet.on_capture("d0", (header, data))  # the ack was lost: the device resends
    assert first.stored and not first.repeat and again.stored and again.repeat
    assert [(a.id, a.stored, a.refused) for a in acks(fleet)] == [(header.id, True, None)] * 2
    assert counter("edgefleet_api_captures_stored_total") == stored + 1
    page, total = fleet.captures.list(Filters())
    assert total == 1 and len(page) == 1
    c = page[0]
    assert (c["device_id"], c["sample_id"], c["model"], c["version"], c["reason"], c["camera"]) == \
        ("d0", header.id, "digits", "1.0.0", "low_confidence", "door")
    assert c["outputs"]["detections"][0]["label"] == "face" and c["sha256"] == header.sha256 and c["size"] == len(data)
    path, content_type = fleet.captures.data(c["id"])
    assert path.read_bytes() == data and content_type == "image/jpeg"
    assert path.name == f"{header.id}.jpg" and path.parent.name == "d0"
    assert not list(path.parent.glob(".capture-*"))  # no temporary file left behind
    # the same sample id from another device is another sample
    assert fleet.on_capture("d1", (header, data)).stored
    assert fleet.captures.list(Filters())[1] == 2


def test_the_quota_refuses_a_sample_that_would_pass_it_and_deleting_frees_the_space(fleet):
    big = [sample(b"x" * 20_000 + bytes([i])) for i in range(3)]  # 3 × 20,001 bytes against 52,428
    refused = counter("edgefleet_api_captures_refused_total", reason="quota")
    outcomes = [fleet.on_capture("d0", s) for s in big]
    assert [(o.stored, o.refused) for o in outcomes] == [(True, None), (True, None), (False, "quota")]
    assert acks(fleet)[-1].refused == "quota" and acks(fleet)[-1].stored is False
    assert counter("edgefleet_api_captures_refused_total", reason="quota") == refused + 1
    usage = fleet.captures.usage()
    assert (usage["count"], usage["bytes_used"], usage["quota_bytes"]) == (2, 40_002, 52_428)
    assert usage["devices"] == [{"device_id": "d0", "count": 2, "bytes": 40_002}]
    first = fleet.captures.list(Filters())[0][-1]
    path, _ = fleet.captures.data(first["id"])
    fleet.captures.delete(first["id"])
    assert not path.exists()
    with pytest.raises(NotFound):
        fleet.captures.get(first["id"])
    assert fleet.on_capture("d0", big[2]).stored  # the space freed takes the sample refused before
    assert fleet.captures.usage()["bytes_used"] == 40_002


def test_a_sample_of_a_model_the_device_does_not_run_is_refused_and_any_version_is_taken(fleet):
    assert fleet.on_capture("d0", sample(model="faces")).refused == "unknown_model"
    assert fleet.on_capture("d0", sample(version="0.9.0")).stored  # a version the device ran a moment ago
    assert [a.refused for a in acks(fleet)] == ["unknown_model", None]
    assert fleet.captures.list(Filters())[1] == 1


def test_a_sample_from_an_unknown_or_revoked_device_is_not_stored_nor_answered(fleet):
    fleet.revoke_device("d1", OPS)
    for dev in ("ghost", "d1"):
        with pytest.raises(NotFound):
            fleet.on_capture(dev, sample())
    assert fleet.captures.list(Filters())[1] == 0
    assert not acks(fleet, "ghost") and not acks(fleet, "d1")


def test_the_mqtt_shell_stores_a_packed_sample_and_refuses_a_tampered_one_counted(fleet):
    header, payload = packed(jpeg(2))
    handlers.handle(fleet, TOPICS.capture("d0"), payload)
    assert fleet.captures.list(Filters())[1] == 1 and acks(fleet)[-1].stored
    malformed = counter("edgefleet_api_messages_rejected_total", channel="capture", reason="malformed")
    invalid = counter("edgefleet_api_captures_refused_total", reason="invalid")
    h2, p2 = packed(jpeg(3))
    tampered = p2[:-1] + bytes([p2[-1] ^ 1])  # the data no longer matches the header's sha256
    handlers.handle(fleet, TOPICS.capture("d0"), tampered)
    handlers.handle(fleet, TOPICS.capture("d0"), p2[:-100])  # cut
    handlers.handle(fleet, TOPICS.capture("d0"), b"EFC1\x00\x00\x00\x05{bad}")
    handlers.handle(fleet, TOPICS.capture("d0"), json.dumps(h2.model_dump(mode="json")).encode())  # no envelope
    handlers.handle(fleet, TOPICS.capture("ghost"), tampered)  # unknown device: counted, not answered
    assert counter("edgefleet_api_messages_rejected_total", channel="capture", reason="malformed") == malformed + 5
    assert fleet.captures.list(Filters())[1] == 1  # nothing more stored
    # the device is told its sample is invalid when the envelope names it (so it drops it from its spool)
    assert [(a.id, a.refused) for a in acks(fleet)[1:]] == [(h2.id, "invalid"), (h2.id, "invalid")]
    assert counter("edgefleet_api_captures_refused_total", reason="invalid") == invalid + 2
    assert not acks(fleet, "ghost")


def test_filters_paging_newest_first_and_bulk_delete(fleet):
    t0 = 1_796_000_000.0
    for i in range(6):
        fleet.on_capture(f"d{i % 2}", sample(jpeg(i), taken_at=t0 + i, reason="shadow_disagrees" if i % 3 == 0 else "low_confidence"))
    page, total = fleet.captures.list(Filters(), limit=4, offset=0)
    assert total == 6 and [c["taken_at"].timestamp() for c in page] == [t0 + 5, t0 + 4, t0 + 3, t0 + 2]
    assert len(fleet.captures.list(Filters(), limit=4, offset=4)[0]) == 2
    assert fleet.captures.list(Filters(device="d1"))[1] == 3
    assert fleet.captures.list(Filters(reason="shadow_disagrees"))[1] == 2
    since = dt.datetime.fromtimestamp(t0 + 2, dt.UTC)
    until = dt.datetime.fromtimestamp(t0 + 4, dt.UTC)
    assert fleet.captures.list(Filters(since=since, until=until))[1] == 2
    assert fleet.captures.delete_matching(Filters(device="d0")) == 3
    assert fleet.captures.list(Filters())[1] == 3
    assert not list((fleet.captures.root / "d0").glob("*.jpg"))


def test_the_dataset_zip_holds_every_file_and_its_labels_as_json_and_csv(fleet):
    pictures = [sample(jpeg(i), outputs={"label": str(i), "score": 0.2 + i / 10}) for i in range(3)]
    tensor = sample(npy(), outputs={"label": "4", "score": 0.3})
    for s in [*pictures, tensor]:
        assert fleet.on_capture("d0", s).stored
    body = b"".join(dataset.stream(fleet.captures, Filters()))
    z = zipfile.ZipFile(io.BytesIO(body))
    assert z.testzip() is None
    labels = json.loads(z.read("labels.json"))
    assert len(labels) == 4
    by_id = {e["sample_id"]: e for e in labels}
    for header, data in [*pictures, tensor]:
        entry = by_id[header.id]
        assert z.read(entry["file"]) == data
        assert entry["outputs"] == header.outputs and entry["model"] == "digits"
    assert by_id[tensor[0].id]["file"].endswith(".npy") and by_id[tensor[0].id]["content_type"] == "application/x-npy"
    rows = list(csv.DictReader(io.StringIO(z.read("labels.csv").decode())))
    assert [r["sample_id"] for r in rows] == [e["sample_id"] for e in labels]
    assert json.loads(rows[0]["outputs"]) == labels[0]["outputs"] and rows[0]["file"] == labels[0]["file"]
    # filtered: only what matches
    only = zipfile.ZipFile(io.BytesIO(b"".join(dataset.stream(fleet.captures, Filters(device="d1")))))
    assert sorted(only.namelist()) == ["labels.csv", "labels.json"] and json.loads(only.read("labels.json")) == []


def test_the_migration_adds_the_table_and_keeps_every_row_of_an_existing_database(db_url):
    """0005 → 0006 creates `captures` only: devices and their audit entries stay (no batch rebuild of a parent)."""
    from sqlalchemy import inspect, text

    from fleet_api.db.session import make_engine, make_sessions, migrate

    engine = make_engine(db_url)
    try:
        migrate(engine, "0005_alerts")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO devices (id, labels, created_at, desired_revision, published_revision, online, "
                              "revoked) VALUES ('old', '{\"site\": \"a\"}', CURRENT_TIMESTAMP, 2, 2, false, false)"))
        assert "captures" not in inspect(engine).get_table_names()
        make_sessions(engine)  # upgrades to head
        assert "captures" in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id, desired_revision FROM devices")).all() == [("old", 2)]
        unique = inspect(engine).get_unique_constraints("captures")
        assert [sorted(u["column_names"]) for u in unique] == [["device_id", "sample_id"]]
    finally:
        engine.dispose()


def test_concurrent_uploads_never_pass_the_quota_and_a_sample_sent_twice_at_once_is_stored_once(fleet):
    """Two API replicas (here: threads, each its own transaction) storing at the same time: the quota check and
    the insert are one step, so exactly as many samples as fit are stored."""
    import threading

    big = [sample(b"y" * 10_000 + bytes([i])) for i in range(8)]  # 5 fit in 52,428 bytes
    twice = big[:2] * 2  # and the first two arrive twice, concurrently
    results: list = []
    lock = threading.Lock()

    def store(s) -> None:
        outcome = fleet.captures.put("d0", *s)
        with lock:
            results.append((s[0].id, outcome))

    threads = [threading.Thread(target=store, args=(s,)) for s in [*big, *twice[2:]]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stored_ids = {i for i, o in results if o.stored}
    assert len(stored_ids) == 5 and fleet.captures.usage()["count"] == 5
    assert fleet.captures.usage()["bytes_used"] <= 52_428
    assert sum(1 for _, o in results if o.refused == "quota") == len(results) - sum(1 for _, o in results if o.stored)


def test_an_id_is_never_given_again_after_its_sample_was_deleted(fleet):
    """Browsers cache /v1/captures/{id}/data: a new sample must never take a deleted one's id."""
    fleet.on_capture("d0", sample(jpeg(1)))
    newest = fleet.captures.list(Filters())[0][0]["id"]
    fleet.captures.delete(newest)
    fleet.on_capture("d0", sample(jpeg(2)))
    assert fleet.captures.list(Filters())[0][0]["id"] > newest

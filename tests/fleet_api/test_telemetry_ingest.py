"""Telemetry's fast ingest path: one-pass parsing that refuses what the slow path refuses, the network-thread
shortcut only for devices already known, and rollups merged by one INSERT ... ON CONFLICT in the database."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from fleet_api import telemetry
from fleet_api.db.session import make_engine, make_sessions
from fleet_api.db.tables import Device, TelemetryMinute
from fleet_api.mqtt.handlers import handle_fast, parse_telemetry
from fleet_protocol.messages import (
    MAX_MESSAGE_BYTES,
    ProtocolError,
    Telemetry,
    UnknownSchema,
)
from fleet_protocol.topics import Topics

GOOD = {"schema": 2, "window_s": 10.0, "ts": 1796160000.0, "models": {"digits": {"version": "1.0.0", "requests": 5, "errors": 1,
        "latency_ms_p50": 1.0, "latency_ms_p95": 4.0, "latency_ms_p99": 9.0}}, "health": {"cpu_percent": 20.0}}


def test_fast_parse_accepts_and_refuses_what_the_contract_does():
    payload = json.dumps(GOOD).encode()
    assert parse_telemetry(payload) == Telemetry.parse(payload)
    with pytest.raises(UnknownSchema):
        parse_telemetry(json.dumps({**GOOD, "schema": 3}).encode())
    with pytest.raises(UnknownSchema):  # schema 1 carried `revision` and no `schema`
        parse_telemetry(json.dumps({"revision": 1, "window_s": 1}).encode())
    for bad in (b"not json", json.dumps({**GOOD, "extra": 1}).encode(), b" " * (MAX_MESSAGE_BYTES + 1)):
        with pytest.raises(ProtocolError):
            parse_telemetry(bad)


class FakeService:
    topics = Topics()

    def __init__(self, known: set[str]) -> None:
        self.known, self.got = known, []

    def known_recently(self, device_id: str) -> bool:
        return device_id in self.known

    def on_telemetry(self, device_id: str, message: Telemetry) -> None:
        self.got.append((device_id, message))


def test_network_thread_shortcut_only_for_known_devices_and_good_telemetry():
    service = FakeService({"d1"})
    good = json.dumps(GOOD).encode()
    assert handle_fast(service, Topics().telemetry("d1"), good) is True
    assert [d for d, _ in service.got] == ["d1"]
    # the worker path takes the rest: it looks the device up, counts and logs refusals
    assert handle_fast(service, Topics().telemetry("d2"), good) is False
    assert handle_fast(service, Topics().telemetry("d1"), b"{bad") is False
    assert handle_fast(service, Topics().reported("d1"), good) is False
    assert handle_fast(service, "elsewhere/telemetry", good) is False
    assert len(service.got) == 1


def test_rollups_add_up_in_the_database_across_flushes(db_url):
    sessions = make_sessions(make_engine(db_url))
    with sessions() as db, db.begin():
        db.add_all([Device(id="d1"), Device(id="d2")])
    minute = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    t = Telemetry.parse(json.dumps(GOOD).encode())
    quiet = Telemetry.parse(json.dumps({"schema": 2, "window_s": 10.0, "models": {"digits": {"version": "1.0.0", "requests": 2}}}).encode())
    buffer = telemetry.TelemetryBuffer()
    received = minute.timestamp() + 5
    buffer.add("d1", t, received)
    buffer.add("d2", quiet, received)
    assert telemetry.flush(sessions, buffer) == 4  # device + model row for each
    buffer.add("d1", quiet, received + 30)  # same minute: added to the rows
    buffer.add("d1", t, received + 60)  # next minute: a new row
    assert telemetry.flush(sessions, buffer) == 4
    with sessions() as db:
        rows = {(r.device_id, r.minute.replace(tzinfo=None), r.model): r for r in db.query(TelemetryMinute).all()}
    m0, m1 = minute.replace(tzinfo=None), (minute + dt.timedelta(minutes=1)).replace(tzinfo=None)
    d1 = rows[("d1", m0, "digits")]
    assert (d1.messages, d1.requests, d1.errors, d1.latency_messages) == (2, 7, 1, 1)
    assert d1.latency_ms_p95_sum == 4.0 and d1.latency_ms_p95_max == 4.0  # a message without latency leaves max
    assert rows[("d2", m0, "digits")].latency_ms_p95_max is None  # NULL stays NULL
    assert rows[("d1", m0, "")].cpu_percent_sum == 20.0 and rows[("d1", m0, "")].messages == 2
    assert rows[("d1", m1, "digits")].requests == 5
    assert len(rows) == 6

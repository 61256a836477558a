"""The telemetry receiver: its MQTT packet reader (whole, split anywhere, malformed), its connection to a real
mosquitto feeding the rollups, a broker that refuses it or sends garbage, and the app with it on and off."""

from __future__ import annotations

import json
import logging
import socket
import threading

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY

from demo.cluster import wait_for
from fleet_api.app import create_app
from fleet_api.db.tables import Device
from fleet_api.mqtt import handlers
from fleet_api.mqtt.telemetry_receiver import (
    MalformedPacket,
    PacketReader,
    TelemetryReceiver,
    connect_packet,
    subscribe_packet,
    varint,
)
from fleet_api.settings import ApiSettings
from fleet_protocol.messages import MAX_MESSAGE_BYTES
from fleet_protocol.topics import Topics

from .conftest import ADMIN

GOOD = {"schema": 2, "window_s": 10.0, "models": {"digits": {"version": "1.0.0", "requests": 5, "errors": 1,
        "latency_ms_p95": 4.0}}, "health": {"cpu_percent": 20.0}}


def publish_packet(topic: str | bytes, payload: bytes, qos: int = 0, packet_id: int = 1, props: bytes = b"") -> bytes:
    t = topic.encode() if isinstance(topic, str) else topic
    body = len(t).to_bytes(2, "big") + t
    if qos:
        body += packet_id.to_bytes(2, "big")
    body += varint(len(props)) + props
    return bytes([0x30 | qos << 1]) + varint(len(body) + len(payload)) + body + payload


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("edgefleet_api_messages_rejected_total", {"channel": "telemetry", "reason": reason}) or 0.0


# --- the packet reader -------------------------------------------------------------------------------------
def test_reader_takes_publishes_of_any_size_and_the_other_packets():
    big = b"x" * 20_000  # a three-byte remaining length
    stream = (publish_packet("a/b", b"1") + publish_packet("c", big, qos=1, packet_id=7, props=b"\x01\x01")
              + bytes([0xD0, 0]) + bytes([0x90, 4, 0, 1, 0, 0]))
    publishes, acks, controls = PacketReader().feed(stream)
    assert publishes == [("a/b", b"1"), ("c", big)]
    assert acks == [7]
    assert [(c.type, c.body) for c in controls] == [(13, b""), (9, b"\x00\x01\x00\x00")]


def test_varint_round_trips_the_mqtt_bounds():
    for n, encoded in ((0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"),
                       (2_097_152, b"\x80\x80\x80\x01"), (268_435_455, b"\xff\xff\xff\x7f")):
        assert varint(n) == encoded


def test_connect_and_subscribe_packets_are_what_mqtt5_says():
    c = connect_packet("id", "user", "pw", 30, max_packet=1000)
    assert c[0] == 0x10 and c[2:9] == b"\x00\x04MQTT\x05" and c[9] == 0xC2 and c[10:12] == b"\x00\x1e"
    assert c[12:18] == b"\x05\x27\x00\x00\x03\xe8"  # properties: Maximum Packet Size 1000
    assert c.endswith(b"\x00\x02id\x00\x04user\x00\x02pw")
    assert subscribe_packet(1, "t/#") == b"\x82\x09\x00\x01\x00\x00\x03t/#\x00"
    assert connect_packet("id", None, None, 30)[9] == 0x02


@pytest.mark.parametrize("stream, why", [
    (bytes([0x36, 3, 0, 1, 97]), "QoS 3"),
    (bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), "longer than 4 bytes"),
    (bytes([0x30, 4, 0, 9, 97, 0]), "topic longer than the packet"),
    (bytes([0x30, 5, 0, 2, 0xFF, 0xFE, 0]), "not UTF-8"),
    (bytes([0x30, 3, 0, 0, 0]), "without a topic"),
    (bytes([0x30, 4, 0, 1, 97, 9]), "properties longer"),
    (bytes([0x30, 3, 0, 1, 97]), "properties cut short"),
    (bytes([0x34, 3, 0, 1, 97]), "QoS 2"),
    (bytes([0x80, 2, 0, 1]), "packet type 8"),
    (bytes([0x30, 0x80, 0x80, 0x40]), "more than"),
])
def test_reader_refuses_what_breaks_the_protocol(stream, why):
    with pytest.raises(MalformedPacket, match=why):
        PacketReader(max_packet=1000).feed(publish_packet("ok", b"fine") + stream)


publish_st = st.tuples(st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t), st.binary(max_size=3000),
                       st.sampled_from([0, 1]), st.binary(max_size=20))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(publish_st, min_size=1, max_size=8), st.lists(st.integers(min_value=0), max_size=10))
def test_reader_gives_the_same_packets_however_the_reads_split_the_stream(packets, cuts):
    stream = b"".join(publish_packet(t, p, q, 5, props) for t, p, q, props in packets)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    reader, got, acks = PacketReader(), [], []
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        publishes, ids, _ = reader.feed(stream[a:b])
        got += publishes
        acks += ids
    assert got == [(t, p) for t, p, _, _ in packets]
    assert acks == [5 for _, _, q, _ in packets if q]
    assert reader.pending == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=5))
def test_garbage_is_malformed_or_incomplete_never_anything_else(garbage, cuts):
    reader = PacketReader(max_packet=10_000)
    points = sorted({c % (len(garbage) + 1) for c in cuts})
    try:
        for a, b in zip([0, *points], [*points, len(garbage)], strict=True):
            reader.feed(garbage[a:b])
    except MalformedPacket:
        pass


# --- a block of telemetry into the service ------------------------------------------------------------
class BatchService:
    """What handle_telemetry_batch needs of the service: devices registered, and the database up or away."""

    topics = Topics()

    def __init__(self, registered: set[str], database_up: bool = True) -> None:
        self.registered, self.database_up = registered, database_up
        self.known: set[str] = set()
        self.lookups: list[set[str]] = []
        self.got: list = []

    def known_recently(self, device_id: str) -> bool:
        return device_id in self.known

    def known_among(self, device_ids: set[str]) -> set[str]:
        self.lookups.append(set(device_ids))
        if not self.database_up:
            raise ConnectionError("the database is away")
        self.known |= device_ids & self.registered
        return device_ids & self.registered

    def on_telemetry_batch(self, messages) -> None:
        self.got += messages


def test_a_block_looks_devices_up_once_and_counts_what_it_refuses():
    service, good = BatchService({"d1", "d2"}), json.dumps(GOOD).encode()
    t = Topics().telemetry
    before = {r: rejected(r) for r in ("notfound", "malformed", "schema", "error")}
    handlers.handle_telemetry_batch(service, [(t("d1"), good), (t("d2"), good), (t("x"), good), (t("x"), good),
                                              (t("d1"), b"{bad"), (t("d2"), json.dumps({**GOOD, "schema": 9}).encode())])
    assert service.lookups == [{"d1", "d2", "x"}]  # one query for the block
    assert [d for d, _ in service.got] == ["d1", "d2"]
    assert {r: rejected(r) - before[r] for r in before} == {"notfound": 2, "malformed": 1, "schema": 1, "error": 0}
    handlers.handle_telemetry_batch(service, [(t("d1"), good)])
    assert len(service.lookups) == 1  # known now: no query

    away = BatchService({"d1"}, database_up=False)
    handlers.handle_telemetry_batch(away, [(t("d1"), good), (t("d1"), good)])
    assert away.got == [] and rejected("error") - before["error"] == 2


# --- the receiver on a real mosquitto, feeding the real service --------------------------------------------
def test_telemetry_from_a_real_broker_reaches_the_rollups(broker, make_service, caplog):
    service = make_service()
    with service.sessions() as db, db.begin():
        db.add(Device(id="d1"))
    receiver = TelemetryReceiver(broker.url, handlers.telemetry_subscription(service.topics, "fleet-api"),
                                 lambda batch: handlers.handle_telemetry_batch(service, batch))
    receiver.start()
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="d1", protocol=mqtt.MQTTv5)
    device.connect("127.0.0.1", broker.port)
    device.loop_start()
    malformed0, unknown0 = rejected("malformed"), rejected("notfound")
    try:
        assert receiver.wait_connected(10)
        topic = Topics().telemetry("d1")
        for _ in range(50):
            device.publish(topic, json.dumps(GOOD), qos=0)
        device.publish(topic, b" " * (MAX_MESSAGE_BYTES + 100), qos=0)  # over the contract's limit: refused, counted
        device.publish(topic, b"{not json", qos=0)
        device.publish(Topics().telemetry("stranger"), json.dumps(GOOD), qos=0)  # no such device
        wait_for(lambda: receiver.stats.messages >= 53, 10, "the messages to arrive")
        wait_for(lambda: rejected("notfound") > unknown0, 10, "the unknown device to be refused")
        assert rejected("malformed") - malformed0 == 2
        service.flush_telemetry()
        minutes = service.device_telemetry("d1")["minutes"]
        assert {m["model"]: m["messages"] for m in minutes} == {None: 50, "digits": 50}
        assert sum(m["requests"] for m in minutes) == 250
        assert receiver.stats.bytes > 50 * len(json.dumps(GOOD)) and receiver.stats.malformed == 0
    finally:
        device.disconnect()
        device.loop_stop()
        receiver.stop()
    assert not receiver.connected


# --- a broker that refuses, or sends what is not MQTT ---------------------------------------------------
class FakeBroker:
    """A TCP server that answers every connection with the given bytes (after reading the CONNECT)."""

    def __init__(self, answer: bytes) -> None:
        self.answer, self.connections = answer, 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.recv(1024)
            conn.sendall(self.answer)
            threading.Timer(2, conn.close).start()

    def close(self) -> None:
        self._stop = True
        self.server.close()


CONNACK_OK = bytes([0x20, 3, 0, 0, 0])
SUBACK_OK = bytes([0x90, 4, 0, 1, 0, 0])


@pytest.mark.parametrize("answer, counted, logged", [
    (bytes([0x20, 3, 0, 0x86, 0]), "refused", "refused the connection: 0x86 bad user name or password"),
    (CONNACK_OK + bytes([0x90, 4, 0, 1, 0, 0x87]), "refused", "refused the subscription to t/#: 0x87 not authorized"),
    (CONNACK_OK + SUBACK_OK + bytes([0x30, 5, 0, 2, 0xFF, 0xFE, 0]), "malformed", "topic is not UTF-8"),
])
def test_a_refusing_or_broken_broker_is_counted_logged_and_retried(answer, counted, logged, caplog):
    fake = FakeBroker(answer)
    got: list = []
    receiver = TelemetryReceiver(f"mqtt://127.0.0.1:{fake.port}", "t/#", got.extend, min_backoff_s=0.05, max_backoff_s=0.1)
    caplog.set_level(logging.ERROR, "fleet_api.mqtt.telemetry_receiver")
    receiver.start()
    try:
        wait_for(lambda: getattr(receiver.stats, counted) >= 2, 10, "two failed connections")
        assert fake.connections >= 2  # it connects again by itself
        assert any(logged in r.getMessage() for r in caplog.records)
        assert got == []
    finally:
        receiver.stop()
        fake.close()


# --- the app: the receiver on (default) and off (paho carries telemetry) ---------------------------------
@pytest.mark.parametrize("on", [True, False])
def test_app_ingests_telemetry_with_the_receiver_on_or_off(on, broker, tmp_path, keys, device_client):
    s = ApiSettings(database_url=f"sqlite:///{tmp_path / 'api.db'}", broker_url=broker.url, artifact_dir=tmp_path / "a",
                    trusted_keys=str(keys.public_path), admin_token=ADMIN, telemetry_receiver=on)
    with TestClient(create_app(s)) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        wait_for(lambda: client.get("/readyz").status_code == 200, 10, "the API to connect")
        assert (client.app.state.telemetry_receiver is not None) is on
        client.post("/v1/devices", json={"id": "dev-1"}).raise_for_status()
        received0 = REGISTRY.get_sample_value("edgefleet_api_telemetry_receiver_messages_total") or 0.0

        def ingested() -> int:
            device_client.publish(Topics().telemetry("dev-1"), json.dumps(GOOD), qos=0)
            minutes = client.get("/v1/devices/dev-1/telemetry").json()["minutes"]
            return sum(m["messages"] for m in minutes if m["model"] is None)

        wait_for(lambda: ingested() >= 3, 15, "telemetry in the rollups")
        received = (REGISTRY.get_sample_value("edgefleet_api_telemetry_receiver_messages_total") or 0.0) - received0
        assert (received >= 3) is on

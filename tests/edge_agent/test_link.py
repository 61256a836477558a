"""The MQTT shell on a real broker: hello on every connect, refused desired states said in Reported.error and
counted, while the device keeps serving what it runs."""

from __future__ import annotations

import json
import queue
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY

from demo.cluster import wait_for
from edge_agent.mqtt.link import AgentLink
from edge_agent.reconcile import Reconciler
from edge_agent.runtime.host import ModelHost
from edge_agent.settings import AgentSettings
from fleet_protocol.messages import Desired, Fetch, Hello, ModelSpec, ModelState, Reported
from fleet_protocol.topics import Topics
from tests.bundles import digits_bundle
from tests.edge_agent.test_reconcile import ref

DEVICE = "dev-link"


class Fleet:
    """The fleet's side, scripted: records hello and reported messages, publishes desired payloads."""

    def __init__(self, broker) -> None:
        self.topics = Topics()
        self.hellos: queue.Queue[Hello] = queue.Queue()
        self.reported: list[Reported] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", broker.port)
        self.c.subscribe(self.topics.hello(DEVICE), qos=1)
        self.c.subscribe(self.topics.reported(DEVICE), qos=1)
        self.c.loop_start()

    def _on_message(self, _c, _u, msg) -> None:
        if msg.topic.endswith("/hello"):
            self.hellos.put(Hello.parse(msg.payload))
        elif msg.payload:
            self.reported.append(Reported.parse(msg.payload))

    def desired(self, payload: bytes) -> None:
        self.c.publish(self.topics.desired(DEVICE), payload, qos=1, retain=True).wait_for_publish(5)

    @property
    def last(self) -> Reported | None:
        return self.reported[-1] if self.reported else None

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("edgefleet_agent_messages_rejected_total", {"reason": reason}) or 0.0


@pytest.fixture
def linked(broker, keys, store, digits):
    settings = AgentSettings(device_id=DEVICE, broker_url=broker.url, data_dir=store.root, trusted_keys=str(keys.public_path))
    host = ModelHost()
    reconciler = Reconciler(settings, store, host)
    link = AgentLink(settings, reconciler)
    reconciler.transport = link
    fleet = Fleet(broker)
    reconciler.start()
    link.start()
    yield reconciler, host, link, fleet
    link.stop()
    reconciler.stop()
    fleet.close()
    host.close()


def test_hello_on_every_connect_and_refused_desired_states_are_reported(linked, bundles, broker):
    _, host, _, fleet = linked
    assert fleet.hellos.get(timeout=10).revision == 0
    fleet.desired(Desired(revision=1, models={"digits": ModelSpec(bundle=ref(bundles["1.0.0"], "1.0.0"))}).to_bytes())
    wait_for(lambda: fleet.last and "digits" in fleet.last.models and fleet.last.models["digits"].state == ModelState.serving,
             30, "digits to serve")

    before = rejected("unknown_schema")
    fleet.desired(json.dumps({"schema": 3, "revision": 2, "models": {}, "hologram": True}).encode())
    wait_for(lambda: fleet.last.error and "unknown schema 3" in fleet.last.error, 10, "the unknown schema reported")
    assert rejected("unknown_schema") == before + 1
    assert fleet.last.revision == 1 and host.get("digits").version == "1.0.0"  # keeps what it runs

    before = rejected("malformed_desired")
    payload = json.loads(Desired(revision=3, models={"digits": ModelSpec(bundle=ref(bundles["2.0.0"], "2.0.0"))}).to_bytes())
    payload["models"]["digits"]["runtime"] = {"require_provider": "CUDAExecutionProvider", "fallback": "cpu"}  # unknown field
    fleet.desired(json.dumps(payload).encode())
    wait_for(lambda: fleet.last.error and "fallback" in fleet.last.error, 10, "the unknown field reported")
    assert rejected("malformed_desired") == before + 1 and host.get("digits").version == "1.0.0"

    # The next valid desired state is handled, and clears the error.
    fleet.desired(Desired(revision=4, models={"digits": ModelSpec(bundle=ref(bundles["2.0.0"], "2.0.0"))}).to_bytes())
    wait_for(lambda: fleet.last.revision == 4 and fleet.last.models["digits"].state == ModelState.serving
             and fleet.last.models["digits"].serving.version == "2.0.0", 30, "revision 4")
    assert fleet.last.error is None

    # The broker killed and back without persistence: the agent reconnects and says hello again, with the
    # revision it holds, so the fleet can answer from its database.
    broker.process.kill()
    broker.start()
    again = Fleet(broker)
    try:
        assert wait_for(lambda: _drain(again.hellos, 4), 30, "a hello after the reconnect")
    finally:
        again.close()


def _drain(q: queue.Queue, revision: int) -> bool:
    while not q.empty():
        if q.get().revision == revision:
            return True
    return False


class ChunkFleet(Fleet):
    """The fleet with a scripted chunk server: publishes the chunks a fetch names, retained as the API does, but
    withholds chunk `withheld` from the first `withhold_asks` fetches that name it."""

    def __init__(self, broker, bundle, r, withheld: int, withhold_asks: int) -> None:
        super().__init__(broker)
        self.data, self.ref = bundle.read_bytes(), r
        self.withheld, self.withhold_asks = withheld, withhold_asks
        self.c.subscribe(self.topics.fetch(DEVICE), qos=1)

    def _on_message(self, c, u, msg) -> None:
        if not msg.topic.endswith("/fetch"):
            return super()._on_message(c, u, msg)
        fetch, size = Fetch.parse(msg.payload), self.ref.chunk_size
        for i in fetch.missing:
            if i == self.withheld and self.withhold_asks > 0:
                self.withhold_asks -= 1
                continue
            c.publish(self.topics.artifact_chunk(fetch.sha256, i), self.data[i * size:(i + 1) * size], qos=1, retain=True)


@pytest.fixture
def impatient(broker, keys, store, digits):
    """An agent on a real broker with short chunk waits (0.2 s, doubling up to 5 s); its calls to the transport
    recorded in order, with when they were made."""
    settings = AgentSettings(device_id=DEVICE, broker_url=broker.url, data_dir=store.root, trusted_keys=str(keys.public_path),
                             chunk_timeout_s=0.2, chunk_wait_max_s=5.0)
    host = ModelHost()
    reconciler = Reconciler(settings, store, host)
    link = AgentLink(settings, reconciler)
    reconciler.transport = link
    calls: list[tuple[str, float, list[int]]] = []
    watch, request = link.watch_artifact, link.request_chunks

    def watching(sha256: str) -> None:
        calls.append(("subscribe", time.monotonic(), []))
        watch(sha256)

    def requesting(sha256: str, chunk_size: int, missing: list[int]) -> None:
        calls.append(("fetch", time.monotonic(), list(missing)))
        request(sha256, chunk_size, missing)

    link.watch_artifact, link.request_chunks = watching, requesting  # type: ignore[method-assign]
    reconciler.start()
    link.start()
    yield reconciler, host, link, calls
    link.stop()
    reconciler.stop()
    host.close()


def test_a_stalled_download_subscribes_again_and_the_broker_s_retained_chunks_complete_it(impatient, broker, keys, tmp_path):
    """A chunk lost on the way to the device (its broker's queue, the agent's full chunk queue) is not asked of
    the fleet again, which would publish it to every device on every site: the device subscribes again, and
    its broker delivers the retained chunks again."""
    reconciler, host, _, calls = impatient
    new = digits_bundle(keys, tmp_path / "b", "3.0.0", epochs=1)
    r = ref(new, "3.0.0", chunk_size=4096)
    fleet = ChunkFleet(broker, new, r, withheld=-1, withhold_asks=0)  # the fleet publishes everything at once
    lost = r.chunk_count // 2
    on_chunk, dropped = reconciler.on_chunk, []

    def losing(sha256: str, index: int, data: bytes) -> bool:
        if index == lost and not dropped:
            dropped.append(index)  # its first copy never arrives
            return True
        return on_chunk(sha256, index, data)

    reconciler.on_chunk = losing  # type: ignore[method-assign]
    try:
        fleet.desired(Desired(revision=1, models={"digits": ModelSpec(bundle=r)}).to_bytes())
        wait_for(lambda: host.get("digits") is not None and host.get("digits").version == "3.0.0", 30, "3.0.0 to serve")
        assert dropped == [lost]
        assert [c[0] for c in calls] == ["subscribe", "fetch", "subscribe"]  # asked the fleet once, only
        assert calls[1][2] == list(range(r.chunk_count))
    finally:
        fleet.close()


def test_when_subscribing_again_brings_nothing_new_the_device_asks_again_waiting_twice_as_long_each_time(
        impatient, broker, keys, tmp_path):
    """A chunk the fleet did not publish (no retained copy either): re-subscribing brings only duplicates, so the
    device asks the fleet for what it misses; re-subscribing and asking alternate, each quiet round waiting twice
    as long as the one before."""
    _, host, _, calls = impatient
    new = digits_bundle(keys, tmp_path / "b", "3.0.0", epochs=1)
    r = ref(new, "3.0.0", chunk_size=4096)
    withheld = r.chunk_count - 1
    fleet = ChunkFleet(broker, new, r, withheld=withheld, withhold_asks=2)  # published for the third ask only
    try:
        fleet.desired(Desired(revision=1, models={"digits": ModelSpec(bundle=r)}).to_bytes())
        wait_for(lambda: host.get("digits") is not None and host.get("digits").version == "3.0.0", 30, "3.0.0 to serve")
        assert [(c[0], c[2]) for c in calls] == [
            ("subscribe", []), ("fetch", list(range(r.chunk_count))),
            ("subscribe", []), ("fetch", [withheld]),  # the re-subscription brought only duplicates
            ("subscribe", []), ("fetch", [withheld]),
        ]
        gaps = [b[1] - a[1] for a, b in zip(calls[2:], calls[3:], strict=False)]
        # after the re-subscription's quiet 0.2 s, each round without a new chunk waits twice as long
        assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8
    finally:
        fleet.close()


def _connect_properties(packet: bytes) -> dict[int, bytes]:
    """The properties of an MQTT 5 CONNECT: {identifier: raw value} for the two-byte-integer ones we look for."""
    from fleet_api.mqtt.telemetry_receiver import read_varint

    def varint(buf: bytes, at: int) -> tuple[int, int]:
        found = read_varint(buf, at, len(buf), "CONNECT field")
        assert found is not None, "CONNECT cut short"
        return found

    assert packet[0] == 0x10, "not a CONNECT"
    _, at = varint(packet, 1)
    at += 2 + int.from_bytes(packet[at:at + 2], "big")  # protocol name
    assert packet[at] == 5, "not MQTT 5"
    at += 1 + 1 + 2  # version, flags, keep alive
    length, at = varint(packet, at)
    props, end = {}, at + length
    while at < end:
        ident = packet[at]
        if ident in (0x21, 0x22):  # Receive Maximum, Topic Alias Maximum: two-byte integers
            props[ident] = packet[at + 1:at + 3]
            at += 3
        elif ident in (0x11, 0x27):  # Session Expiry Interval, Maximum Packet Size: four-byte integers
            props[ident] = packet[at + 1:at + 5]
            at += 5
        else:  # nothing else is expected from the agent; stop rather than misread
            break
    return props


def test_the_agent_asks_its_broker_for_at_most_a_few_messages_in_flight(tmp_path):
    """Receive Maximum in CONNECT: what a site broker holds for a downloading device is bounded (docs/scale.md)."""
    import socket

    from fleet_protocol.broker import DEVICE_RECEIVE_MAXIMUM

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(20)
    port = server.getsockname()[1]
    link = AgentLink(AgentSettings(device_id="rm-1", broker_url=f"mqtt://127.0.0.1:{port}", data_dir=tmp_path), None)
    link.start()
    try:
        conn, _ = server.accept()
        conn.settimeout(20)
        packet = b""
        while len(packet) < 32:  # the properties come within the CONNECT's first 20-odd bytes
            chunk = conn.recv(4096)
            assert chunk, "connection closed before CONNECT"
            packet += chunk
        props = _connect_properties(packet)
        assert int.from_bytes(props[0x21], "big") == DEVICE_RECEIVE_MAXIMUM
        assert DEVICE_RECEIVE_MAXIMUM <= 8
        conn.close()
    finally:
        link.stop()
        server.close()

"""The MQTT shell on a real broker: hello on every connect, refused desired states said in Reported.error and
counted, while the device keeps serving what it runs."""

from __future__ import annotations

import json
import queue

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY

from demo.cluster import wait_for
from edge_agent.mqtt.link import AgentLink
from edge_agent.reconcile import Reconciler
from edge_agent.runtime.host import ModelHost
from edge_agent.settings import AgentSettings
from fleet_protocol.messages import Desired, Hello, ModelSpec, ModelState, Reported
from fleet_protocol.topics import Topics
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

"""Property: arbitrary payloads at every MQTT topic handler — nothing crashes, every refusal is counted, and the
next valid message is handled as usual (issue 12).

The fleet API's handlers (every device channel) are covered the same way in tests/fleet_api/test_faults.py;
this file takes the agent's side, the link's one handler for everything the broker delivers (its desired state,
artifact chunks, anything else), plus arbitrary topics at the API's handler.
"""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

try:  # written against contract v2 (the agent's mqtt/ shell, models by name)
    from fleet_protocol.messages import BundleRef
except ImportError:
    pytest.skip("needs contract v2 (fleet_protocol.messages.BundleRef)", allow_module_level=True)

from edge_agent.mqtt.link import AgentLink
from edge_agent.reconcile import Reconciler
from edge_agent.runtime.host import ModelHost
from edge_agent.settings import AgentSettings
from edge_agent.store import ModelStore
from fleet_protocol.messages import BundleRef, Desired, ModelSpec, ProtocolError, Reported
from fleet_protocol.topics import Topics

TOPICS = Topics()
DEVICE = "dev-p"
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                    database=None)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["schema", "revision", "models", "cameras", "memory_budget_mb", "capture", "issued_at", "bundle", "runtime"]
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries({"schema": st.just(2), "revision": st.integers(-5, 2**65)},
                          optional={"models": JSON, "cameras": JSON}).map(lambda d: json.dumps(d).encode()),
)
SHA = st.text("0123456789abcdef", min_size=64, max_size=64)
TOPIC = st.one_of(
    st.just(TOPICS.desired(DEVICE)),
    st.just(TOPICS.desired("someone-else")),
    st.builds(TOPICS.artifact_chunk, SHA, st.integers(0, 10**6)),
    st.builds(lambda sha, tail: f"{TOPICS.prefix}/artifacts/{sha}/{tail}", SHA, st.text(max_size=8)),
    st.text(max_size=60).filter(lambda t: "\x00" not in t),
)


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("edgefleet_agent_messages_rejected_total", {"reason": reason}) or 0.0


class Reports:
    def __init__(self) -> None:
        self.reports: list[Reported] = []
        self.fetches: list[tuple[str, list[int]]] = []

    def watch_artifact(self, sha256: str) -> None: ...
    def unwatch_artifact(self, sha256: str) -> None: ...

    def request_chunks(self, sha256: str, chunk_size: int, missing: list[int]) -> None:
        self.fetches.append((sha256, missing))

    def report(self, reported: Reported) -> None:
        self.reports.append(reported)


@pytest.fixture
def agent(tmp_path, keys):
    config = AgentSettings(device_id=DEVICE, data_dir=tmp_path / "data", trusted_keys=str(keys.public_path),
                           broker_url="mqtt://127.0.0.1:9", chunk_timeout_s=0.2)
    reports, host = Reports(), ModelHost()
    reconciler = Reconciler(config, ModelStore(tmp_path / "data"), host, reports)
    link = AgentLink(config, reconciler)  # never connected: the test is the broker
    yield link, reconciler, reports
    reconciler.stop()
    host.close()


def deliver(link: AgentLink, topic: str, payload: bytes) -> None:
    msg = mqtt.MQTTMessage(topic=topic.encode("utf-8", "surrogatepass"))
    msg.payload = payload
    link._on_message(link.client, None, msg)


def test_arbitrary_messages_at_the_agent_never_crash_are_counted_and_the_next_desired_state_is_taken(agent):
    link, reconciler, reports = agent

    @given(topic=TOPIC, payload=PAYLOADS)
    @SETTINGS
    def run(topic: str, payload: bytes) -> None:
        own_desired = topic == TOPICS.desired(DEVICE)
        try:
            TOPICS.parse_artifact_chunk(topic)
            chunk = True
        except ValueError:
            chunk = False
        valid = False
        if own_desired and payload:
            try:
                Desired.parse(payload)
                valid = True
            except ProtocolError:
                pass
        before = {r: rejected(r) for r in ("malformed_desired", "unknown_schema", "unexpected_topic")}
        deliver(link, topic, payload)  # never raises
        after = {r: rejected(r) for r in before}
        if own_desired and payload and not valid:
            assert after["malformed_desired"] + after["unknown_schema"] == \
                before["malformed_desired"] + before["unknown_schema"] + 1, payload
            assert reports.reports[-1].error and "desired state refused" in reports.reports[-1].error
        elif not own_desired and not chunk:
            assert after["unexpected_topic"] == before["unexpected_topic"] + 1, topic
        else:
            assert after == before
        # The next valid desired state is taken up as usual, and clears the refusal.
        following = Desired(revision=reconciler.revision + 1)
        deliver(link, TOPICS.desired(DEVICE), following.to_bytes())
        assert reconciler.revision == following.revision
        assert reports.reports[-1].revision == following.revision and reports.reports[-1].error is None

    run()


def test_garbage_chunks_during_a_download_never_land_in_the_bundle(agent, bundles):
    """Chunks of the right artifact but the wrong size or an index beyond it are ignored; the real ones finish
    the download, which verifies and serves."""
    link, reconciler, reports = agent
    path = bundles["1.0.0"]
    data = path.read_bytes()
    from fleet_protocol.signing import sha256_file

    sha, chunk = sha256_file(path), 4096
    ref = BundleRef(name="digits", version="1.0.0", sha256=sha, size=len(data), chunk_size=chunk)
    reconciler.start()  # the model workers, which download
    deliver(link, TOPICS.desired(DEVICE), Desired(revision=reconciler.revision + 1,
                                                  models={"digits": ModelSpec(bundle=ref)}).to_bytes())
    from demo.cluster import wait_for

    wait_for(lambda: any(s == sha for s, _ in reports.fetches), 20, "the download to start")

    @given(index=st.integers(0, 10**6), payload=st.binary(max_size=chunk + 10))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def garbage(index: int, payload: bytes) -> None:
        count = -(-len(data) // chunk)
        real = data[index * chunk:(index + 1) * chunk] if index < count else None
        if payload == real:
            return
        if index < count and len(payload) == len(real):
            return  # same size, other bytes: caught by the digest at the end (and fetched again), not here
        deliver(link, TOPICS.artifact_chunk(sha, index), payload)

    garbage()
    for i in range(-(-len(data) // chunk)):
        deliver(link, TOPICS.artifact_chunk(sha, i), data[i * chunk:(i + 1) * chunk])
    wait_for(lambda: reconciler.host.get("digits") is not None, 30, "the model to serve")
    assert reconciler.host.get("digits").sha256 == sha


def test_arbitrary_topics_at_the_api_never_crash_are_counted_and_the_next_message_is_handled(tmp_path, keys):
    """The API's channels get arbitrary payloads in tests/fleet_api/test_faults.py; here arbitrary topics."""
    from fleet_api.db.session import make_engine, make_sessions
    from fleet_api.mqtt import handlers
    from fleet_api.service import FleetService
    from fleet_api.settings import ApiSettings
    from fleet_protocol.messages import Status
    from tests.fleet_api.conftest import RecordingPublisher

    settings_ = ApiSettings(database_url=f"sqlite:///{tmp_path / 'fleet.db'}", artifact_dir=tmp_path / "artifacts",
                            trusted_keys=str(keys.public_path))
    engine = make_engine(settings_.database_url)
    service = FleetService(settings_, make_sessions(engine), RecordingPublisher())
    service.register_device("d0", {})

    def total() -> float:
        return sum(s.value for m in REGISTRY.collect() if m.name == "edgefleet_api_messages_rejected"
                   for s in m.samples if s.name.endswith("_total"))

    try:
        @given(topic=TOPIC, payload=PAYLOADS, online=st.booleans())
        @SETTINGS
        def run(topic: str, payload: bytes, online: bool) -> None:
            try:
                _, channel = TOPICS.parse_device(topic)
            except ValueError:
                channel = None
            before = total()
            handlers.handle(service, topic, payload)  # never raises
            if channel is None or channel not in handlers.ROUTES:
                assert total() == before + 1, topic
            handlers.handle(service, TOPICS.status("d0"), Status(online=online).to_bytes())
            assert service.get_device("d0")["online"] is online

        run()
    finally:
        service.close()
        engine.dispose()

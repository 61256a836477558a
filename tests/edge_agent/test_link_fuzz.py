"""Arbitrary payloads on every topic the agent listens to (hypothesis): the handler never raises, every
message it refuses is counted, and the next valid desired state is handled as usual."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from edge_agent.capture import Spool
from edge_agent.capture_upload import Uploader
from edge_agent.mqtt.link import AgentLink
from edge_agent.reconcile import Reconciler
from edge_agent.runtime.host import ModelHost
from edge_agent.settings import AgentSettings
from edge_agent.store import ModelStore
from fleet_protocol.capture import SampleAck
from fleet_protocol.messages import Desired
from fleet_protocol.topics import Topics

DEVICE = "dev-fuzz"
T = Topics()
REASONS = ("unknown_schema", "malformed_desired", "unexpected_topic", "unwanted_chunk", "malformed_capture_ack")


class Quiet:
    """A transport that records reports and sends nothing."""

    def __init__(self) -> None:
        self.reports = []

    def watch_artifact(self, sha256: str) -> None: ...
    def unwatch_artifact(self, sha256: str) -> None: ...
    def request_chunks(self, sha256: str, chunk_size: int, missing: list[int]) -> None: ...

    def report(self, reported) -> None:
        self.reports.append(reported)


def rejected() -> float:
    return sum(REGISTRY.get_sample_value("edgefleet_agent_messages_rejected_total", {"reason": r}) or 0.0 for r in REASONS)


def message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    return msg


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
desired_like = st.fixed_dictionaries(
    {"revision": st.integers(min_value=-5, max_value=2**70)},
    optional={"schema": st.integers(-1, 4) | st.text(max_size=3) | st.none(), "models": json_values, "cameras": json_values,
              "memory_budget_mb": json_values, "extra": json_values},
)
payloads = st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()) | \
    desired_like.map(lambda v: json.dumps(v).encode())
ack_like = st.fixed_dictionaries({"id": st.sampled_from(["0" * 32, "x", "ab" * 16]), "stored": json_values},
                                  optional={"refused": json_values, "ts": json_values, "extra": json_values})
payloads = payloads | ack_like.map(lambda v: json.dumps(v).encode())
topics = st.sampled_from([T.desired(DEVICE), T.artifact_chunk("ab" * 32, 0), T.desired("someone-else"),
                          f"{T.prefix}/artifacts/nothex/x", f"{T.prefix}/devices/{DEVICE}/nope",
                          T.capture_ack(DEVICE)])


def test_every_topic_handler_survives_anything(tmp_path, keys):
    store_root = tmp_path / "data"
    settings_ = AgentSettings(device_id=DEVICE, data_dir=store_root, trusted_keys=str(keys.public_path))
    transport = Quiet()
    reconciler = Reconciler(settings_, ModelStore(store_root), ModelHost(), transport)
    link = AgentLink(settings_, reconciler)
    link.uploader = Uploader(Spool(tmp_path / "spool"), lambda _id, _envelope: True)
    revision = [10]

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(topic=topics, payload=payloads)
    def one(topic: str, payload: bytes) -> None:
        before, desired_before = rejected(), reconciler.revision
        link._on_message(None, None, message(topic, payload))  # never raises
        handled = reconciler.revision != desired_before
        ignored_empty = topic == T.desired(DEVICE) and not payload
        assert handled or ignored_empty or rejected() == before + 1 or _older_desired(topic, payload, desired_before) \
            or _valid_ack(topic, payload)
        # The next valid desired state is taken up as usual.
        revision[0] = max(revision[0], reconciler.revision) + 1
        link._on_message(None, None, message(T.desired(DEVICE), Desired(revision=revision[0]).to_bytes()))
        assert reconciler.revision == revision[0] and transport.reports[-1].error is None

    one()


def _older_desired(topic: str, payload: bytes, have: int) -> bool:
    """A valid desired state of a revision the device already has: acknowledged, not a reject."""
    if topic != T.desired(DEVICE):
        return False
    try:
        return Desired.parse(payload).revision <= have
    except ValueError:
        return False


def _valid_ack(topic: str, payload: bytes) -> bool:
    """A well-formed acknowledgement (of a sample this device no longer holds): taken, not a reject."""
    if topic != T.capture_ack(DEVICE):
        return False
    try:
        SampleAck.parse(payload)
    except ValueError:
        return False
    return True

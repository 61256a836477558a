"""The agent against a scripted fleet on a real broker: bad payloads, corrupt chunks, untrusted signatures.

The test plays the fleet API's side of the protocol itself with paho, so it can send exactly the wrong thing.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from demo.cluster import EdgeAgent, wait_for
from fleet_protocol.messages import BundleRef, Desired, Fetch, ModelSpec
from fleet_protocol.signing import sha256_file
from fleet_protocol.topics import Topics
from tests.bundles import Keys, digits_bundle

pytestmark = pytest.mark.e2e
CHUNK = 1024
DEVICE = "dev-p"


class ScriptedFleet:
    """Answers fetch requests from a bundle file; `mutate(index, attempt, data)` may corrupt what is sent."""

    def __init__(self, broker_url: str, mutate=None) -> None:
        self.topics = Topics()
        self.files: dict[str, Path] = {}
        self.wanted: dict[int, str] = {}
        self.mutate = mutate or (lambda i, n, d: d)
        self.requests: Counter[int] = Counter()
        self.reported: list[dict] = []
        self.lock = threading.Lock()
        port = int(broker_url.rsplit(":", 1)[1])
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(self.topics.all_devices("fetch"), qos=1)
        self.client.subscribe(self.topics.all_devices("reported"), qos=1)
        self.client.loop_start()

    def _on_message(self, _c, _u, msg) -> None:
        _, channel = self.topics.parse_device(msg.topic)
        if channel == "reported":
            with self.lock:
                self.reported.append(json.loads(msg.payload))
            return
        fetch = Fetch.parse(msg.payload)
        data = self.files[fetch.sha256].read_bytes()
        for i in fetch.missing:
            self.requests[i] += 1
            chunk = data[i * fetch.chunk_size:(i + 1) * fetch.chunk_size]
            self.client.publish(self.topics.artifact_chunk(fetch.sha256, i), self.mutate(i, self.requests[i], chunk), qos=1)

    def offer(self, bundle: Path, version: str, revision: int) -> str:
        sha = sha256_file(bundle)
        self.files[sha] = bundle
        self.wanted[revision] = sha
        desired = Desired(revision=revision, models={"digits": ModelSpec(bundle=BundleRef(
            name="digits", version=version, sha256=sha, size=bundle.stat().st_size, chunk_size=CHUNK))})
        self.client.publish(self.topics.desired(DEVICE), desired.to_bytes(), qos=1, retain=True).wait_for_publish(5)
        return sha

    def raw_desired(self, payload: bytes) -> None:
        self.client.publish(self.topics.desired(DEVICE), payload, qos=1, retain=True).wait_for_publish(5)

    def last(self, revision: int, model: str = "digits") -> dict | None:
        """The report of `model` once it finished with `revision` (serving or failed), else None."""
        with self.lock:
            done = [r["models"][model] for r in self.reported if r["revision"] == revision and model in r["models"]
                    and r["models"][model]["state"] in ("serving", "failed")
                    and (r["models"][model]["desired"] or {}).get("sha256") == self.wanted.get(revision)]
        return done[-1] if done else None

    def errors(self) -> list[str]:
        with self.lock:
            return [r["error"] for r in self.reported if r.get("error")]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def agent(tmp_path, broker, keys):
    a = EdgeAgent(tmp_path / "agent", DEVICE, broker.url, keys.public_path).start()
    yield a
    a.stop()


def ready_version(agent: EdgeAgent) -> str | None:
    r = httpx.get(f"{agent.url}/v2/health/ready", timeout=2)
    return r.json()["models"]["digits"]["version"] if r.status_code == 200 else None


def test_corrupt_and_truncated_chunks_are_fetched_again(broker, agent, bundles):
    def mutate(index: int, attempt: int, data: bytes) -> bytes:
        if index == 1 and attempt == 1:
            return bytes([data[0] ^ 0xFF]) + data[1:]  # same size, wrong bytes: only the digest can tell
        if index == 2 and attempt == 1:
            return data[:-10]  # truncated: refused on arrival
        return data

    fleet = ScriptedFleet(broker.url, mutate)
    try:
        fleet.offer(bundles["2.0.0"], "2.0.0", revision=1)
        final = wait_for(lambda: fleet.last(1), 60, "the agent to finish revision 1")
        assert final["state"] == "serving", final
        assert final["serving"]["version"] == "2.0.0" and final["golden_passed"] is True
        assert fleet.requests[2] >= 2  # the truncated chunk was asked for again
        assert fleet.requests[1] >= 2  # the corrupt one too, after the digest check failed
        assert ready_version(agent) == "2.0.0"
    finally:
        fleet.close()


def test_malformed_desired_and_untrusted_bundle_leave_the_old_model_serving(broker, agent, bundles, tmp_path):
    fleet = ScriptedFleet(broker.url)
    try:
        fleet.offer(bundles["1.0.0"], "1.0.0", revision=1)
        assert wait_for(lambda: fleet.last(1), 60, "revision 1")["state"] == "serving"

        fleet.raw_desired(b"{not json")
        fleet.raw_desired(b'{"schema": 2, "revision": 2, "model": {"name": "digits"}}')
        wait_for(lambda: any("model: Extra inputs" in e for e in fleet.errors()), 30, "the malformed desired state reported")
        stranger = Keys(tmp_path / "stranger")
        forged = digits_bundle(stranger, tmp_path / "forged", "2.0.0")
        fleet.offer(forged, "2.0.0", revision=3)
        failed = wait_for(lambda: fleet.last(3), 60, "revision 3 to be refused")
        assert failed["state"] == "failed"
        assert "signature" in failed["error"]
        assert failed["serving"]["version"] == "1.0.0"  # still serving the old one
        assert ready_version(agent) == "1.0.0"
        assert not (agent.root / "data" / "models" / sha256_file(forged)).exists()
        assert "Traceback" not in agent.process.tail(200)

        fleet.offer(bundles["2.0.0"], "2.0.0", revision=4)
        assert wait_for(lambda: fleet.last(4), 60, "revision 4")["state"] == "serving"
        assert ready_version(agent) == "2.0.0"
    finally:
        fleet.close()

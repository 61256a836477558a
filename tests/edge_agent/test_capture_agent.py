"""Data capture in the whole agent on a real broker: a device opted in sends what it was unsure of over MQTT,
one sample a message, keeps each until the fleet acknowledges it and sends the unacknowledged again after the
broker went away; a device opted out sends nothing; with blur_faces a camera's frames leave with no face that
BlazeFace finds (the camera's own BlazeFace, served by the device, does the blurring)."""

from __future__ import annotations

import io
import queue

import cv2
import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY

from demo.camera import make_video
from demo.cluster import wait_for
from edge_agent.agent import Agent
from edge_agent.camera.model import load
from edge_agent.camera.stages import Detector
from edge_agent.settings import AgentSettings
from fleet_protocol.capture import Sample, SampleAck, unpack
from fleet_protocol.messages import Capture, Desired, ModelSpec
from fleet_protocol.topics import Topics
from tests.bundles import zoo_bundle
from tests.edge_agent.conftest import LocalServer, binary_request, install
from tests.edge_agent.test_reconcile import ref


class Fleet:
    """The fleet's side, scripted: desired states down, samples up (kept in order), acks down."""

    def __init__(self, broker, device: str) -> None:
        self.topics, self.device = Topics(), device
        self.samples: queue.Queue[tuple[Sample, bytes]] = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = lambda _c, _u, msg: self.samples.put(unpack(bytes(msg.payload)))
        self.c.connect("127.0.0.1", broker.port)
        self.c.subscribe(self.topics.capture(device), qos=1)
        self.c.loop_start()

    def desired(self, desired: Desired) -> None:
        self.c.publish(self.topics.desired(self.device), desired.to_bytes(), qos=1, retain=True).wait_for_publish(5)

    def ack(self, payload: bytes) -> None:
        self.c.publish(self.topics.capture_ack(self.device), payload, qos=1).wait_for_publish(5)

    def take(self, n: int, timeout: float = 30) -> list[tuple[Sample, bytes]]:
        return [self.samples.get(timeout=timeout) for _ in range(n)]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def start(broker, store, keys, device: str) -> Agent:
    agent = Agent(AgentSettings(device_id=device, broker_url=broker.url, data_dir=store.root,
                                trusted_keys=str(keys.public_path), telemetry_interval_s=3600,
                                capture_ack_timeout_s=3.0))
    agent.start()
    return agent


def metric(text: str, line: str) -> float:
    return next(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line + " "))


def test_an_opted_in_device_uploads_what_it_was_unsure_of_until_acknowledged_and_opted_out_sends_nothing(
        broker, keys, store, digits, bundles, images):
    device = "dev-capture"
    fleet = Fleet(broker, device)
    agent = start(broker, store, keys, device)
    models = {"digits": ModelSpec(bundle=ref(bundles["1.0.0"], "1.0.0"))}
    try:
        # min_confidence 1.0: every answer qualifies; no faces to blur in a tensor, so blurring is off.
        fleet.desired(Desired(revision=1, models=models,
                              capture=Capture(enabled=True, min_confidence=1.0, blur_faces=False, max_per_hour=1000)))
        wait_for(lambda: agent.host.get("digits") is not None and agent.sampler.enabled, 30, "digits and capture on")
        with LocalServer(agent.app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
            for i in range(6):
                body, headers = binary_request("image", images[i:i + 1])
                assert client.post("/v2/models/digits/infer", content=body, headers=headers).status_code == 200
            first = fleet.take(4)  # the window: four in flight, the other two wait for acks
            wait_for(lambda: len(agent.sampler.spool) == 6, 10, "six samples spooled")
            assert len(agent.uploader.in_flight) == 4 and fleet.samples.empty()
            for header, data in first:
                assert header.model == "digits" and header.version == "1.0.0" and header.camera is None
                assert header.content_type == "application/x-npy" and header.reason == "low_confidence"
                assert header.outputs["label"] in [str(d) for d in range(10)] and not header.faces_blurred
                x = np.load(io.BytesIO(data), allow_pickle=False)
                assert x.shape == (1, 1, 8, 8) and any(np.array_equal(x, images[i:i + 1]) for i in range(6))
            fleet.ack(SampleAck(id=first[0][0].id, stored=True).to_bytes())
            fleet.ack(SampleAck(id=first[1][0].id, stored=False, refused="quota").to_bytes())
            before = REGISTRY.get_sample_value("edgefleet_agent_messages_rejected_total",
                                               {"reason": "malformed_capture_ack"}) or 0.0
            fleet.ack(b'{"id": "nope", "stored": true}')  # counted and dropped, never a crash
            wait_for(lambda: len(agent.sampler.spool) == 4, 10, "acked and refused samples deleted")
            wait_for(lambda: REGISTRY.get_sample_value("edgefleet_agent_messages_rejected_total",
                                                       {"reason": "malformed_capture_ack"}) == before + 1,
                     10, "the malformed ack counted")

            # The broker goes away without persistence: the agent sends everything unacknowledged again.
            broker.process.kill()
            broker.start()
            fleet.close()
            fleet = Fleet(broker, device)
            seen: set[str] = set()

            def acked_all() -> bool:
                while not fleet.samples.empty():
                    header, _ = fleet.samples.get()
                    seen.add(header.id)
                    fleet.ack(SampleAck(id=header.id, stored=True).to_bytes())
                return len(agent.sampler.spool) == 0

            wait_for(acked_all, 60, "every sample acknowledged after the reconnect")
            assert len(seen) == 4 and not seen & {first[0][0].id, first[1][0].id}
            text = client.get("/metrics").text
            assert metric(text, 'edgefleet_agent_capture_kept_total{reason="low_confidence"}') == 6
            assert metric(text, "edgefleet_agent_capture_uploaded_total") == 5
            assert metric(text, 'edgefleet_agent_capture_refused_total{reason="quota"}') == 1
            assert metric(text, "edgefleet_agent_capture_spool_samples") == 0

            # Opted out: the same requests, nothing kept, nothing sent.
            fleet.desired(Desired(revision=2, models=models, capture=Capture(enabled=False, min_confidence=1.0)))
            wait_for(lambda: not agent.sampler.enabled, 30, "capture off")
            for i in range(5):
                body, headers = binary_request("image", images[i:i + 1])
                assert client.post("/v2/models/digits/infer", content=body, headers=headers).status_code == 200
            assert sum(agent.sampler.kept.values()) == 6 and agent.sampler.queued() == 0
            assert len(agent.sampler.spool) == 0 and agent.uploader.in_flight == [] and fleet.samples.empty()
            assert metric(client.get("/metrics").text, 'edgefleet_agent_capture_skipped_total{reason="not_opted_in"}') >= 5
    finally:
        agent.stop()
        fleet.close()


def test_samples_not_acknowledged_before_a_restart_are_uploaded_after_it(broker, keys, store, digits, bundles, images):
    device = "dev-capture-restart"
    fleet = Fleet(broker, device)
    agent = start(broker, store, keys, device)
    models = {"digits": ModelSpec(bundle=ref(bundles["1.0.0"], "1.0.0"))}
    try:
        fleet.desired(Desired(revision=1, models=models,
                              capture=Capture(enabled=True, min_confidence=1.0, blur_faces=False)))
        wait_for(lambda: agent.host.get("digits") is not None and agent.sampler.enabled, 30, "digits and capture on")
        for i in range(3):
            agent.host.get("digits").run({"image": images[i:i + 1]})  # the tap HTTP requests go through
        before = {h.id for h, _ in fleet.take(3)}  # sent, never acknowledged
    finally:
        agent.stop()
    again = start(broker, store, keys, device)  # the same data directory: the spool is still there
    try:
        assert len(again.sampler.spool) == 3
        after = fleet.take(3)
        assert {h.id for h, _ in after} == before
        for header, _ in after:
            fleet.ack(SampleAck(id=header.id, stored=True).to_bytes())
        wait_for(lambda: len(again.sampler.spool) == 0, 10, "the spool emptied")
        assert again.uploader.uploaded == 3 and not list((store.root / "capture").iterdir())
    finally:
        again.stop()
        fleet.close()


@pytest.fixture(scope="module")
def blazeface_bundle(keys, tmp_path_factory):
    return zoo_bundle("blazeface", keys, tmp_path_factory.mktemp("blazeface"))


def test_with_blur_faces_a_cameras_frames_leave_with_no_face_blazeface_finds(
        broker, keys, store, blazeface_bundle, tmp_path):
    device = "dev-capture-cam"
    video = tmp_path / "faces.avi"
    make_video(video, fps=10, seconds=4)
    install(store, blazeface_bundle, keys)
    fleet = Fleet(broker, device)
    agent = start(broker, store, keys, device)
    check = Detector(load(str(blazeface_bundle), [keys.public]))
    try:
        camera = {"name": "door", "source": {"type": "file", "path": str(video), "loop": True},
                  "detector": "blazeface", "fps": 5}
        fleet.desired(Desired(revision=1, models={"blazeface": ModelSpec(bundle=ref(blazeface_bundle, "1.0.0", "blazeface"))},
                              cameras=[camera],
                              capture=Capture(enabled=True, min_confidence=1.0, blur_faces=True, max_per_hour=12)))
        got: list[tuple[Sample, bytes]] = []

        def capped_and_uploaded() -> bool:
            while not fleet.samples.empty():
                header, data = fleet.samples.get()
                got.append((header, data))
                fleet.ack(SampleAck(id=header.id, stored=True).to_bytes())
            sampler = agent.sampler
            return (sampler.skipped["hourly_cap"] > 0 and sampler.queued() == 0 and len(sampler.spool) == 0
                    and len(got) + sampler.skipped["face_not_removed"] == 12)

        # Frames keep coming: the hour's twelve are taken (kept, or refused as a face survived blurring).
        wait_for(capped_and_uploaded, 120, "the hour's camera samples uploaded")
        assert len(got) == sum(agent.sampler.kept.values()) >= 8
        with_faces = 0
        for header, data in got:
            assert header.camera == "door" and header.content_type == "image/jpeg" and header.faces_blurred
            assert header.model == "blazeface" and (header.width, header.height) == (640, 480)
            with_faces += bool(header.outputs["detections"])  # the live model saw a face in the source frame
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and check(image) == [], header.id
        assert with_faces >= 3, with_faces
        # A tensor sent to the same model cannot be checked for faces: it is not kept while blurring is asked.
        agent.host.get("blazeface").run({"image": np.zeros((1, 3, 128, 128), np.float32)})
        assert agent.sampler.skipped["cannot_blur"] >= 1
    finally:
        agent.stop()
        fleet.close()


def test_inputs_a_shadow_candidate_disagrees_on_are_kept_with_its_version(store, keys, digits, bundles, images, tmp_path):
    """The candidate reads every digit as another (its class scores shuffled): each sample it compares is a
    disagreement, kept even though the live model was sure (min_confidence 0: nothing is unsure)."""
    from edge_agent.capture import Spool
    from edge_agent.sampler import Sampler
    from fleet_protocol.messages import Shadow
    from tests.bundles import permuted_bundle
    from tests.edge_agent.test_reconcile import apply, make

    reconciler, host, _ = make(store, keys)
    host.sampler = sampler = Sampler(Spool(tmp_path / "spool"))
    bad = permuted_bundle(keys, tmp_path / "bad", "3.0.0", epochs=1)
    install(store, bad, keys)
    try:
        live = ModelSpec(bundle=ref(bundles["1.0.0"], "1.0.0"))
        shadow = Shadow(bundle=ref(bad, "3.0.0"), sample_rate=1.0, cpu_budget=1.0)
        apply(reconciler, Desired(revision=1, models={"digits": live.model_copy(update={"shadow": shadow})},
                                  capture=Capture(enabled=True, min_confidence=0.0, blur_faces=False)))
        model = host.get("digits")
        assert model.shadow is not None and sampler.enabled
        runner = model.shadow
        for i in range(5):
            model.run({"image": images[i:i + 1]})
            wait_for(lambda i=i: (t := runner.telemetry()).samples + t.dropped >= i + 1, 30, "the sample compared")
        compared = runner.telemetry().samples
        assert compared >= 1 and runner.telemetry().agreement == 0.0
        sampler.drain()
        headers = [unpack(sampler.spool.get(i))[0] for i in sampler.spool.pending()]
        assert len(headers) == compared and dict(sampler.kept) == {"shadow_disagrees": compared}
        assert all(h.reason == "shadow_disagrees" and h.shadow_version == "3.0.0" and h.version == "1.0.0"
                   and h.confidence is not None for h in headers)
    finally:
        reconciler.stop()
        host.close()

"""Issue 15 on real parts — mosquitto, the fleet API process and edge-agent processes: an encrypted bundle rolled
out to enrolled devices serves the plaintext model's outputs, while no disk (devices' data folders, the API's
artifact store and database) and nothing on `artifacts/#` holds the plaintext model; a device without an enrolled
key, or whose key was revoked, reports the model failed with the reason and serves its previous version."""

from __future__ import annotations

import json
import os
import threading

import httpx
import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from demo.cluster import wait_for
from demo.fleet import Fleet, roll_out, upload, wait_serving
from edge_agent.keys import KEY_FILE
from fleet_protocol.encryption import DeviceKey, b64e, new_data_key
from fleet_protocol.signing import sha256_file
from fleet_protocol.topics import Topics
from tests.bundles import digits, digits_bundle
from tests.fleet_protocol.test_encryption import initializer_bytes

pytestmark = pytest.mark.e2e

DEVICES = {"cam-1": {"group": "a"}, "cam-2": {"group": "a"}, "cam-3": {"group": "b"}}


class ArtifactSpy:
    """A subscriber on `artifacts/#`, as any device could be: it keeps every chunk the API publishes."""

    def __init__(self, port: int) -> None:
        self.chunks: dict[tuple[str, int], bytes] = {}
        self.lock = threading.Lock()
        self.topics = Topics()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="spy", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(f"{self.topics.prefix}/artifacts/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c, _u, msg) -> None:
        sha, index = self.topics.parse_artifact_chunk(msg.topic)
        with self.lock:
            self.chunks[sha, index] = msg.payload

    def artifacts(self) -> dict[str, bytes]:
        with self.lock:
            by_sha: dict[str, list[tuple[int, bytes]]] = {}
            for (sha, index), data in self.chunks.items():
                by_sha.setdefault(sha, []).append((index, data))
        return {sha: b"".join(d for _, d in sorted(parts)) for sha, parts in by_sha.items()}

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def leaks(folder, needles) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]


def infer(url: str, images: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "image", "shape": list(images.shape), "datatype": "FP32", "data": images.ravel().tolist()}]}
    r = httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=30)
    r.raise_for_status()
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def model_state(api: httpx.Client, device: str) -> dict:
    return (api.get(f"/v1/devices/{device}").json()["models"] or {}).get("digits") or {}


def test_encrypted_rollout_serves_the_model_and_leaves_no_plaintext_anywhere(tmp_path, keys, bundles):
    enc_dir = tmp_path / "packed"
    encrypted = digits_bundle(keys, enc_dir, "2.0.0", epochs=20, encrypt=True)  # the same network as plaintext 2.0.0
    key_file = encrypted.with_suffix(".key").read_text()
    newer = digits_bundle(keys, enc_dir, "3.0.0", epochs=1, encrypt=True)
    needles = initializer_bytes(digits(20).onnx)
    assert needles and not any(n in bundles["1.0.0"].read_bytes() for n in needles)  # 1.0.0 is another model
    master = tmp_path / "secrets" / "master.key"
    master.parent.mkdir()
    master.write_text(b64e(new_data_key()))
    os.chmod(master, 0o600)

    fleet = Fleet(tmp_path / "fleet", keys.public_path, DEVICES)
    fleet.api.env.update({"EDGEFLEET_API_MASTER_KEY_FILE": str(master), "EDGEFLEET_API_CHUNK_SIZE": "8192"})
    with fleet, fleet.api.client() as api:
        spy = ArtifactSpy(fleet.broker.port)
        try:
            # Registration enrolment: the operator takes each box's public key at install time (the agent made
            # its key pair on first start); cam-3's is never enrolled.
            for device in ("cam-1", "cam-2"):
                pem = fleet.agents[device].root / "data" / KEY_FILE
                assert os.stat(pem).st_mode & 0o777 == 0o600
                public = DeviceKey.load_or_create(pem).public_b64
                wait_for(lambda d=device: (api.get(f"/v1/devices/{d}").json()["reported"] or {}).get("public_key"),
                         30, f"{device} to report its key")
                assert api.get(f"/v1/devices/{device}").json()["reported"]["public_key"] == public
                assert api.put(f"/v1/devices/{device}/public-key", json={"public_key": public}).status_code == 200

            upload(api, bundles["1.0.0"])
            for device in DEVICES:
                assert api.put(f"/v1/devices/{device}/models/digits", json={"version": "1.0.0"}).status_code == 200
            wait_serving(api, "1.0.0", 120)

            # The encrypted bundle, its key file with it; from now on the model must be encrypted.
            r = api.post("/v1/models", content=encrypted.read_bytes(), headers={"X-Data-Key": key_file})
            assert r.status_code == 201, r.text
            assert api.put("/v1/models/digits/policy", json={"require_encryption": True}).status_code == 200
            r = api.put("/v1/devices/cam-3/models/digits", json={"version": "1.0.0"})
            assert r.status_code == 409 and "requires encryption" in r.json()["error"]

            rollout = roll_out(api, "digits", "2.0.0", "group=a", timeout=180)
            assert rollout["state"] == "succeeded", rollout

            images = np.random.default_rng(0).uniform(0, 1, (16, 1, 8, 8)).astype(np.float32)
            plain = ort.InferenceSession(str(digits(20).onnx), providers=["CPUExecutionProvider"])
            expected = plain.run(None, {"image": images})[0]
            for device in ("cam-1", "cam-2"):
                np.testing.assert_allclose(infer(fleet.agents[device].url, images), expected, rtol=1e-4, atol=1e-5)

            # cam-3 has no enrolled key: the same bundle reaches it, but no key; it says why and serves 1.0.0.
            assert api.put("/v1/devices/cam-3/models/digits", json={"version": "2.0.0"}).status_code == 200
            failed = wait_for(lambda: (m := model_state(api, "cam-3")).get("state") == "failed" and m, 120, "cam-3 refusing")
            assert "KeyMissing" in failed["error"] and "sent no key" in failed["error"] and failed["version"] == "1.0.0"
            assert httpx.get(f"{fleet.agents['cam-3'].url}/v2/models/digits").json()["versions"] == ["1.0.0"]

            # cam-2's key revoked: what it serves goes on, but the next version comes without a key.
            assert api.delete("/v1/devices/cam-2/public-key").json()["key_revoked"] is True
            r = api.put("/v1/models/digits/versions/3.0.0/key", json=json.loads(newer.with_suffix(".key").read_text()))
            assert r.status_code == 404  # no such bundle uploaded yet
            r = api.post("/v1/models", content=newer.read_bytes(), headers={"X-Data-Key": newer.with_suffix(".key").read_text()})
            assert r.status_code == 201, r.text
            assert api.put("/v1/devices/cam-2/models/digits", json={"version": "3.0.0"}).status_code == 200
            failed = wait_for(lambda: (m := model_state(api, "cam-2")).get("state") == "failed" and m, 120, "cam-2 refusing")
            assert "sent no key" in failed["error"] and failed["version"] == "2.0.0"
            np.testing.assert_allclose(infer(fleet.agents["cam-2"].url, images), expected, rtol=1e-4, atol=1e-5)

            # A restart serves the encrypted model from disk again (decrypted into memory, as before).
            agent = fleet.agents["cam-1"]
            agent.stop()
            agent.start()
            wait_for(lambda: httpx.get(f"{agent.url}/v2/health/ready", timeout=5).status_code == 200, 60, "cam-1 serving")
            np.testing.assert_allclose(infer(agent.url, images), expected, rtol=1e-4, atol=1e-5)
        finally:
            spy.stop()

        # The spy saw the encrypted artifact whole (so the scan below can find what is there) and nothing else.
        seen = spy.artifacts()
        assert seen.get(sha256_file(encrypted)) == encrypted.read_bytes()
        assert [sha for sha, data in seen.items() if any(n in data for n in needles)] == []
    # No plaintext model on any disk: devices' data folders, the API's artifact store, database and logs, the broker.
    assert leaks(tmp_path / "fleet", needles) == []
    assert (tmp_path / "fleet" / "api" / "artifacts").is_dir() and (tmp_path / "fleet" / "devices" / "cam-1" / "data" / "models").is_dir()

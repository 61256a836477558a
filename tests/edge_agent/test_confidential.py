"""Encrypted models on the agent, on real sessions: the device key pair, decryption into memory only, no plaintext
on disk, refusals (no key, another device's key, tampered ciphertext) that keep the previous version serving."""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.keys import KEY_FILE, WRAPPED_FILE, ModelKeys
from fleet_protocol.encryption import DeviceKey, b64d, wrap_key
from fleet_protocol.messages import Desired, ModelSpec, ModelState
from tests.bundles import digits as zoo_digits
from tests.bundles import digits_bundle, flipped_model_byte
from tests.edge_agent.conftest import install
from tests.edge_agent.test_reconcile import apply, make, ref, spec
from tests.fleet_protocol.test_encryption import initializer_bytes


@pytest.fixture(scope="module")
def encrypted(keys, tmp_path_factory):
    """digits 3.0.0 (the 20-epoch network) encrypted, with its data key file."""
    path = digits_bundle(keys, tmp_path_factory.mktemp("enc"), "3.0.0", epochs=20, encrypt=True)
    secret = json.loads(path.with_suffix(".key").read_text())
    return path, secret["key_id"], b64d(secret["key"])


def key_for(device_public: str, encrypted):
    _, key_id, data_key = encrypted
    return wrap_key(data_key, key_id, device_public)


def scan(folder) -> list[str]:
    """Every file under `folder` holding any of the plaintext model's largest weights."""
    needles = initializer_bytes(zoo_digits(20).onnx)
    assert needles
    return [str(p) for p in folder.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]


class Chunks:
    """A transport that answers chunk requests from a file at once (the API's chunk server, without a broker)."""

    def __init__(self, path) -> None:
        self.data = path.read_bytes()
        self.reconciler = None
        self.reports = []

    def watch_artifact(self, sha256): ...
    def unwatch_artifact(self, sha256): ...

    def request_chunks(self, sha256, chunk_size, missing):
        for i in missing:
            self.reconciler.on_chunk(sha256, i, self.data[i * chunk_size:(i + 1) * chunk_size])

    def report(self, reported):
        self.reports.append(reported)


def test_the_device_key_is_made_once_kept_private_and_its_public_half_reported(store, keys):
    reconciler, host, reports = make(store, keys)
    pem = store.root / KEY_FILE
    assert os.stat(pem).st_mode & 0o777 == 0o600
    reconciler.publish()
    assert reports.last.public_key == DeviceKey.load_or_create(pem).public_b64
    assert b"PRIVATE" not in reports.last.model_dump_json().encode()
    again, host2, reports2 = make(store, keys)  # a restart keeps the same key pair
    again.publish()
    assert reports2.last.public_key == reports.last.public_key
    host.close(), host2.close()


def test_an_encrypted_model_serves_from_memory_with_the_plaintext_models_outputs(store, keys, encrypted, images):
    # (no plaintext bundles in this store: the scan below would find them)
    reconciler, host, reports = make(store, keys)
    install(store, encrypted[0], keys)
    device = reconciler.keys.public_key
    apply(reconciler, Desired(revision=1, models={"digits": ModelSpec(bundle=ref(encrypted[0], "3.0.0"),
                                                                       key=key_for(device, encrypted))}))
    assert reports.model().state == ModelState.serving and reports.model().golden_passed is True
    served = host.get("digits").run({"image": images})[0]
    plain = ort.InferenceSession(str(zoo_digits(20).onnx), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(served, plain.run(None, {"image": images})[0], rtol=1e-5, atol=1e-6)
    assert scan(store.root) == []  # the store holds ciphertext; nothing decrypted was written, no engine cache
    assert os.stat(store.root / WRAPPED_FILE).st_mode & 0o777 == 0o600

    # A restart serves it before any network: the wrapped key was kept (useless without this device's key).
    again, host2, _ = make(store, keys)
    assert [m.version for m in again.boot()] == ["3.0.0"]
    np.testing.assert_allclose(host2.get("digits").run({"image": images})[0], served, rtol=1e-6)
    assert scan(store.root) == []
    host.close(), host2.close()


def test_no_key_or_another_devices_key_fails_that_model_and_the_previous_version_serves(store, keys, digits, bundles,
                                                                                         encrypted, tmp_path):
    reconciler, host, reports = make(store, keys)
    install(store, encrypted[0], keys)
    apply(reconciler, Desired(revision=1, models={"digits": spec(bundles["1.0.0"], "1.0.0")}))
    assert host.get("digits").version == "1.0.0"

    # Not enrolled, or revoked: the fleet sends the bundle without a key.
    apply(reconciler, Desired(revision=2, models={"digits": ModelSpec(bundle=ref(encrypted[0], "3.0.0"))}))
    report = reports.model()
    assert report.state == ModelState.failed and "KeyMissing" in report.error and "sent no key" in report.error
    assert report.serving.version == "1.0.0" and host.get("digits").version == "1.0.0"

    # A key wrapped for another device does not open here.
    thief = DeviceKey.load_or_create(tmp_path / "other.pem")
    apply(reconciler, Desired(revision=3, models={"digits": ModelSpec(bundle=ref(encrypted[0], "3.0.0"),
                                                                       key=key_for(thief.public_b64, encrypted))}))
    report = reports.model()
    assert report.state == ModelState.failed and "not for this device" in report.error
    assert host.get("digits").version == "1.0.0"

    # Its key enrolled, the same bundle is tried again and serves.
    apply(reconciler, Desired(revision=4, models={"digits": ModelSpec(bundle=ref(encrypted[0], "3.0.0"),
                                                                       key=key_for(reconciler.keys.public_key, encrypted))}))
    assert reports.model().state == ModelState.serving and host.get("digits").version == "3.0.0"
    host.close()


def test_a_tampered_ciphertext_is_refused_before_any_decryption(store, keys, digits, bundles, encrypted, tmp_path,
                                                                monkeypatch):
    bad = flipped_model_byte(encrypted[0], tmp_path / "digits-3.0.0.bundle")

    decrypted = []
    monkeypatch.setattr(ModelKeys, "decrypt", lambda self, *a: decrypted.append(a) or b"")
    transport = Chunks(bad)
    reconciler, host, _ = make(store, keys)
    reconciler.transport = transport
    transport.reconciler = reconciler
    apply(reconciler, Desired(revision=1, models={"digits": spec(bundles["1.0.0"], "1.0.0")}))
    apply(reconciler, Desired(revision=2, models={"digits": ModelSpec(
        bundle=ref(bad, "3.0.0"), key=key_for(reconciler.keys.public_key, encrypted))}))
    report = transport.reports[-1].models["digits"]
    assert report.state == ModelState.failed and "sha256 differs" in report.error
    assert decrypted == [] and host.get("digits").version == "1.0.0"
    host.close()

"""Confidential models: wrap/unwrap per device, ciphertext only in the bundle, tampering caught before decryption."""

from __future__ import annotations

import json
import os

import onnx
import pytest

from fleet_protocol.bundle import MODEL, BundleError, read_bundle
from fleet_protocol.encryption import DeviceKey, EncryptionError, decrypt_model, new_data_key, new_key_id, wrap_key
from tests.bundles import digits, digits_bundle, flipped_model_byte


def initializer_bytes(onnx_path) -> list[bytes]:
    """The largest raw weights of the model: what a scan for a leaked plaintext model looks for."""
    model = onnx.load(str(onnx_path))
    raws = sorted((i.raw_data for i in model.graph.initializer if i.raw_data), key=len, reverse=True)
    return [r[:64] for r in raws[:3] if len(r) >= 64]


def test_a_wrapped_key_opens_only_on_its_device(tmp_path):
    device = DeviceKey.load_or_create(tmp_path / "device.pem")
    other = DeviceKey.load_or_create(tmp_path / "other.pem")
    assert os.stat(tmp_path / "device.pem").st_mode & 0o777 == 0o600
    assert DeviceKey.load_or_create(tmp_path / "device.pem").public_b64 == device.public_b64  # kept across restarts
    data_key, kid = new_data_key(), new_key_id()
    wrapped = wrap_key(data_key, kid, device.public_b64)
    assert device.unwrap(wrapped) == data_key
    with pytest.raises(EncryptionError, match="not for this device"):
        other.unwrap(wrapped)
    altered = wrapped.model_copy(update={"key_id": "someone-else"})
    with pytest.raises(EncryptionError):
        device.unwrap(altered)


def test_an_encrypted_bundle_holds_no_plaintext_model_and_decrypts_to_it(keys, tmp_path):
    zoo = digits(1)
    path = digits_bundle(keys, tmp_path, "1.0.0", epochs=1, encrypt=True)
    key_file = path.with_suffix(".key")
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    secret = json.loads(key_file.read_text())
    raw = path.read_bytes()
    needles = initializer_bytes(zoo.onnx)
    assert needles and not any(n in raw for n in needles)
    verified = read_bundle(path, [keys.public], extract_to=tmp_path / "x")
    assert verified.manifest.encryption is not None and verified.manifest.encryption.key_id == secret["key_id"]
    from fleet_protocol.encryption import b64d

    plain = decrypt_model((tmp_path / "x" / MODEL).read_bytes(), b64d(secret["key"]), secret["key_id"])
    assert plain == zoo.onnx.read_bytes()


def test_a_tampered_ciphertext_is_refused_before_any_decryption(keys, tmp_path):
    path = digits_bundle(keys, tmp_path, "1.0.0", epochs=1, encrypt=True)
    bad = flipped_model_byte(path, tmp_path / "bad.bundle")
    # the signed manifest names the ciphertext's digest: the bundle fails verification, no key is ever used
    with pytest.raises(BundleError, match="sha256 differs"):
        read_bundle(bad, [keys.public])


def test_a_seeded_wrap_is_the_same_each_time_and_still_opens_only_on_its_device(tmp_path):
    device = DeviceKey.load_or_create(tmp_path / "device.pem")
    other = DeviceKey.load_or_create(tmp_path / "other.pem")
    data_key, kid = new_data_key(), new_key_id()
    seed = os.urandom(32)
    a, b = wrap_key(data_key, kid, device.public_b64, seed=seed), wrap_key(data_key, kid, device.public_b64, seed=seed)
    assert a == b and device.unwrap(a) == data_key  # composed again, the desired state does not change
    assert wrap_key(data_key, kid, device.public_b64) != a  # unseeded: fresh ephemeral key and nonce
    assert wrap_key(data_key, kid, device.public_b64, seed=os.urandom(32)) != a
    with pytest.raises(EncryptionError):
        other.unwrap(a)

"""The contract: topics round-trip, messages refuse bad payloads, bundles refuse tampering."""

from __future__ import annotations

import io
import tarfile

import pytest

from fleet_protocol.bundle import BundleError, read_bundle
from fleet_protocol.messages import (
    BundleRef,
    Desired,
    Fetch,
    Hello,
    ModelSpec,
    ProtocolError,
    Reported,
    Status,
    Telemetry,
    UnknownSchema,
)
from fleet_protocol.signing import generate_keypair, load_public_key
from fleet_protocol.topics import Topics


def test_topics_round_trip_and_refuse_foreign_topics():
    t = Topics("edgefleet/v1")
    assert t.parse_device(t.desired("cam-1")) == ("cam-1", "desired")
    assert t.parse_artifact_chunk(t.artifact_chunk("ab" * 32, 7)) == ("ab" * 32, 7)
    for bad in ("edgefleet/v1/devices/cam-1", "other/devices/a/desired", "edgefleet/v1/devices/a/b/desired",
                "edgefleet/v1/devices/a/unknown"):
        with pytest.raises(ValueError):
            t.parse_device(bad)
    with pytest.raises(ValueError):
        t.parse_artifact_chunk("edgefleet/v1/artifacts/abc/x")


@pytest.mark.parametrize("payload, where", [
    (b"not json", "invalid Desired"),
    (b'{"schema": 2, "revision": -1}', "revision"),
    (b'{"schema": 2, "revision": 1, "models": {"m": {"bundle": {"name": "m", "version": "1", "sha256": "xyz", "size": 1}}}}', "sha256"),
    (b'{"schema": 2, "revision": 1, "models": {"m": {"bundle": {"name": "m", "version": "1", "sha256": "' + b"0" * 64
     + b'", "size": 1}, "runtime": {"require_providr": "CUDAExecutionProvider"}}}}', "require_providr"),
    (b'{"schema": 2, "revision": 1, "surprise": true}', "surprise"),
])
def test_desired_refuses_malformed_payloads_with_a_clear_message(payload, where):
    with pytest.raises(ProtocolError, match=where):
        Desired.parse(payload)


def test_messages_round_trip():
    ref = BundleRef(name="digits", version="1.0.0", sha256="0" * 64, size=300_000, chunk_size=128 * 1024)
    assert ref.chunk_count == 3
    d = Desired(revision=3, models={"digits": ModelSpec(bundle=ref)})
    assert Desired.parse(d.to_bytes()) == d
    assert Hello.parse(Hello(revision=3).to_bytes()).revision == 3
    assert Fetch.parse(Fetch(sha256="0" * 64, missing=[0, 2]).to_bytes()).missing == [0, 2]
    with pytest.raises(ProtocolError):
        Fetch.parse(b'{"sha256": "' + b"0" * 64 + b'", "missing": []}')
    with pytest.raises(ProtocolError, match="state"):
        Reported.parse(b'{"schema": 2, "revision": 1, "models": {"digits": {"state": "exploded"}}}')


def test_status_online_must_be_a_real_boolean():
    """Issue 12 #11: `{"online": "yes"}` was taken for true."""
    assert Status.parse(b'{"online": true}').online is True
    for bad in (b'{"online": "yes"}', b'{"online": 1}', b'{"online": "true"}'):
        with pytest.raises(ProtocolError, match="online"):
            Status.parse(bad)


def test_a_foreign_schema_is_its_own_error_and_oversized_payloads_are_refused_before_parsing():
    with pytest.raises(UnknownSchema) as info:
        Desired.parse(b'{"schema": 3, "revision": 7}')
    assert info.value.revision == 7
    with pytest.raises(UnknownSchema):
        Reported.parse(b'{"revision": 7, "state": "serving"}')  # schema 1 carried no `schema` field
    with pytest.raises(ProtocolError, match="bytes, more than"):
        Telemetry.parse(b'{"window_s": 1, "pad": "' + b"x" * 300_000 + b'"}')
    with pytest.raises(ProtocolError, match="requests"):
        Telemetry.parse(b'{"window_s": 1, "models": {"m": {"version": "1", "requests": 9223372036854775808}}}')


def _rewrite(src, dst, mutate):
    """Copy a bundle tar, letting `mutate(name, data)` change members."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            data = mutate(m.name, tin.extractfile(m).read())
            if data is None:
                continue
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))


def test_bundle_verifies_and_extracts(keys, bundles, tmp_path):
    verified = read_bundle(bundles["2.0.0"], [keys.public], extract_to=tmp_path / "x")
    assert verified.manifest.name == "digits" and verified.manifest.version == "2.0.0"
    assert (tmp_path / "x" / "model.onnx").stat().st_size == verified.manifest.files["model.onnx"].size
    assert verified.manifest.inputs[0].name == "image" and verified.manifest.inputs[0].shape == ["batch", 1, 8, 8]


def test_bundle_signed_by_another_key_is_refused(bundles, tmp_path):
    other = load_public_key(generate_keypair()[1])
    with pytest.raises(BundleError, match="signature"):
        read_bundle(bundles["2.0.0"], [other], extract_to=tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("mutate, message", [
    (lambda n, d: d[:-1] + bytes([d[-1] ^ 1]) if n == "model.onnx" else d, "sha256 differs"),
    (lambda n, d: d.replace(b'"2.0.0"', b'"2.0.1"') if n == "manifest.json" else d, "signature"),
    (lambda n, d: None if n == "golden.npz" else d, "differ from the manifest"),
    (lambda n, d: None if n == "signature" else d, "no signature"),
])
def test_tampered_bundle_is_refused_and_nothing_is_left(keys, bundles, tmp_path, mutate, message):
    bad = tmp_path / "bad.bundle"
    _rewrite(bundles["2.0.0"], bad, mutate)
    with pytest.raises(BundleError, match=message):
        read_bundle(bad, [keys.public], extract_to=tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bundle"]


def test_not_a_bundle(keys, tmp_path):
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"PK\x03\x04 this is a zip, not a tar " * 40)
    with pytest.raises(BundleError, match="not a bundle"):
        read_bundle(junk, [keys.public])


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_a_truncated_bundle_is_a_bundle_error(keys, bundles, tmp_path, keep):
    data = bundles["2.0.0"].read_bytes()
    with tarfile.open(bundles["2.0.0"]) as tar:  # where the last file's bytes end (the rest is tar padding)
        end = max(m.offset_data + m.size for m in tar.getmembers())
    cut = tmp_path / "cut.bundle"
    cut.write_bytes(data[: int(end * keep)])
    with pytest.raises(BundleError):
        read_bundle(cut, [keys.public], extract_to=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("payload", [b'{"schema": []}', b'{"schema": {"a": 1}}', b'{"schema": "2"}', b"[" * 100_000])
def test_a_schema_of_any_json_type_or_absurd_nesting_is_a_protocol_error_not_a_crash(payload):
    """Found by the API's property test: an unhashable `schema` raised TypeError out of parse()."""
    for kind in (Reported, Desired, Hello, Telemetry):
        with pytest.raises(ProtocolError):
            kind.parse(payload)

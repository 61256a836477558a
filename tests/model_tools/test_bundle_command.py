"""`model-tools keygen` and `model-tools bundle` as a user runs them, bad input included."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fleet_protocol.bundle import read_bundle
from fleet_protocol.signing import load_public_key
from tests.bundles import digits


def run_cli(capsys, *args):
    """The CLI in this process (faster than a fresh interpreter), answering like subprocess.run."""
    from model_tools.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def tools(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "model_tools.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("k")
    out = tools("keygen", "--out", folder / "sign", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert oct((folder / "sign.pem").stat().st_mode & 0o777) == "0o600"
    return folder / "sign.pem", folder / "sign.pub.pem", info["key_id"]


def test_bundle_writes_a_verifiable_signed_bundle(tmp_path, keypair):
    private, public, kid = keypair
    zoo = digits(20)
    out = tools("bundle", zoo.onnx, "--name", "digits", "--version", "3.1.4", "--golden", zoo.golden_inputs,
                "--key", private, "--out", tmp_path, "--task", "classification", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    verified = read_bundle(tmp_path / "digits-3.1.4.bundle", [load_public_key(public.read_bytes())])
    assert verified.signed_by == kid
    m = verified.manifest
    assert (m.name, m.version, m.task) == ("digits", "3.1.4", "classification")
    assert [(t.name, t.dtype, t.shape) for t in m.inputs] == [("image", "float32", ["batch", 1, 8, 8])]
    assert [(t.name, t.shape) for t in m.outputs] == [("probabilities", ["batch", 10])]
    assert set(m.files) == {"model.onnx", "golden.npz"} and info["manifest"]["files"]["model.onnx"]["size"] > 0

    # immutable: the same version again is refused, and the file is untouched
    before = (tmp_path / "digits-3.1.4.bundle").read_bytes()
    again = tools("bundle", zoo.onnx, "--name", "digits", "--version", "3.1.4", "--golden", zoo.golden_inputs,
                  "--key", private, "--out", tmp_path)
    assert again.returncode == 2 and "immutable" in again.stderr
    assert (tmp_path / "digits-3.1.4.bundle").read_bytes() == before


@pytest.mark.parametrize("case, message", [
    ("not-onnx", "not a valid ONNX model"),
    ("bad-version", "semantic version"),
    ("bad-key", "not a PEM private key"),
    ("wrong-golden", "no array for model input"),
    ("wrong-shape", "golden inputs"),
    ("wrong-rank", "the model wants rank 4"),
])
def test_bundle_bad_input_is_one_line_exit_2_and_no_file(tmp_path, keypair, case, message):
    private, _, _ = keypair
    zoo = digits(20)
    model, version, key, golden = zoo.onnx, "1.0.0", private, zoo.golden_inputs
    if case == "not-onnx":
        model = tmp_path / "model.onnx"
        model.write_text("definitely not protobuf")
    elif case == "bad-version":
        version = "v1"
    elif case == "bad-key":
        key = tmp_path / "key.pem"
        key.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    elif case == "wrong-golden":
        golden = tmp_path / "g.npz"
        np.savez(golden, a=np.zeros((1, 1, 8, 8), np.float32), b=np.zeros(3))
    elif case == "wrong-shape":
        golden = tmp_path / "g.npz"
        np.savez(golden, image=np.zeros((1, 3, 8, 8), np.float32))
    elif case == "wrong-rank":
        golden = tmp_path / "g.npz"
        np.savez(golden, image=np.zeros((8, 8), np.float32))
    out_dir = tmp_path / "out"
    out = tools("bundle", model, "--name", "digits", "--version", version, "--golden", golden, "--key", key, "--out", out_dir)
    assert out.returncode == 2
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_every_command_has_help():
    for cmd in ([], ["keygen"], ["bundle"], ["zoo"]):
        out = tools(*cmd, "--help")
        assert out.returncode == 0 and "usage:" in out.stdout
    for prog in ("edge_agent.cli", "fleet_api.cli"):
        out = subprocess.run([sys.executable, "-m", prog, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage:" in out.stdout


def test_bundle_quantized_model_records_what_it_is(keypair, digits_int8, tmp_path, capsys):
    """`bundle` of an int8 file never claims `none`: read from the graph, or from tune's report with measurements."""
    private, public, _ = keypair
    model, report_path, zoo = digits_int8
    out = run_cli(capsys, "bundle", model, "--name", "digits", "--version", "1.0.0", "--golden", zoo.golden_inputs, "--key",
                private, "--out", tmp_path, "--json")
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout)["manifest"]
    assert m["quantization"]["method"] == "static-qdq-int8"
    assert (m["golden"]["atol"], m["golden"]["rtol"]) == (1e-3, 1e-2)  # an int8 model's golden check allows a quantization step

    out = run_cli(capsys, "bundle", model, "--name", "digits", "--version", "1.0.1", "--golden", zoo.golden_inputs, "--key",
                private, "--out", tmp_path, "--tune-report", report_path, "--measurements", '{"note": "lab run"}',
                "--json")
    assert out.returncode == 0, out.stderr
    m = read_bundle(tmp_path / "digits-1.0.1.bundle", [load_public_key(public.read_bytes())]).manifest
    assert m.quantization.method == "static-qdq-int8" and m.quantization.calibration_size == 16
    assert m.measurements["variant"] == "int8-static" and m.measurements["accuracy"]["accuracy"] > 0.9
    assert m.measurements["latency"][0]["p50_ms"] > 0 and m.measurements["note"] == "lab run"

    # a claim the graph contradicts is refused, and nothing is written
    out = run_cli(capsys, "bundle", model, "--name", "digits", "--version", "1.0.2", "--golden", zoo.golden_inputs, "--key",
                private, "--out", tmp_path, "--quantization", "none")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "static-qdq-int8 (DequantizeLinear" in out.stderr
    assert not (tmp_path / "digits-1.0.2.bundle").exists()
    # a file that is not in the report (another training run)
    out = run_cli(capsys, "bundle", digits(1).onnx, "--name", "digits", "--version", "1.0.3", "--golden", zoo.golden_inputs, "--key",
                private, "--out", tmp_path, "--tune-report", report_path)
    assert out.returncode == 2 and "none of the variants" in out.stderr


@pytest.fixture(scope="module")
def digits_int8(tmp_path_factory):
    from model_tools import tune

    zoo = digits(20)
    work = tmp_path_factory.mktemp("tuned")
    test = np.load(zoo.data["test"])
    tune.tune(zoo.onnx, task="classification", workdir=work, eval_data={"image": test["x"][:100]}, truth=test["y"][:100],
              calibration={"image": test["x"][:16]}, variants=["fp32", "int8-static"], runs=10, memory=False)
    return work / "int8-static.onnx", work / "report.json", zoo


def test_a_camera_ready_blazeface_bundle_from_the_cli(keypair, tmp_path, capsys):
    """Task, labels, pre- and post-processing set by flags: the camera's detector accepts the bundle and finds
    the astronaut's face with it."""
    import os

    from skimage import data

    from edge_agent.camera.model import load
    from edge_agent.camera.stages import Detector
    from model_tools.zoo import prepare

    private, public, _ = keypair
    zoo = prepare("blazeface")
    (tmp_path / "labels.txt").write_text("face\n")
    (tmp_path / "post.json").write_text(json.dumps(zoo.extra))
    old = os.umask(0o022)
    try:
        out = run_cli(capsys, "bundle", zoo.onnx, "--name", "face", "--version", "1.0.0", "--golden", zoo.golden_inputs, "--key",
                    private, "--out", tmp_path, "--task", "detection", "--labels", tmp_path / "labels.txt",
                    "--preprocessing", json.dumps(zoo.preprocessing), "--postprocessing", f"@{tmp_path / 'post.json'}")
    finally:
        os.umask(old)
    assert out.returncode == 0, out.stderr
    bundle = tmp_path / "face-1.0.0.bundle"
    assert oct(bundle.stat().st_mode & 0o777) == "0o644"  # the user's umask, not mkstemp's 0600
    model = load(str(bundle), [load_public_key(public.read_bytes())])
    manifest = model.manifest
    assert (manifest.task, manifest.labels, manifest.extra["decoder"]) == ("detection", ["face"], "blazeface")
    detector = Detector(model)
    faces = detector(data.astronaut()[:, :, ::-1].copy())  # the camera hands BGR frames
    assert len(faces) == 1 and faces[0].label == "face"


def test_bundle_encrypt_writes_ciphertext_and_a_private_key_file(tmp_path, keypair):
    from fleet_protocol.bundle import MODEL
    from fleet_protocol.encryption import b64d, decrypt_model

    private, public, _ = keypair
    zoo = digits(20)
    out_dir = tmp_path / "new-folder"  # not there yet: the key file is written before the bundle
    out = tools("bundle", zoo.onnx, "--name", "digits", "--version", "4.0.0", "--golden", zoo.golden_inputs,
                "--key", private, "--out", out_dir, "--encrypt", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    key_file = out_dir / "digits-4.0.0.key"
    assert info["key_file"] == str(key_file) and oct(key_file.stat().st_mode & 0o777) == "0o600"
    secret = json.loads(key_file.read_text())
    assert secret["key"] not in out.stdout  # the key is in its file only
    verified = read_bundle(out_dir / "digits-4.0.0.bundle", [load_public_key(public.read_bytes())], extract_to=tmp_path / "x")
    assert verified.manifest.encryption.key_id == secret["key_id"]
    ciphertext = (tmp_path / "x" / MODEL).read_bytes()
    assert ciphertext != zoo.onnx.read_bytes()
    assert decrypt_model(ciphertext, b64d(secret["key"]), secret["key_id"]) == zoo.onnx.read_bytes()

"""Real bundles for tests: the digits CNN (trained here, cached), signed with a test key."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fleet_protocol.bundle import GOLDEN, MODEL, read_bundle, write_bundle
from fleet_protocol.signing import generate_keypair, load_private_key, load_public_key
from model_tools import golden
from model_tools.pack import pack_bundle
from model_tools.zoo import prepare


class Keys:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        private, public = generate_keypair()
        self.private_path = folder / "signing.pem"
        self.public_path = folder / "signing.pub.pem"
        self.private_path.write_bytes(private)
        self.public_path.write_bytes(public)
        self.private = load_private_key(private)
        self.public = load_public_key(public)


def digits(epochs: int):
    return prepare("digits", variant=f"e{epochs}", epochs=epochs)


def digits_bundle(keys: Keys, out: Path, version: str, epochs: int = 20, **kwargs) -> Path:
    zoo = digits(epochs)
    path, _ = pack_bundle(
        zoo.onnx, name="digits", version=version, golden_inputs=zoo.golden_inputs, private_key_pem=keys.private_path.read_bytes(),
        out_dir=out, task="classification", labels=zoo.labels, preprocessing=zoo.preprocessing, **kwargs,
    )
    return path


def bad_golden_bundle(keys: Keys, out: Path, version: str, epochs: int = 20) -> Path:
    """Properly signed, but its golden outputs are not what the model computes: it must fail on every device."""
    zoo = digits(epochs)
    model_bytes = zoo.onnx.read_bytes()
    inputs = golden.load_inputs(zoo.golden_inputs, ["image"])
    outputs = golden.compute(model_bytes, inputs)
    outputs = {k: np.roll(v, 1, axis=-1) for k, v in outputs.items()}
    good = digits_bundle(keys, out / "tmp", version, epochs)
    manifest = read_bundle(good, [keys.public]).manifest
    path = out / f"digits-{version}.bundle"
    write_bundle(path, manifest, {MODEL: model_bytes, GOLDEN: golden.to_npz(inputs, outputs)}, keys.private)
    return path

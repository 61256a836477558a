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


def digits_bundle(keys: Keys, out: Path, version: str, epochs: int = 20, name: str = "digits", **kwargs) -> Path:
    """`name` other than digits: the same network under another model name (a second model on one device)."""
    zoo = digits(epochs)
    path, _ = pack_bundle(
        zoo.onnx, name=name, version=version, golden_inputs=zoo.golden_inputs, private_key_pem=keys.private_path.read_bytes(),
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


def slow_digits_bundle(keys: Keys, out: Path, version: str, matmuls: int = 24) -> Path:
    """The 20-epoch digits CNN with the same answers but ~100× the latency: a chain of 512×512 MatMuls whose
    result is added times zero, so it passes its golden check and only its telemetry can give it away."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(digits(20).onnx)
    g = model.graph
    rng = np.random.default_rng(0)
    g.initializer.extend([
        numpy_helper.from_array((rng.standard_normal((512, 512)) / 32).astype(np.float32), "slow_w"),  # shrinks: never inf
        numpy_helper.from_array(np.array([1, 8], np.int64), "slow_tiles"),
        numpy_helper.from_array(np.zeros(1, np.float32), "slow_zero"),
    ])
    nodes = [helper.make_node("Tile", ["flat", "slow_tiles"], ["slow_0"])]  # N×128 → N×1024
    nodes.append(helper.make_node("Slice", ["slow_0", "slow_start", "slow_end", "slow_axis"], ["slow_x0"]))
    g.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), n)
                          for n, v in (("slow_start", 0), ("slow_end", 512), ("slow_axis", 1))])
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"slow_x{i}", "slow_w"], [f"slow_x{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_x{matmuls}"], ["slow_sum"], keepdims=1),
        helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
    ]
    # logits + 0 × (the heavy chain): same outputs, a real data dependency onnxruntime cannot prune
    for node in g.node:
        if node.op_type == "Softmax":
            node.input[0] = "slow_logits"
    nodes.append(helper.make_node("Add", ["logits", "slow_nothing"], ["slow_logits"]))
    softmax_at = [i for i, n in enumerate(g.node) if n.op_type == "Softmax"][0]
    for offset, node in enumerate(nodes):
        g.node.insert(softmax_at + offset, node)
    onnx.checker.check_model(model)
    path = out / "slow.onnx"
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    bundle, _ = pack_bundle(
        path, name="digits", version=version, golden_inputs=digits(20).golden_inputs, private_key_pem=keys.private_path.read_bytes(),
        out_dir=out, task="classification", labels=digits(20).labels, preprocessing=digits(20).preprocessing,
    )
    return bundle


def fp16_bundle(keys: Keys, out: Path, version: str, epochs: int = 20, broken: bool = False,
                compare: str = "tolerance") -> Path:
    """The digits CNN converted to fp16 arithmetic (inputs and outputs stay fp32), with the golden outputs of
    the fp32 model: what a TensorRT fp16 engine is to its fp32 ONNX. `broken`: one weight tensor damaged, as
    a bad conversion would."""
    import onnx
    from onnx import numpy_helper
    from onnxconverter_common import float16

    zoo = digits(epochs)
    fp32 = zoo.onnx.read_bytes()
    model = float16.convert_float_to_float16(onnx.load_from_string(fp32), keep_io_types=True)
    if broken:
        init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        w = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array((w * -0.5).astype(w.dtype), init.name))
    # Uncertain inputs (noise), not clear digits: saturated probabilities would hide any arithmetic error.
    inputs = {"image": np.random.default_rng(0).uniform(0, 1, (32, 1, 8, 8)).astype(np.float32)}
    outputs = golden.compute(fp32, inputs)  # the fp32 model's answers
    good = digits_bundle(keys, out / "tmp", version, epochs)
    manifest = read_bundle(good, [keys.public]).manifest
    manifest = manifest.model_copy(update={"golden": manifest.golden.model_copy(update={"compare": compare}),
                                           "quantization": manifest.quantization.model_copy(update={"method": "fp16"})})
    path = out / f"digits-{version}.bundle"
    write_bundle(path, manifest, {MODEL: model.SerializeToString(), GOLDEN: golden.to_npz(inputs, outputs)}, keys.private)
    return path


def zoo_bundle(name: str, keys: Keys, out: Path, version: str = "1.0.0") -> Path:
    """A model of model_tools' zoo (e.g. blazeface) as a signed bundle, with its task, labels and settings."""
    zoo = prepare(name)
    path, _ = pack_bundle(zoo.onnx, name=name, version=version, golden_inputs=zoo.golden_inputs,
                          private_key_pem=keys.private_path.read_bytes(), out_dir=out, task=zoo.task, labels=zoo.labels,
                          preprocessing=zoo.preprocessing, extra=zoo.extra, force=True)
    return path


def permuted_bundle(keys: Keys, out: Path, version: str, epochs: int = 20) -> Path:
    """The digits CNN with its class scores shuffled (a Gather after the softmax) and golden outputs computed
    from itself: it passes its own golden check everywhere, yet reads every digit as another."""
    import onnx
    from onnx import helper, numpy_helper

    zoo = digits(epochs)
    model = onnx.load(zoo.onnx)
    out_name = model.graph.output[0].name
    model.graph.initializer.append(numpy_helper.from_array(np.roll(np.arange(10), 3).astype(np.int64), "perm"))
    for node in model.graph.node:
        node.output[:] = [out_name + "_raw" if o == out_name else o for o in node.output]
    model.graph.node.append(helper.make_node("Gather", [out_name + "_raw", "perm"], [out_name], axis=1))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "permuted.onnx"
    onnx.save(model, path)
    bundle, _ = pack_bundle(path, name="digits", version=version, golden_inputs=zoo.golden_inputs,
                            private_key_pem=keys.private_path.read_bytes(), out_dir=out, task="classification",
                            labels=zoo.labels, preprocessing=zoo.preprocessing)
    return bundle


def int8_bundle(keys: Keys, out: Path, version: str, epochs: int = 20) -> Path:
    """The digits CNN quantized to dynamic int8 by model_tools (golden outputs from itself, quantization named in
    the manifest): the sound candidate of an fp32 model."""
    from model_tools.quantize import dynamic_int8

    zoo = digits(epochs)
    out.mkdir(parents=True, exist_ok=True)
    info = dynamic_int8(Path(zoo.onnx), out / "int8.onnx")
    bundle, _ = pack_bundle(out / "int8.onnx", name="digits", version=version, golden_inputs=zoo.golden_inputs,
                            private_key_pem=keys.private_path.read_bytes(), out_dir=out, task="classification",
                            labels=zoo.labels, preprocessing=zoo.preprocessing, quantization={"method": info["method"]})
    return bundle


def flipped_model_byte(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` with one byte of model.onnx flipped (same headers, so only the digest can tell)."""
    import io
    import tarfile

    members = []
    with tarfile.open(bundle) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            members.append((m, f.read()))
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if info.name == MODEL:
                flipped = bytearray(data)
                flipped[len(flipped) // 2] ^= 1
                data = bytes(flipped)
            tar.addfile(info, io.BytesIO(data))
    return out

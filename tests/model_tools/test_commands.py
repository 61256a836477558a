"""The commands end to end on real models, and their bad-input behaviour: one line, exit 2, no output file."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from .conftest import cli


def test_quantize_static_from_an_image_folder_and_evaluate(digits, tmp_path, capsys):
    import cv2

    folder = tmp_path / "imgs"
    folder.mkdir()
    x = np.load(digits.data["test"])["x"][:16]
    for i, img in enumerate(x):
        cv2.imwrite(str(folder / f"{i}.png"), (img[0] * 255).astype(np.uint8))
    out = tmp_path / "q.onnx"
    code, stdout, err = cli(["quantize", str(digits.onnx), "--mode", "static", "--calibration", str(folder),
                             "--preprocessing", json.dumps(digits.preprocessing), "--method", "entropy", "-o", str(out),
                             "--json"], capsys)
    assert code == 0, err
    assert err.strip() == "", err  # onnxruntime's quantizer chatter only with --verbose
    assert json.loads(stdout)["calibration_size"] == 16
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)
    code, stdout, err = cli(["evaluate", str(out), "--zoo", "digits", "--batch", "1,16", "--runs", "10", "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["accuracy"]["against"] == "labels" and report["accuracy"]["accuracy"] > 0.9
    assert {r["batch"] for r in report["latency"]} == {1, 16}
    assert all(r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in report["latency"])


def test_optimize_and_fp16_and_dynamic(ppocr_rec, tmp_path, capsys):
    opt = tmp_path / "opt.onnx"
    code, stdout, err = cli(["optimize", str(ppocr_rec.onnx), "-o", str(opt), "--json"], capsys)
    assert code == 0, err
    info = json.loads(stdout)
    assert info["nodes_after"] < info["nodes_before"] and info["opset"] == [12, 17]
    onnx.checker.check_model(onnx.load(str(opt)))
    for mode in ("dynamic", "fp16"):
        code, _, err = cli(["quantize", str(opt), "--mode", mode, "-o", str(tmp_path / f"{mode}.onnx")], capsys)
        assert code == 0, err


def _fails(argv, capsys, *words):
    code, out, err = cli(argv, capsys)
    assert code == 2
    line = err.strip()
    assert "\n" not in line and line.startswith("error: ")
    for w in words:
        assert w in line, line
    return line


def test_not_onnx(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_text("this is not a model")
    out = tmp_path / "out.onnx"
    for argv in (["optimize", str(bad), "-o", str(out)], ["quantize", str(bad), "--mode", "dynamic", "-o", str(out)]):
        _fails(argv, capsys, "not an ONNX model")
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_calibration_that_does_not_fit_the_model(digits, ppocr_rec, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    _fails(["quantize", str(digits.onnx), "--calibration", str(ppocr_rec.data["calibration"]), "-o", str(out)],
           capsys, "image", "[", "shape")
    assert list(tmp_path.iterdir()) == []


def test_empty_calibration_folder(digits, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "q.onnx"
    _fails(["quantize", str(digits.onnx), "--calibration", str(tmp_path / "empty"), "-o", str(out)], capsys, "no images")
    assert not out.exists()


def test_op_unknown_to_the_provider(tmp_path, capsys):
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="edgefleet.test")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("edgefleet.test", 1)])
    path = tmp_path / "fancy.onnx"
    onnx.save(model, str(path))
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 4), np.float32))
    _fails(["evaluate", str(path), "--data", str(tmp_path / "d.npz"), "--reference", str(path)], capsys,
           "FancyOp", "CPUExecutionProvider")
    out = tmp_path / "q.onnx"
    for mode in ("dynamic", "static", "fp16"):
        _fails(["quantize", str(path), "--mode", mode, "--calibration", str(tmp_path / "d.npz"), "-o", str(out)], capsys,
               "FancyOp", "fancy.onnx", "unknown to onnxruntime")
    assert not out.exists()


@pytest.mark.parametrize("mode", ["torch", "sklearn"])
def test_export(mode, tmp_path, capsys, monkeypatch):
    if mode == "torch":
        pytest.importorskip("torch")
        (tmp_path / "tiny_net.py").write_text(
            "import torch\n"
            "class Net(torch.nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__(); torch.manual_seed(0)\n"
            "        self.c = torch.nn.Conv2d(1, 4, 3, padding=1); self.f = torch.nn.Linear(256, 10)\n"
            "    def forward(self, x):\n"
            "        return torch.softmax(self.f(torch.relu(self.c(x)).flatten(1)), 1)\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        argv = ["export", "tiny_net:Net", "--input-shape", "2,1,8,8"]
    else:
        pytest.importorskip("skl2onnx")
        import pickle

        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression

        x, y = load_iris(return_X_y=True)
        (tmp_path / "lr.pkl").write_bytes(pickle.dumps(LogisticRegression(max_iter=500).fit(x, y)))
        argv = ["export", "--sklearn", str(tmp_path / "lr.pkl")]
    out = tmp_path / "m.onnx"
    code, stdout, err = cli(argv + ["-o", str(out), "--json"], capsys)
    assert code == 0, err
    info = json.loads(stdout)
    assert info["max_abs_diff"] < 1e-4
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param or dim0.dim_value == 0  # dynamic batch axis


def test_quantize_help_names_the_opset_it_raises_to(capsys):
    from model_tools.quantize import PORTABLE_OPSET

    with pytest.raises(SystemExit) as exit_:
        cli(["quantize", "--help"], capsys)
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"below opset {PORTABLE_OPSET} are raised to {PORTABLE_OPSET}" in text and "opset 13 are raised" not in text

"""`model-tools export` on the models users bring: several inputs of any dtype, dynamic axes by name, checked.

Every model is defined here and exported from the test's own folder (no PYTHONPATH), as a user would; the
checks run the ONNX file in onnxruntime against torch at shapes other than the sample's.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest

from .conftest import cli

torch = pytest.importorskip("torch")

NETS = '''
import torch


class FCN(torch.nn.Module):
    """Fully convolutional: any height and width (even), output at the input's resolution."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.down = torch.nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.head = torch.nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x):
        return torch.nn.functional.interpolate(self.head(torch.relu(self.down(x))), scale_factor=2.0)


class TokenRNN(torch.nn.Module):
    """int64 token ids and a bool mask → an LSTM, then a GRU → class logits and per-token states."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 8)
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True)
        self.gru = torch.nn.GRU(16, 16, batch_first=True)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, tokens, mask):
        states, _ = self.lstm(self.embed(tokens))
        states, _ = self.gru(states * mask.unsqueeze(-1).float())
        return self.head(states[:, -1]), states


class FixedLength(torch.nn.Module):
    """Flattens its sequence into a Linear: the length cannot vary."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(5 * 4, 2)

    def forward(self, x):
        return self.head(x.reshape(x.shape[0], -1))
'''


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The models' own folder as the working directory, and not on sys.path (the console script's situation)."""
    (tmp_path / "user_nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "user_nets", raising=False)
    return tmp_path


def _export(argv, capsys):
    code, out, err = cli(["export", *argv, "--json"], capsys)
    assert code == 0, err
    assert err.strip() == "", err  # no exporter chatter, no traceback without --verbose
    return json.loads(out)


def _dims(path, io="input"):
    model = onnx.load(str(path))
    values = model.graph.input if io == "input" else model.graph.output
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def _run(path, feed):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def test_fcn_with_dynamic_height_and_width(workdir, capsys):
    info = _export(["user_nets:FCN", "--input-shape", "1,3,16,16", "--dynamic", "batch,height,width", "-o", "fcn.onnx"],
                   capsys)
    assert _dims("fcn.onnx") == {"input": ["batch", 3, "height", "width"]}
    assert info["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    # checked against torch at the sample's shape and at a second one
    assert info["checked_shapes"] == [{"input": [1, 3, 16, 16]}, {"input": [2, 3, 32, 32]}]
    model = onnx.load("fcn.onnx")
    assert info["opset"] == next(o.version for o in model.opset_import if o.domain == "")  # the file's own opset
    import user_nets

    x = np.random.default_rng(1).normal(size=(3, 3, 24, 40)).astype(np.float32)  # a shape never seen in export
    with torch.no_grad():
        want = user_nets.FCN().eval()(torch.from_numpy(x)).numpy()
    got = _run("fcn.onnx", {"input": x})[0]
    assert got.shape == (3, 2, 24, 40) and np.allclose(got, want, atol=1e-4)


def test_int64_token_lstm_gru_with_mask_and_dynamic_sequence(workdir, capsys):
    rng = np.random.default_rng(0)
    # a batch of 1: the batch axis must come out dynamic all the same
    np.savez("tokens.npz", tokens=rng.integers(0, 50, (1, 7)), mask=np.ones((1, 7), bool))
    info = _export(["user_nets:TokenRNN", "--sample", "tokens.npz", "--dynamic", "batch,sequence",
                    "--output-name", "logits,states", "-o", "lm.onnx"], capsys)
    assert _dims("lm.onnx") == {"tokens": ["batch", "sequence"], "mask": ["batch", "sequence"]}
    assert [(i["name"], i["dtype"]) for i in info["inputs"]] == [("tokens", "int64"), ("mask", "bool")]
    # the states output follows the sequence too, though the exporter wrote the sample's length into it
    assert _dims("lm.onnx", "output") == {"logits": ["batch", 3], "states": ["batch", "sequence", 16]}
    tokens, mask = rng.integers(0, 50, (4, 11)), rng.integers(0, 2, (4, 11)).astype(bool)
    import user_nets

    with torch.no_grad():
        want = user_nets.TokenRNN().eval()(torch.from_numpy(tokens), torch.from_numpy(mask))[0].numpy()
    got = _run("lm.onnx", {"tokens": tokens, "mask": mask})[0]
    assert np.allclose(got, want, atol=1e-4)
    _serve_with_the_agent(workdir, capsys, tokens, mask, want)


def _serve_with_the_agent(workdir, capsys, tokens, mask, want):
    """Bundled with the CLI (the sample as golden inputs), verified, loaded and golden-checked by the agent's
    engine, and answered over KServe v2 with INT64 and BOOL tensors."""
    import httpx

    from edge_agent.http.server import create_app
    from edge_agent.runtime.host import ModelHost
    from edge_agent.store import ModelStore
    from tests.bundles import Keys
    from tests.edge_agent.conftest import LocalServer, install, load_checked

    keys = Keys(workdir / "keys")
    code, out, err = cli(["bundle", "lm.onnx", "--name", "tokens", "--version", "1.0.0", "--golden", "tokens.npz",
                          "--key", str(keys.private_path), "--out", str(workdir / "bundles"), "--task", "classification",
                          "--json"], capsys)
    assert code == 0, err
    manifest = json.loads(out)["manifest"]
    assert [(i["name"], i["dtype"], i["shape"]) for i in manifest["inputs"]] == [
        ("tokens", "int64", ["batch", "sequence"]), ("mask", "bool", ["batch", "sequence"])]
    store = ModelStore(workdir / "agent")
    host = ModelHost()
    host.swap(load_checked(install(store, workdir / "bundles" / "tokens-1.0.0.bundle", keys), store.cache))
    body = {"inputs": [{"name": "tokens", "shape": list(tokens.shape), "datatype": "INT64", "data": tokens.ravel().tolist()},
                       {"name": "mask", "shape": list(mask.shape), "datatype": "BOOL", "data": mask.ravel().tolist()}],
            "outputs": [{"name": "logits"}]}
    try:
        with LocalServer(create_app(host)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            r = client.post("/v2/models/tokens/infer", json=body)
    finally:
        host.close()
    assert r.status_code == 200, r.text
    logits = next(o for o in r.json()["outputs"] if o["name"] == "logits")
    assert np.allclose(np.asarray(logits["data"], np.float32).reshape(logits["shape"]), want, atol=1e-4)


def _fails(argv, capsys, *words):
    code, out, err = cli(argv, capsys)
    assert code == 2, err
    line = err.strip()
    assert "\n" not in line and line.startswith("error: "), err
    for w in words:
        assert w in line, line
    return line


def test_export_bad_input(workdir, capsys):
    out = workdir / "bad.onnx"
    # an input shape of the wrong rank for the model
    _fails(["export", "user_nets:FCN", "--input-shape", "3,16,16,1,1", "-o", str(out)], capsys, "cannot run on the sample")
    # an axis declared dynamic that the model cannot vary
    _fails(["export", "user_nets:FixedLength", "--input-shape", "2,5,4", "--dynamic", "batch,sequence", "-o", str(out)],
           capsys, "second shape")
    # an axis name nobody can place
    _fails(["export", "user_nets:FCN", "--input-shape", "1,3,16,16", "--dynamic", "depth", "-o", str(out)], capsys,
           "depth=AXIS")
    # a state_dict saved with torch.save is not a model
    torch.save({"w": torch.zeros(3)}, workdir / "weights.pt")
    _fails(["export", str(workdir / "weights.pt"), "--input-shape", "1,3", "-o", str(out)], capsys, "torch.save",
           "module:factory")
    assert not out.exists()


@pytest.fixture(scope="module")
def iris_forest(tmp_path_factory):
    pytest.importorskip("skl2onnx")
    import pickle

    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_iris(return_X_y=True)
    path = tmp_path_factory.mktemp("skl") / "rf.pkl"
    path.write_bytes(pickle.dumps(RandomForestClassifier(n_estimators=10, random_state=0).fit(x, y)))
    return path


def test_sklearn_wrong_n_features(iris_forest, tmp_path, capsys):
    out = tmp_path / "rf.onnx"
    _fails(["export", "--sklearn", str(iris_forest), "--n-features", "5", "-o", str(out)], capsys, "4 features")
    assert not out.exists()


def test_files_follow_the_umask(iris_forest, tmp_path, capsys):
    import os

    old = os.umask(0o027)
    try:
        code, _, err = cli(["export", "--sklearn", str(iris_forest), "-o", str(tmp_path / "rf.onnx")], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert oct((tmp_path / "rf.onnx").stat().st_mode & 0o777) == "0o640"
    assert _dims(tmp_path / "rf.onnx", "output") == {"label": ["batch"], "probabilities": ["batch", 3]} or \
        list(_dims(tmp_path / "rf.onnx", "output")) == ["label", "probabilities"]


def test_dynamic_axes_by_name_and_the_second_shape():
    from model_tools.errors import UsageError
    from model_tools.export import grow, parse_dynamic

    samples = {"image": np.zeros((1, 3, 16, 24), np.float32), "tokens": np.zeros((2, 7), np.int64)}
    assert parse_dynamic([], samples) == {"image": {0: "batch"}, "tokens": {0: "batch"}}
    assert parse_dynamic(["none"], samples) == {"image": {}, "tokens": {}}
    assert parse_dynamic(["batch", "image:height,width", "tokens:sequence"], samples) == {
        "image": {0: "batch", 2: "height", 3: "width"}, "tokens": {0: "batch", 1: "sequence"}}
    assert parse_dynamic(["tokens:words=1"], samples) == {"image": {}, "tokens": {1: "words"}}
    for bad, words in ((["depth"], "depth=AXIS"), (["nope:batch"], "no input named 'nope'"),
                       (["tokens:height=5"], "no axis 5"), (["batch=x"], "must be an integer")):
        with pytest.raises(UsageError, match=words):
            parse_dynamic(bad, samples)
    dyn = parse_dynamic(["batch", "image:height,width", "tokens:sequence"], samples)
    second = grow(samples, dyn)
    assert second["image"].shape == (2, 3, 32, 48) and second["tokens"].shape == (3, 14)

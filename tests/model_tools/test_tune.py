"""tune on real models: never slower than fp32, never beyond the accuracy budget."""

import json
import tarfile

import numpy as np

from model_tools import evaluate as ev
from model_tools import tune

from .conftest import cli


def _check_invariants(report):
    base = next(v for v in report["variants"] if v["name"] == "fp32")
    chosen = next(v for v in report["variants"] if v["name"] == report["chosen"])
    assert chosen["p50_ms"] <= base["p50_ms"]
    assert chosen["accuracy_drop"] <= report["max_accuracy_drop"]
    return base, chosen


def test_tune_rejects_dynamic_int8_of_ppocr_rec_for_accuracy(ppocr_rec, tmp_path):
    data = np.load(ppocr_rec.data["eval"])
    calib = np.load(ppocr_rec.data["calibration"])["x"][:8]
    report = tune.tune(ppocr_rec.onnx, task=ppocr_rec.task, workdir=tmp_path, eval_data={"x": data["x"][:40]},
                       truth=ev.labels_of(ppocr_rec.task, data)[:40], labels=ppocr_rec.labels,
                       calibration={"x": calib}, variants=["fp32", "int8-dynamic", "int8-static"],
                       max_accuracy_drop=0.01, runs=5)
    base, chosen = _check_invariants(report)
    dyn = next(v for v in report["variants"] if v["name"] == "int8-dynamic")
    assert base["accuracy"]["accuracy"] > 0.85  # fp32 reads the synthetic text
    assert dyn["accuracy_drop"] > 0.5 and "accuracy drop" in dyn["verdict"]
    assert report["chosen"] != "int8-dynamic"
    assert (tmp_path / "report.json").exists() and (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_tune_cli_bundles_the_choice_with_measurements(digits, tmp_path, capsys):
    from fleet_protocol.bundle import read_bundle  # noqa: F401  (the contract reads what we wrote)

    key = tmp_path / "k"
    assert cli(["keygen", "--out", str(key)], capsys)[0] == 0
    code, out, err = cli(["tune", "--zoo", "digits", "--out", str(tmp_path / "t"), "--runs", "30", "--json",
                          "--bundle", "--name", "digits", "--version", "1.0.0", "--key", f"{key}.pem"], capsys)
    assert code == 0, err
    report = json.loads(out)
    _check_invariants(report)
    with tarfile.open(report["bundle"]) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest["measurements"]["variant"] == report["chosen"]
    assert manifest["measurements"]["latency"][0]["p50_ms"] > 0
    assert manifest["quantization"]["method"] == tune.QUANT_METHOD[report["chosen"]]
    assert manifest["measurements"]["accuracy"]["accuracy"] > 0.9

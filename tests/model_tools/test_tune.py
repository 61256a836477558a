"""tune on real models: never slower than fp32, never beyond the accuracy budget, the same pick twice."""

import json
import tarfile

import numpy as np

from model_tools import evaluate as ev
from model_tools import timing, tune
from model_tools.optimize import optimize

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
                       max_accuracy_drop=0.01, runs=5, memory=False)
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


def test_tune_image_folder_calibration_uses_the_preprocessing_and_picks_the_same_twice(digits, tmp_path, capsys):
    """A small CNN, calibrated on a folder of PNGs through --preprocessing (as `quantize` does): static int8
    keeps its accuracy; the report has sizes, peak memory, spreads and the chosen variant's operator profile;
    a second run picks the same."""
    import cv2

    folder = tmp_path / "imgs"
    folder.mkdir()
    test = np.load(digits.data["test"])
    for i, img in enumerate(test["x"][:32]):
        cv2.imwrite(str(folder / f"{i:03}.png"), np.round(img[0] * 255).astype(np.uint8))
    np.savez(tmp_path / "eval.npz", x=test["x"], y=test["y"])
    argv = ["tune", str(digits.onnx), "--data", str(tmp_path / "eval.npz"), "--task", "classification",
            "--calibration", str(folder), "--preprocessing", json.dumps(digits.preprocessing), "--runs", "40", "--json"]
    code, out, err = cli(argv + ["--out", str(tmp_path / "t1")], capsys)
    assert code == 0, err
    assert "INFO" not in err and "WARNING" not in err and "Traceback" not in err, err  # quiet without --verbose
    report = json.loads(out)
    base, chosen = _check_invariants(report)
    v = {r["name"]: r for r in report["variants"]}
    static = v["int8-static"]
    assert static["status"] == "measured" and static["info"]["calibration_size"] == 32
    assert static["accuracy_drop"] <= 0.01, static["accuracy"]  # calibrated on what the model really sees
    assert base["accuracy"]["accuracy"] > 0.9 and base["accuracy"]["output"] == "probabilities"
    for r in v.values():
        assert r["size_bytes"] > 0 and r["memory"]["peak_rss_mb"] > 0
        lo, hi = r["spread_ms"]
        assert lo <= hi and r["latency"][0]["rounds"] == 5
    assert static["size_bytes"] < base["size_bytes"]  # int8 weights
    prof = report["profile"]
    assert prof["variant"] == report["chosen"] and prof["ops"] and abs(sum(o["share"] for o in prof["ops"]) - 1) < 0.05
    assert (tmp_path / "t1" / "report.png").read_bytes()[:4] == b"\x89PNG"

    code, out, err = cli(argv + ["--out", str(tmp_path / "t2"), "--no-memory"], capsys)
    assert code == 0, err
    assert json.loads(out)["chosen"] == report["chosen"]


def test_a_variant_within_noise_of_fp32_is_not_picked(digits, tmp_path):
    """fp32-optimized of an already optimized model is the same graph: whatever the timer says, it does not pay."""
    model = tmp_path / "already-optimized.onnx"
    optimize(digits.onnx, model)
    test = np.load(digits.data["test"])
    report = tune.tune(model, task="classification", workdir=tmp_path / "t", eval_data={"image": test["x"][:100]},
                       truth=test["y"][:100], variants=["fp32", "fp32-optimized"], runs=50, memory=False)
    v = {r["name"]: r for r in report["variants"]}
    assert report["chosen"] == "fp32"
    assert "not faster than fp32" in v["fp32-optimized"]["verdict"]


def _drifting_clock(costs, drift):
    """A fake clock for runners that advance it: each run costs costs[name] ms times a machine speed that
    changes linearly with (fake) time, like a VM whose neighbour goes quiet."""
    state = {"t": 0.0}

    def runner(name):
        def run():
            state["t"] += costs[name] * (1.0 + drift * state["t"]) / 1000
        return run

    return (lambda: state["t"]), runner


def test_interleaved_rounds_are_not_fooled_by_drift():
    clock, runner = _drifting_clock({"fp32": 1.0, "same": 1.0, "half": 0.5}, drift=-0.5)  # the machine speeds up
    runners = {n: runner(n) for n in ("fp32", "same", "half")}
    t = timing.interleaved(runners, rounds=5, runs_per_round=20, clock=clock)
    assert not timing.faster(t["fp32"], t["same"], 1.05)  # the same cost stays the same, drift or not
    assert timing.faster(t["fp32"], t["half"], 1.05)  # twice as fast is faster in every round
    # Timed one after the other (what tune did), the drift alone makes the later copy look >5% faster.
    clock, runner = _drifting_clock({"fp32": 1.0, "same": 1.0}, drift=-0.5)
    first = timing.interleaved({"fp32": runner("fp32")}, rounds=5, runs_per_round=20, clock=clock)["fp32"]
    later = timing.interleaved({"same": runner("same")}, rounds=5, runs_per_round=20, clock=clock)["same"]
    assert first.p50 / later.p50 > 1.05


def test_pick_prefers_the_least_changed_among_variants_within_noise():
    def v(name, rounds, eligible=True):
        var = tune.Variant(name, eligible=eligible)
        var.timing = timing.Timing(samples_ms=list(rounds), rounds_ms=list(rounds))
        var.p50_ms = var.timing.p50
        return var

    fp32 = v("fp32", [10, 10.5, 11])
    opt = v("fp32-optimized", [5.0, 5.2, 5.4])
    int8 = v("int8-static", [4.9, 5.1, 5.3])  # a hair faster on the median, inside the other's spread
    assert tune.pick([fp32, opt, int8]).name == "fp32-optimized"
    fast = v("int8-static", [2.0, 2.1, 2.2])  # faster beyond the noise
    assert tune.pick([fp32, opt, fast]).name == "int8-static"


def test_tune_bad_bundle_flags_fail_before_anything_is_built(digits, tmp_path, capsys):
    key = tmp_path / "k"
    assert cli(["keygen", "--out", str(key)], capsys)[0] == 0
    for flags, words in ((["--version", "v1", "--key", f"{key}.pem"], "semantic version"),
                         (["--version", "1.0.0", "--key", str(tmp_path / "missing.pem")], "cannot read key")):
        code, _, err = cli(["tune", "--zoo", "digits", "--out", str(tmp_path / "t"), "--bundle", "--name", "digits",
                              *flags], capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and words in err, err
        assert not (tmp_path / "t").exists()

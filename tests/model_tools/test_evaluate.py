"""`model-tools evaluate` scores scikit-learn classifiers as scikit-learn does (not argmax over their label ids)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from .conftest import cli

pytest.importorskip("skl2onnx")


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    x, y = load_wine(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
    folder = tmp_path_factory.mktemp("wine")
    np.savez(folder / "test.npz", x=x_test.astype(np.float32), y=y_test)
    return folder, x_train, y_train, x_test.astype(np.float32), y_test


def _estimator(kind):
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {"random-forest": RandomForestClassifier(n_estimators=30, random_state=0),
            "gradient-boosting": GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0),
            "pipeline": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))}[kind]


@pytest.mark.parametrize("kind, how", [("random-forest", "cli"), ("gradient-boosting", "zipmap"), ("pipeline", "cli")])
def test_sklearn_classifier_scored_like_sklearn(wine, kind, how, capsys):
    folder, x_train, y_train, x_test, y_test = wine
    est = _estimator(kind).fit(x_train, y_train)
    truth = float(np.mean(est.predict(x_test) == y_test))
    model = folder / f"{kind}.onnx"
    if how == "cli":
        (folder / f"{kind}.pkl").write_bytes(pickle.dumps(est))
        code, out, err = cli(["export", "--sklearn", str(folder / f"{kind}.pkl"), "-o", str(model), "--json"], capsys)
        assert code == 0, err
    else:  # converted by the user with skl2onnx's defaults: label + ZipMap'd output_probability
        from skl2onnx import to_onnx

        model.write_bytes(to_onnx(est, x_test[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString())
    code, out, err = cli(["evaluate", str(model), "--data", str(folder / "test.npz"), "--task", "classification",
                          "--batch", "1", "--runs", "3", "--json"], capsys)
    assert code == 0, err
    acc = json.loads(out)["accuracy"]
    assert acc["against"] == "labels" and acc["samples"] == len(y_test)
    assert abs(acc["accuracy"] - truth) <= 0.01, (acc, truth)
    assert acc["output"] in ("probabilities", "output_probability")
    # the label output, chosen by name, scores the same
    label = "label" if how == "cli" else "output_label"
    code, out, err = cli(["evaluate", str(model), "--data", str(folder / "test.npz"), "--task", "classification",
                          "--output", label, "--batch", "1", "--runs", "3", "--json"], capsys)
    assert code == 0, err
    assert abs(json.loads(out)["accuracy"]["accuracy"] - truth) <= 0.01


def test_unknown_output_name(wine, tmp_path, capsys):
    folder, x_train, y_train, *_ = wine
    (tmp_path / "rf.pkl").write_bytes(pickle.dumps(_estimator("random-forest").fit(x_train, y_train)))
    assert cli(["export", "--sklearn", str(tmp_path / "rf.pkl"), "-o", str(tmp_path / "rf.onnx")], capsys)[0] == 0
    code, out, err = cli(["evaluate", str(tmp_path / "rf.onnx"), "--data", str(folder / "test.npz"), "--task",
                          "classification", "--output", "nope"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "no output named 'nope'" in err and "probabilities" in err

"""Does quantization pay here? fp32 vs dynamic int8 vs static int8 on real models, accuracy and latency, one run.

Each model is scored on its own labelled data: the digits CNN on the digits test split (top-1), PP-OCRv4 rec on
a seeded synthetic text set rendered with OpenCV (1 - character error rate), BlazeFace on faces and non-faces
from skimage.data (F1 of IoU ≥ 0.5 matched boxes). Latency: CPU provider, 1 intra-op thread, batch 1, p50.
The last column is what `model-tools tune` picks with a 0.01 accuracy budget.

    .venv/bin/python benchmarks/quantization.py [--runs N]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model_tools import evaluate as ev  # noqa: E402
from model_tools import tune  # noqa: E402
from model_tools.zoo.base import prepare  # noqa: E402

MODELS = [("digits", "test", None), ("ppocr-rec", "eval", "calibration"), ("blazeface", "eval", None)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--budget", type=float, default=0.01)
    args = ap.parse_args()
    import onnxruntime as ort

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"# {cpu}; onnxruntime {ort.__version__}; VNNI: {'yes' if __import__('model_tools.quantize').quantize.cpu_has_vnni() else 'no'}")
    rows = []
    for name, split, calib_key in MODELS:
        t0 = time.time()
        zoo = prepare(name)
        data = dict(np.load(zoo.data[split]))
        input_name = ev.session(zoo.onnx).get_inputs()[0].name
        x = data["x"]
        truth = ev.labels_of(zoo.task, data)
        # Calibrate on data the model is not scored on where the zoo has it; else on the first 64 samples.
        calib = np.load(zoo.data[calib_key])["x"] if calib_key else x[:64]
        with tempfile.TemporaryDirectory() as tmp:
            report = tune.tune(zoo.onnx, task=zoo.task, workdir=Path(tmp), eval_data={input_name: x}, truth=truth,
                               labels=zoo.labels, extra=zoo.extra, calibration={input_name: calib[:64]},
                               variants=["fp32", "int8-dynamic", "int8-static"], max_accuracy_drop=args.budget,
                               runs=args.runs)
        v = {r["name"]: r for r in report["variants"]}
        rows.append((name, report["metric"], len(x), v, report["chosen"], time.time() - t0))

    head = f"| model | metric (n) | fp32 acc | dyn-int8 acc | static-int8 acc | fp32 p50 ms | dyn-int8 p50 ms | static-int8 p50 ms | tune picks (budget {args.budget}) |"
    print(head)
    print("|---" * 9 + "|")
    for name, metric, n, v, chosen, _ in rows:
        def acc(k):
            return f"{v[k]['accuracy']['accuracy']:.4f}" if v[k]["status"] == "measured" else "failed"

        def lat(k):
            return f"{v[k]['p50_ms']:.3f} ({v[k]['speedup']}×)" if v[k]["status"] == "measured" else "failed"

        print(f"| {name} | {metric} ({n}) | {acc('fp32')} | {acc('int8-dynamic')} | {acc('int8-static')} | "
              f"{lat('fp32')} | {lat('int8-dynamic')} | {lat('int8-static')} | {chosen} |")
    print()
    for name, _, _, v, chosen, secs in rows:
        reasons = "; ".join(f"{k}: {r['verdict']}" for k, r in v.items() if k != "fp32")
        print(f"- {name} ({secs:.0f} s): {reasons}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

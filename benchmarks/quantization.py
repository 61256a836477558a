"""Does quantization pay here? fp32 vs dynamic int8 vs static int8 on real models, accuracy and latency, one run.

Each model is scored on its own labelled data: the digits CNN on the digits test split (top-1), PP-OCRv4 rec on
a seeded synthetic text set rendered with OpenCV (1 - character error rate), BlazeFace on faces and non-faces
from skimage.data (F1 of IoU ≥ 0.5 matched boxes). Latency: CPU provider, 1 intra-op thread, batch 1, p50.
The last column is what `model-tools tune` picks with a 0.01 accuracy budget.

    .venv/bin/python benchmarks/quantization.py [--runs N]
    .venv/bin/python benchmarks/quantization.py --resnet [--chart docs/images/tune-resnet18-digits.png]
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

from model_tools import evaluate as ev
from model_tools import tune
from model_tools.zoo.base import prepare

MODELS = [("digits", "test", None), ("ppocr-rec", "eval", "calibration"), ("blazeface", "eval", None)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--budget", type=float, default=0.01)
    ap.add_argument("--resnet", action="store_true", help="only the full tune report of a ResNet-18 trained on digits")
    ap.add_argument("--chart", type=Path, help="with --resnet: copy tune's chart here (docs/images/…)")
    args = ap.parse_args()
    if args.resnet:
        return resnet_report(args.runs, args.budget, args.chart)
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
        def acc(k, v=v):
            return f"{v[k]['accuracy']['accuracy']:.4f}" if v[k]["status"] == "measured" else "failed"

        def lat(k, v=v):
            return f"{v[k]['p50_ms']:.3f} ({v[k]['speedup']}×)" if v[k]["status"] == "measured" else "failed"

        print(f"| {name} | {metric} ({n}) | {acc('fp32')} | {acc('int8-dynamic')} | {acc('int8-static')} | "
              f"{lat('fp32')} | {lat('int8-dynamic')} | {lat('int8-static')} | {chosen} |")
    print()
    for name, _, _, v, _, secs in rows:
        reasons = "; ".join(f"{k}: {r['verdict']}" for k, r in v.items() if k != "fp32")
        print(f"- {name} ({secs:.0f} s): {reasons}")
    return 0


# ---- a ResNet-18 trained on digits: the full tune report (table, operator profile, chart) --------------------

RESNET_SRC = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + self.skip(x))


class ResNet18(nn.Module):
    """ResNet-18's layout (2-2-2-2 basic blocks) at a width for 32x32 grey images."""

    def __init__(self, width=32, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, w in enumerate([width, 2 * width, 4 * width, 8 * width]):
            layers += [Block(cin, w, 1 if i == 0 else 2), Block(w, w, 1)]
            cin = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return torch.softmax(self.head(self.layers(self.stem(x)).mean((2, 3))), 1)
'''


def resnet_digits(cache: Path, width: int = 32, epochs: int = 4) -> tuple[Path, dict[str, np.ndarray]]:
    """Train (once, cached) a ResNet-18 on digits upscaled to 32x32 and export it with `model_tools.export`.
    → (the fp32 ONNX file, {"x_train", "y_train", "x_test", "y_test"})."""
    import importlib.util

    import torch

    from model_tools.export import export_torch
    from model_tools.zoo.digits import load_split

    x_train, y_train, x_test, y_test = load_split()
    up = lambda x: torch.nn.functional.interpolate(torch.from_numpy(x), size=(32, 32), mode="bilinear").numpy()  # noqa: E731
    data = {"x_train": up(x_train), "y_train": y_train, "x_test": up(x_test), "y_test": y_test}
    onnx_path = cache / f"resnet18-digits-w{width}-e{epochs}.onnx"
    if onnx_path.exists():
        return onnx_path, data
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / "resnet18_digits.py"
    src.write_text(RESNET_SRC)
    spec = importlib.util.spec_from_file_location("resnet18_digits", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.ResNet18(width)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(data["x_train"]), torch.from_numpy(y_train)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            loss = torch.nn.functional.nll_loss(torch.log(net(xt[idx]) + 1e-9), yt[idx])
            loss.backward()
            opt.step()
    net.eval()
    export_torch(net, {"image": data["x_test"][:1]}, onnx_path)
    return onnx_path, data


def resnet_report(runs: int, budget: float, chart: Path | None) -> int:
    from model_tools.settings import ToolsSettings

    t0 = time.time()
    model, data = resnet_digits(ToolsSettings().cache_dir / "bench")
    trained = time.time() - t0
    with tempfile.TemporaryDirectory() as tmp:
        report = tune.tune(model, task="classification", workdir=Path(tmp), eval_data={"image": data["x_test"]},
                           truth=data["y_test"], calibration={"image": data["x_train"][:64]},
                           calibration_name="64 training images", max_accuracy_drop=budget, runs=runs)
        if chart:
            chart.parent.mkdir(parents=True, exist_ok=True)
            chart.write_bytes(Path(report["chart"]).read_bytes())
    print(f"ResNet-18 (width 32) on digits at 32x32, {len(data['y_test'])} test images; model ready in {trained:.0f} s "
          f"(trained and exported once, then cached), "
          f"tune {time.time() - t0 - trained:.0f} s; {report['rounds']} interleaved rounds, {runs} runs per variant")
    print()
    print("| variant | size MB | peak MB | p50 ms | spread ms | speedup | top-1 | drop | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for v in report["variants"]:
        if v["status"] != "measured":
            print(f"| {v['name']} | | | | | | | | {v['verdict']} |")
            continue
        mem = (v.get("memory") or {}).get("model_mb")
        name = f"**{v['name']}**" if v["name"] == report["chosen"] else v["name"]
        print(f"| {name} | {v['size_bytes'] / 1e6:.2f} | {mem if mem is not None else '-'} | {v['p50_ms']:.3f} | "
              f"{v['spread_ms'][0]:.3f}–{v['spread_ms'][1]:.3f} | {v['speedup']}× | {v['accuracy']['accuracy']:.4f} | "
              f"{v['accuracy_drop']:+.4f} | {v['verdict']} |")
    print()
    prof = report["profile"]
    print(f"Where {prof['variant']}'s time goes (onnxruntime profiler, {prof['runs']} runs):")
    print()
    print("| op | nodes | ms / run | share |")
    print("|---|---|---|---|")
    for row in prof["ops"][:8]:
        print(f"| {row['op']} | {row['nodes']} | {row['ms_per_run']:.3f} | {row['share']:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

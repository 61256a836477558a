"""Build every variant of a model, measure each on this hardware, and pick the fastest that keeps accuracy.

Quantization does not always pay (int8 QDQ can be slower than fp32, dynamic int8 can destroy a recognizer),
so nothing is assumed: a variant wins only if its accuracy drop stays within the budget AND it beats fp32's
measured p50 latency by at least `min_speedup`; otherwise fp32 stays. The fp32 model is always a candidate,
so the pick can never be slower than fp32 or less accurate than the budget allows.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import evaluate as ev
from . import quantize as q
from .errors import UsageError
from .optimize import atomic_path, optimize

QUANT_METHOD = {"fp32": "none", "fp32-optimized": "none", "int8-dynamic": "dynamic-int8",
                "int8-static": "static-qdq-int8", "fp16": "fp16"}


@dataclass
class Variant:
    name: str
    path: Path | None = None
    status: str = "pending"  # built, failed, measured
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    latency: list[dict[str, Any]] = field(default_factory=list)
    p50_ms: float | None = None
    accuracy_drop: float | None = None
    speedup: float | None = None
    eligible: bool = False
    verdict: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        d["quantization"] = QUANT_METHOD[self.name]
        return d


def tune(
    model: Path,
    *,
    task: str,
    workdir: Path,
    eval_data: dict[str, np.ndarray],
    truth=None,
    labels: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    calibration: dict[str, np.ndarray] | None = None,
    calibration_name: str | None = None,
    calibration_method: str = "minmax",
    max_accuracy_drop: float = 0.01,
    min_speedup: float = 1.05,
    provider: str = "CPUExecutionProvider",
    threads: int = 1,
    runs: int = 50,
    variants: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    import onnxruntime as ort

    say = progress or (lambda _msg: None)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    has_gpu = any(p in ort.get_available_providers() for p in ev.GPU_PROVIDERS)
    wanted = variants or ["fp32", "fp32-optimized", "int8-dynamic", "int8-static"] + (["fp16"] if has_gpu else [])
    out: list[Variant] = []
    for name in wanted:
        v = Variant(name)
        dest = workdir / f"{name}.onnx"
        say(f"building {name}")
        try:
            if name == "fp32":
                with atomic_path(dest) as tmp:
                    shutil.copyfile(model, tmp)
            elif name == "fp32-optimized":
                v.info = optimize(model, dest)
            elif name == "int8-dynamic":
                v.info = q.dynamic_int8(model, dest)
            elif name == "int8-static":
                if calibration is None:
                    raise UsageError("no calibration data")
                v.info = q.static_int8(model, dest, calibration, method=calibration_method,
                                       calibration_name=calibration_name)
            elif name == "fp16":
                v.info = q.fp16(model, dest)
            else:
                raise UsageError(f"unknown variant {name!r}")
            v.path, v.status = dest, "built"
        except UsageError as exc:
            v.status, v.reason = "failed", str(exc)
        out.append(v)

    reference = workdir / "fp32.onnx"
    for v in out:
        if v.status != "built":
            continue
        say(f"measuring {v.name}")
        try:
            v.accuracy = ev.accuracy(v.path, eval_data, task=task, labels=labels or [], extra=extra or {},
                                     truth=truth, reference=None if truth is not None else reference)
            sample = {k: a[:1] for k, a in eval_data.items()}
            lat = ev.latency(v.path, sample, provider=provider, threads=threads, batch=1, runs=runs)
            v.latency = [lat]
            v.p50_ms = lat["p50_ms"]
            v.status = "measured"
        except UsageError as exc:
            v.status, v.reason = "failed", str(exc)

    base = next((v for v in out if v.name == "fp32" and v.status == "measured"), None)
    if base is None:
        raise UsageError(f"the fp32 model itself cannot be measured: {out[0].reason if out else 'no variants'}")
    for v in out:
        if v.status != "measured":
            v.verdict = f"failed: {v.reason}"
            continue
        v.accuracy_drop = round(base.accuracy["accuracy"] - v.accuracy["accuracy"], 6)
        v.speedup = round(base.p50_ms / v.p50_ms, 3) if v.p50_ms else None
        if v is base:
            v.eligible, v.verdict = True, "baseline"
        elif v.accuracy_drop > max_accuracy_drop:
            v.verdict = f"rejected: accuracy drop {v.accuracy_drop:.4f} > budget {max_accuracy_drop}"
        elif v.p50_ms * min_speedup > base.p50_ms:
            v.verdict = f"rejected: not faster than fp32 by {min_speedup}× ({v.speedup}×)"
        else:
            v.eligible, v.verdict = True, "eligible"
    chosen = min((v for v in out if v.eligible), key=lambda v: v.p50_ms)
    chosen.verdict = "chosen" if chosen is not base else "chosen (baseline: no variant pays here)"
    report = {
        "model": str(model), "task": task, "provider": ev.provider_name(provider), "threads": threads,
        "max_accuracy_drop": max_accuracy_drop, "min_speedup": min_speedup, "runs": runs,
        "accuracy_against": base.accuracy.get("against"), "metric": base.accuracy.get("metric"),
        "chosen": chosen.name, "chosen_path": str(chosen.path),
        "variants": [v.as_dict() for v in out],
    }
    with atomic_path(workdir / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str))
    try:
        chart(report, workdir / "report.png")
        report["chart"] = str(workdir / "report.png")
    except ImportError:
        report["chart"] = None  # matplotlib is optional: the JSON is the record, the chart a convenience
    return report


def chart(report: dict[str, Any], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for v in report["variants"]:
        if v["status"] != "measured":
            continue
        colour = "tab:green" if v["name"] == report["chosen"] else ("tab:blue" if v["eligible"] else "tab:red")
        ax.scatter(v["p50_ms"], v["accuracy"]["accuracy"], s=80, color=colour, zorder=3)
        ax.annotate(v["name"], (v["p50_ms"], v["accuracy"]["accuracy"]), textcoords="offset points", xytext=(6, 4))
    base = next(v for v in report["variants"] if v["name"] == "fp32")
    floor = base["accuracy"]["accuracy"] - report["max_accuracy_drop"]
    ax.axhline(floor, color="grey", linestyle="--", linewidth=1, label=f"accuracy budget (−{report['max_accuracy_drop']})")
    ax.axvline(base["p50_ms"], color="grey", linestyle=":", linewidth=1, label="fp32 latency")
    ax.set_xlabel(f"p50 latency, batch 1, {report['provider'].replace('ExecutionProvider', '')} "
                  f"{report['threads']} thread(s) [ms]")
    ax.set_ylabel(f"accuracy ({report['metric']}, vs {report['accuracy_against']})")
    ax.set_title(f"{Path(report['model']).name}: chosen {report['chosen']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def manifest_fields(report: dict[str, Any]) -> dict[str, Any]:
    """quantization and measurements for `pack_bundle`, from a tune report."""
    chosen = next(v for v in report["variants"] if v["name"] == report["chosen"])
    quant = {"method": chosen["quantization"]}
    if chosen["name"] == "int8-static":
        quant.update(calibration=chosen["info"].get("calibration"), calibration_size=chosen["info"].get("calibration_size"))
    measurements = {
        "variant": chosen["name"],
        "accuracy": chosen["accuracy"],
        "accuracy_drop": chosen["accuracy_drop"],
        "latency": chosen["latency"],
        "speedup_vs_fp32": chosen["speedup"],
        "tuned": {"max_accuracy_drop": report["max_accuracy_drop"], "min_speedup": report["min_speedup"],
                  "candidates": {v["name"]: {"p50_ms": v["p50_ms"], "accuracy": (v["accuracy"] or {}).get("accuracy"),
                                             "verdict": v["verdict"]} for v in report["variants"]}},
    }
    return {"quantization": quant, "measurements": measurements}

"""Build every variant of a model, measure each on this hardware, and pick the fastest that keeps accuracy.

Quantization does not always pay (int8 QDQ can be slower than fp32, dynamic int8 can destroy a recognizer),
so nothing is assumed: a variant wins only if its accuracy drop stays within the budget AND it beats fp32's
measured p50 latency by at least `min_speedup`; otherwise fp32 stays. The fp32 model is always a candidate,
so the pick can never be slower than fp32 or less accurate than the budget allows.

Latency is timed in interleaved rounds (see timing.py): a variant "beats fp32" only when its slowest round
beats fp32's fastest by `min_speedup`, so a variant within the noise of fp32 is never picked, and two runs
on one machine pick the same. The report also gives each variant's file size and peak memory (measured in a
fresh process), and onnxruntime's per-operator profile of the chosen variant.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleet_protocol.signing import sha256_file

from . import evaluate as ev
from . import profiling, timing
from . import quantize as q
from .errors import UsageError
from .optimize import atomic_path, optimize
from .timing import Timing

QUANT_METHOD = {"fp32": "none", "fp32-optimized": "none", "int8-dynamic": "dynamic-int8",
                "int8-static": "static-qdq-int8", "fp16": "fp16"}


@dataclass
class Variant:
    name: str
    path: Path | None = None
    status: str = "pending"  # built, scored, measured, or failed
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    latency: list[dict[str, Any]] = field(default_factory=list)
    p50_ms: float | None = None
    spread_ms: list[float] | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    memory: dict[str, float] | None = None
    timing: timing.Timing | None = None
    speedup_range: list[float] | None = None
    accuracy_drop: float | None = None
    speedup: float | None = None
    eligible: bool = False
    verdict: str = ""

    @property
    def built(self) -> Path:
        """The variant's file, once built (every status after `pending` and `failed` has one)."""
        assert self.path is not None, f"{self.name} has no file"
        return self.path

    @property
    def timed(self) -> Timing:
        """Its latency, once `measured`."""
        assert self.timing is not None, f"{self.name} was not timed"
        return self.timing

    def as_dict(self) -> dict[str, Any]:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items() if k != "timing"}
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
    rounds: int = 5,
    variants: list[str] | None = None,
    output: str | None = None,
    memory: bool = True,
    clock: Callable[[], float] = time.perf_counter,
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
            v.sha256 = sha256_file(dest)  # lets `bundle --tune-report` recognise this file wherever it is moved
        except UsageError as exc:
            v.status, v.reason = "failed", str(exc)
        out.append(v)

    reference = workdir / "fp32.onnx"
    for v in out:
        if v.status != "built":
            continue
        say(f"scoring {v.name}")
        try:
            v.accuracy = ev.accuracy(v.built, eval_data, task=task, labels=labels or [], extra=extra or {},
                                     truth=truth, reference=None if truth is not None else reference, output=output)
            v.size_bytes = v.built.stat().st_size
            v.status = "scored"
        except UsageError as exc:
            v.status, v.reason = "failed", str(exc)

    # Latency: every variant in every round, the order rotating, so the machine's drift falls on all alike.
    sample = {k: a[:1] for k, a in eval_data.items()}
    runners: dict[str, Callable[[], object]] = {}
    for v in out:
        if v.status != "scored":
            continue
        try:
            sess = ev.session(v.built, provider, threads)
            sess.run(None, sample)
        except Exception as exc:
            v.status, v.reason = "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            continue
        runners[v.name] = functools.partial(sess.run, None, sample)
    say(f"timing {len(runners)} variants in {rounds} interleaved rounds")
    timings = timing.interleaved(runners, rounds=rounds, runs_per_round=max(1, runs // rounds), clock=clock)
    for v in out:
        if v.name in timings:
            v.timing = timings[v.name]
            v.latency = [{"provider": ev.provider_name(provider), "threads": threads, "batch": 1,
                          **v.timing.summary(), "per_item_p50_ms": round(v.timing.p50, 4)}]
            v.p50_ms = round(v.timing.p50, 4)
            v.spread_ms = v.latency[0]["spread_ms"]
            v.status = "measured"
    if memory:
        for v in out:
            if v.status == "measured":
                say(f"peak memory of {v.name}")
                v.memory = profiling.peak_memory(v.built, sample, provider=ev.provider_name(provider), threads=threads)

    base = next((v for v in out if v.name == "fp32" and v.status == "measured"), None)
    if base is None:
        raise UsageError(f"the fp32 model itself cannot be measured: {out[0].reason if out else 'no variants'}")
    for v in out:
        if v.status != "measured":
            v.verdict = f"failed: {v.reason}"
            continue
        v.accuracy_drop = round(base.accuracy["accuracy"] - v.accuracy["accuracy"], 6)
        v.speedup = round(base.timed.p50 / v.timed.p50, 3)
        lo, hi = timing.speedup_range(base.timed, v.timed)
        v.speedup_range = [round(lo, 3), round(hi, 3)]
        if v is base:
            v.eligible, v.verdict = True, "baseline"
        elif v.accuracy_drop > max_accuracy_drop:
            v.verdict = f"rejected: accuracy drop {v.accuracy_drop:.4f} > budget {max_accuracy_drop}"
        elif not timing.faster(base.timed, v.timed, min_speedup):
            v.verdict = (f"rejected: not faster than fp32 by {min_speedup}× across its spread "
                         f"({v.speedup_range[0]:.2f}–{v.speedup_range[1]:.2f}×)")
        else:
            v.eligible, v.verdict = True, "eligible"
    chosen = pick([v for v in out if v.eligible])
    chosen.verdict = "chosen" if chosen is not base else "chosen (baseline: no variant pays here)"
    say(f"profiling {chosen.name}")
    profile = profiling.operator_profile(chosen.built, sample, provider=ev.provider_name(provider), threads=threads,
                                         runs=max(10, min(runs, 50)), keep=workdir / "profile.json")
    report = {
        "model": str(model), "task": task, "provider": ev.provider_name(provider), "threads": threads,
        "max_accuracy_drop": max_accuracy_drop, "min_speedup": min_speedup, "runs": runs, "rounds": rounds,
        "accuracy_against": base.accuracy.get("against"), "metric": base.accuracy.get("metric"),
        "output": base.accuracy.get("output"),
        "chosen": chosen.name, "chosen_path": str(chosen.path),
        "variants": [v.as_dict() for v in out],
        "profile": {"variant": chosen.name, "runs": max(10, min(runs, 50)), "trace": str(workdir / "profile.json"),
                    "ops": profile},
    }
    with atomic_path(workdir / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str))
    try:
        chart(report, workdir / "report.png")
        report["chart"] = str(workdir / "report.png")
    except ImportError:
        report["chart"] = None  # matplotlib is optional: the JSON is the record, the chart a convenience
    return report


# When several variants pay, the fastest wins only if it is faster beyond the noise; among variants whose
# spreads overlap, the one that changes the model least is taken (so two runs of tune agree).
PREFERENCE = ["fp32", "fp32-optimized", "fp16", "int8-static", "int8-dynamic"]


def pick(eligible: list[Variant]) -> Variant:
    contenders = [v for v in eligible if not any(timing.faster(v.timed, w.timed) for w in eligible if w is not v)]
    rank = {n: i for i, n in enumerate(PREFERENCE)}
    return min(contenders or eligible, key=lambda v: (rank.get(v.name, len(rank)), v.p50_ms))


def chart(report: dict[str, Any], dest: Path) -> None:
    """One row per variant, two panels side by side: latency (p50 and the spread of round medians) against the
    speed threshold, and accuracy against the budget. Rows never overlap however close two variants are, names
    sit on the axis rather than beside points, the chosen variant is a green star on a highlighted row, and a
    legend says what colours and lines mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    measured = [v for v in report["variants"] if v["status"] == "measured"]
    failed = [v for v in report["variants"] if v["status"] != "measured"]
    base = next(v for v in measured if v["name"] == "fp32")
    colours = {"chosen": "tab:green", "eligible": "tab:blue", "baseline": "dimgrey", "rejected": "tab:red"}

    def state(v) -> str:
        if v["name"] == report["chosen"]:
            return "chosen"
        return "baseline" if v["name"] == "fp32" else ("eligible" if v["eligible"] else "rejected")

    rows = list(reversed(measured))  # fp32 on top
    height = 1.2 + 0.55 * (len(rows) + (1 if failed else 0))
    fig, (lat, acc) = plt.subplots(1, 2, figsize=(10, max(2.8, height)), dpi=110, sharey=True,
                                   gridspec_kw={"width_ratios": [1.25, 1]})
    for y, v in enumerate(rows):
        st, colour = state(v), colours[state(v)]
        lo, hi = v["spread_ms"]
        big = st == "chosen"
        for ax in (lat, acc):
            if big:
                ax.axhspan(y - 0.42, y + 0.42, color="tab:green", alpha=0.12, zorder=0)
        lat.errorbar(v["p50_ms"], y, xerr=[[v["p50_ms"] - lo], [hi - v["p50_ms"]]], fmt="*" if big else "o",
                     color=colour, markersize=16 if big else 8, capsize=4, elinewidth=1.6, zorder=3,
                     markeredgecolor="black" if big else colour)
        lat.annotate(f"{v['speedup']:.2f}×", (hi, y), textcoords="offset points", xytext=(9, -3), fontsize=8,
                     color=colour, annotation_clip=False)
        a = v["accuracy"]["accuracy"]
        acc.plot([a], [y], marker="*" if big else "o", color=colour, markersize=16 if big else 8, zorder=3,
                 markeredgecolor="black" if big else colour, linestyle="none")
        acc.annotate(f"{a:.4f}", (a, y), textcoords="offset points", xytext=(8, -3), fontsize=8, color=colour,
                     annotation_clip=False)
    threshold = base["spread_ms"][0] / report["min_speedup"]
    lat.axvline(threshold, color="black", linestyle=":", linewidth=1)
    floor = base["accuracy"]["accuracy"] - report["max_accuracy_drop"]
    acc.axvline(floor, color="black", linestyle="--", linewidth=1)
    labels = [f"{v['name']}" + ("  ◀ chosen" if state(v) == "chosen" else "") for v in rows]
    lat.set_yticks(range(len(rows)), labels)
    for tick, v in zip(lat.get_yticklabels(), rows, strict=True):
        tick.set_color(colours[state(v)])
        if state(v) == "chosen":
            tick.set_fontweight("bold")
    lat.set_ylim(-0.6, len(rows) - 0.4)
    xmin, xmax = min(v["spread_ms"][0] for v in rows + [base]), max(v["spread_ms"][1] for v in rows)
    xmin = min(xmin, threshold)
    if xmax / max(xmin, 1e-9) > 8:  # int8 at 1 ms beside dynamic int8 at 60: only a log axis shows both
        lat.set_xscale("log")
        lat.set_xlim(xmin / 1.6, xmax * 2.2)
        lat.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    else:
        lat.set_xlim(0, xmax * 1.3)
    accs = [v["accuracy"]["accuracy"] for v in rows] + [floor]
    pad = max(0.002, (max(accs) - min(accs)) * 0.15)
    acc.set_xlim(min(accs) - pad, max(accs) + 3 * pad)
    lat.set_xlabel(f"latency [ms], p50 and spread of {report['rounds']} round medians\n"
                   f"batch 1, {report['provider'].replace('ExecutionProvider', '')}, {report['threads']} thread(s)")
    acc.set_xlabel(f"accuracy ({report['metric']}, vs {report['accuracy_against']})")
    for ax in (lat, acc):
        ax.grid(axis="x", alpha=0.3)
        if ax.get_xscale() == "linear":
            ax.xaxis.set_major_locator(MaxNLocator(5))  # tick labels never run into each other
    handles = [Line2D([], [], marker="*", color=colours["chosen"], markeredgecolor="black", markersize=13, linestyle="none",
                      label=f"chosen: {report['chosen']}"),
               Line2D([], [], marker="o", color=colours["eligible"], linestyle="none", label="eligible"),
               Line2D([], [], marker="o", color=colours["baseline"], linestyle="none", label="fp32 (baseline)"),
               Line2D([], [], marker="o", color=colours["rejected"], linestyle="none", label="rejected"),
               Line2D([], [], color="black", linestyle=":", label=f"{report['min_speedup']}× faster than fp32's best round"),
               Line2D([], [], color="black", linestyle="--", label=f"accuracy budget (−{report['max_accuracy_drop']})")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.02))
    title = f"{Path(report['model']).name}: tune chose {report['chosen']}"
    if failed:
        title += f"  (failed: {', '.join(v['name'] for v in failed)})"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def manifest_fields(report: dict[str, Any]) -> dict[str, Any]:
    """quantization and measurements for `pack_bundle`, from a tune report."""
    chosen = next(v for v in report["variants"] if v["name"] == report["chosen"])
    quant = {"method": chosen["quantization"]}
    if chosen["name"] == "int8-static" and chosen.get("info"):
        quant.update(calibration=chosen["info"].get("calibration"), calibration_size=chosen["info"].get("calibration_size"))
    measurements = {
        "variant": chosen["name"],
        "accuracy": chosen["accuracy"],
        "accuracy_drop": chosen["accuracy_drop"],
        "latency": chosen["latency"],
        "speedup_vs_fp32": chosen["speedup"],
        "size_bytes": chosen.get("size_bytes"),
        "memory": chosen.get("memory"),
        "tuned": {"max_accuracy_drop": report["max_accuracy_drop"], "min_speedup": report["min_speedup"],
                  "candidates": {v["name"]: {"p50_ms": v["p50_ms"], "spread_ms": v.get("spread_ms"),
                                             "accuracy": (v["accuracy"] or {}).get("accuracy"),
                                             "verdict": v["verdict"]} for v in report["variants"]}},
    }
    if report.get("profile"):
        measurements["profile"] = report["profile"]["ops"][:5]
    return {"quantization": quant, "measurements": measurements}

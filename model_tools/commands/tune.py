"""`model-tools tune`: build fp32 / optimized / int8 / fp16 variants, measure them here, pick, and bundle the pick."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .. import calibration
from .. import tune as tuning
from ..errors import UsageError
from ..optimize import load_model
from .evaluate import add_data_arguments, context


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="pick the fastest variant within an accuracy budget, on this hardware",
                       description="Builds fp32, optimized fp32, dynamic int8, static int8 (and fp16 when a GPU "
                       "provider exists), measures each, and picks the fastest whose accuracy drop stays within "
                       "--max-accuracy-drop and that beats fp32 by --min-speedup. Writes report.json and report.png.")
    p.add_argument("model", type=Path, nargs="?", help="the fp32 .onnx (default: the --zoo entry's model)")
    add_data_arguments(p)
    p.add_argument("--calibration", type=Path, help="static int8 calibration: .npz or image folder "
                   "(default: the zoo's calibration set, else the first samples of --data)")
    p.add_argument("--calibration-size", type=int, default=64, help="calibration samples (default: 64)")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    p.add_argument("--max-accuracy-drop", type=float, default=0.01, help="absolute, in the metric's units (default: 0.01)")
    p.add_argument("--min-speedup", type=float, default=1.05, help="a variant must beat fp32 by this factor (default: 1.05)")
    p.add_argument("--provider", default="cpu", help="execution provider to measure on (default: cpu)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per variant (default: 50)")
    p.add_argument("--out", type=Path, default=Path("tune-out"), help="folder for the variants and the report")
    b = p.add_argument_group("bundle the chosen variant")
    b.add_argument("--bundle", action="store_true", help="pack the chosen variant as a signed bundle")
    b.add_argument("--name", help="bundle model name")
    b.add_argument("--version", help="bundle semantic version")
    b.add_argument("--key", type=Path, help="ed25519 private key (PEM)")
    b.add_argument("--golden", type=Path, help=".npz of golden inputs (default: the zoo's)")
    b.add_argument("--hardware-class", default="generic", help="hardware class of this variant (default: generic)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if args.bundle and not (args.name and args.version and args.key):
        raise UsageError("--bundle needs --name, --version and --key")
    if args.model is None and not args.zoo:
        raise UsageError("give a MODEL or --zoo NAME")
    if args.model is None:
        from ..zoo.base import prepare

        args.model = prepare(args.zoo).onnx
    ctx = context(args, args.model)
    zoo = ctx["zoo"]
    model = load_model(args.model)
    calib_src = args.calibration or (zoo.data.get("calibration") if zoo else None)
    if calib_src:
        calib = calibration.load(calib_src, model, preprocessing=zoo.preprocessing if zoo else None,
                                 limit=args.calibration_size)
    else:
        calib = {k: v[:args.calibration_size] for k, v in ctx["data"].items()}
        calib_src = ctx["data_path"]
    with console.status("tuning …") as status:
        report = tuning.tune(
            args.model, task=ctx["task"], workdir=args.out, eval_data=ctx["data"], truth=ctx["truth"],
            labels=ctx["labels"], extra=ctx["extra"], calibration=calib, calibration_name=str(calib_src),
            calibration_method=args.method, max_accuracy_drop=args.max_accuracy_drop, min_speedup=args.min_speedup,
            provider=args.provider, threads=args.threads, runs=args.runs,
            progress=lambda msg: status.update(f"tuning: {msg} …"))
    if args.bundle:
        from ..pack import pack_bundle

        golden = args.golden or (zoo.golden_inputs if zoo else None)
        if golden is None:
            raise UsageError("--bundle needs --golden (or --zoo)")
        try:
            key = args.key.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read key {args.key}: {exc.strerror}") from None
        fields = tuning.manifest_fields(report)
        path, _ = pack_bundle(
            Path(report["chosen_path"]), name=args.name, version=args.version, golden_inputs=golden,
            private_key_pem=key, out_dir=args.out, task=ctx["task"], labels=ctx["labels"],
            preprocessing=zoo.preprocessing if zoo else None, hardware_class=args.hardware_class,
            extra=ctx["extra"] or None, **fields,
            tolerance=(1e-3, 1e-2) if fields["quantization"]["method"] != "none" else (1e-4, 1e-3))
        report["bundle"] = str(path)
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    out = Console()
    table = Table("variant", "p50 ms", "speedup", report["metric"], "drop", "verdict",
                  title=f"{Path(report['model']).name} on {report['provider'].replace('ExecutionProvider', '')}, "
                  f"{report['threads']} thread(s), budget {report['max_accuracy_drop']}")
    for v in report["variants"]:
        acc = v["accuracy"].get("accuracy") if v["accuracy"] else None
        table.add_row(v["name"], f"{v['p50_ms']:.3f}" if v["p50_ms"] else "-", f"{v['speedup']}×" if v["speedup"] else "-",
                      f"{acc:.4f}" if acc is not None else "-",
                      f"{v['accuracy_drop']:+.4f}" if v["accuracy_drop"] is not None else "-", v["verdict"],
                      style="bold green" if v["name"] == report["chosen"] else None)
    out.print(table)
    out.print(f"chosen: [bold]{report['chosen']}[/bold] → {report['chosen_path']}; report {Path(args.out) / 'report.json'}"
              + (f", chart {report['chart']}" if report.get("chart") else ""))
    if report.get("bundle"):
        out.print(f"bundle: {report['bundle']}")
    return 0

"""`model-tools tune`: build fp32 / optimized / int8 / fp16 variants, measure them here, pick, and bundle the pick."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .. import calibration
from .. import tune as tuning
from ..errors import UsageError
from ..optimize import load_model
from .arguments import positive_int
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
    p.add_argument("--runs", type=positive_int, default=50, help="timed runs per variant, over all rounds (default: 50)")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved timing rounds; a variant must beat fp32 in "
                   "every one (default: 5)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory measurement (one short child process per variant)")
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
    key = golden = None
    if args.bundle:  # checked before anything is built, so a bad flag writes nothing
        from fleet_protocol.manifest import NAME, SEMVER

        if not NAME.match(args.name):
            raise UsageError(f"--name {args.name!r}: lower-case letters, digits, '.', '_' or '-' (max 128)")
        if not SEMVER.match(args.version):
            raise UsageError(f"--version {args.version!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        golden = args.golden or (zoo.golden_inputs if zoo else None)
        if golden is None:
            raise UsageError("--bundle needs --golden (or --zoo)")
        if not Path(golden).is_file():
            raise UsageError(f"{golden}: no such file")
        try:
            key = args.key.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read key {args.key}: {exc.strerror}") from None
    calib_src = args.calibration or (zoo.data.get("calibration") if zoo else None)
    if calib_src:
        # The same preprocessing as evaluation and `quantize --preprocessing`: an image folder without it would
        # calibrate on pixels the model never sees.
        calib = calibration.load(calib_src, model, preprocessing=ctx["preprocessing"], limit=args.calibration_size)
    else:
        calib = {k: v[:args.calibration_size] for k, v in ctx["data"].items()}
        calib_src = ctx["data_path"]
    with console.status("tuning …") as status:
        report = tuning.tune(
            args.model, task=ctx["task"], workdir=args.out, eval_data=ctx["data"], truth=ctx["truth"],
            labels=ctx["labels"], extra=ctx["extra"], calibration=calib, calibration_name=str(calib_src),
            calibration_method=args.method, max_accuracy_drop=args.max_accuracy_drop, min_speedup=args.min_speedup,
            provider=args.provider, threads=args.threads, runs=args.runs, rounds=args.rounds, output=args.output,
            memory=args.memory, progress=lambda msg: status.update(f"tuning: {msg} …"))
    if args.bundle:
        from ..pack import pack_bundle

        assert golden is not None and key is not None  # both read above when --bundle

        fields = tuning.manifest_fields(report)
        path, _ = pack_bundle(
            Path(report["chosen_path"]), name=args.name, version=args.version, golden_inputs=golden,
            private_key_pem=key, out_dir=args.out, task=ctx["task"], labels=ctx["labels"],
            preprocessing=ctx["preprocessing"], hardware_class=args.hardware_class,
            extra=ctx["extra"] or None, **fields,
            tolerance=(1e-3, 1e-2) if fields["quantization"]["method"] != "none" else (1e-4, 1e-3))
        report["bundle"] = str(path)
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    print_report(report, Path(args.out))
    return 0


def print_report(report: dict, out_dir: Path) -> None:
    # Piped into a file or a log, rich would wrap the table at 80 columns.
    out = Console(width=None if sys.stdout.isatty() else 150)
    table = Table("variant", "MB", "peak MB", "p50 ms", "spread ms", "speedup", report["metric"], "drop", "verdict",
                  title=f"{Path(report['model']).name} on {report['provider'].replace('ExecutionProvider', '')}, "
                  f"{report['threads']} thread(s), {report['rounds']} interleaved rounds, "
                  f"budget {report['max_accuracy_drop']}, min speedup {report['min_speedup']}×")
    for v in report["variants"]:
        acc = v["accuracy"].get("accuracy") if v["accuracy"] else None
        mem = (v.get("memory") or {}).get("model_mb")
        table.add_row(v["name"], f"{v['size_bytes'] / 1e6:.3g}" if v.get("size_bytes") else "-",
                      f"{mem:.1f}" if mem is not None else "-",
                      f"{v['p50_ms']:.3f}" if v["p50_ms"] else "-",
                      f"{v['spread_ms'][0]:.3f}–{v['spread_ms'][1]:.3f}" if v.get("spread_ms") else "-",
                      f"{v['speedup']}×" if v["speedup"] else "-", f"{acc:.4f}" if acc is not None else "-",
                      f"{v['accuracy_drop']:+.4f}" if v["accuracy_drop"] is not None else "-",
                      v["verdict"].split(":")[0].split(" (")[0],
                      style="bold green" if v["name"] == report["chosen"] else None)
    out.print(table)
    for v in report["variants"]:
        if ":" in v["verdict"]:
            out.print(f"  {v['name']}: {v['verdict']}")
    prof = report.get("profile") or {}
    if prof.get("ops"):
        ops = Table("op", "nodes", "ms / run", "share", title=f"where {prof['variant']}'s time goes "
                    f"(onnxruntime profiler, {prof['runs']} runs; trace {prof['trace']})")
        for row in prof["ops"]:
            ops.add_row(row["op"], str(row["nodes"]), f"{row['ms_per_run']:.4f}", f"{row['share']:.0%}")
        out.print(ops)
    out.print(f"chosen: [bold]{report['chosen']}[/bold] → {report['chosen_path']}; report {out_dir / 'report.json'}"
              + (f", chart {report['chart']}" if report.get("chart") else ""))
    if report.get("bundle"):
        out.print(f"bundle: {report['bundle']}")

"""`model-tools quantize`: dynamic int8, static int8 QDQ with a calibration set, or fp16."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import calibration, quantize
from ..errors import UsageError
from ..optimize import load_model
from .arguments import json_object

MODES = {"dynamic": "dynamic-int8", "static": "static-qdq-int8", "fp16": "fp16"}


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="int8 (dynamic or static QDQ) or fp16 variant of an ONNX model",
                       description=f"Writes a new ONNX file. Models below opset {quantize.PORTABLE_OPSET} are raised to "
                       f"{quantize.PORTABLE_OPSET} first (per-channel QDQ needs 13, onnxruntime's fusions emit ops "
                       "standard from 17); symbolic shapes are handled. Whether the result is faster is for `evaluate`/`tune` to say.")
    p.add_argument("model", type=Path, help="input .onnx")
    p.add_argument("--mode", choices=list(MODES), default="static", help="dynamic int8, static int8 QDQ (default) or fp16")
    p.add_argument("-o", "--out", type=Path, help="output .onnx (default: MODEL.MODE.onnx)")
    p.add_argument("--calibration", type=Path, help="static: .npz keyed by input name, or a folder of images")
    p.add_argument("--preprocessing", type=json_object, help='static with images: JSON, e.g. {"size":[128,128],"scale":0.0078,"mean":[1,1,1]}')
    p.add_argument("--limit", type=int, default=128, help="at most this many calibration samples (default: 128)")
    p.add_argument("--method", choices=list(quantize.METHODS), default="minmax", help="calibration method (default: minmax)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None,
                   help="per-channel weight scales (default: on for static, off for dynamic)")
    p.add_argument("--exclude", action="append", default=[], metavar="NODE", help="node name to keep in float (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = args.out or args.model.with_suffix(f".{args.mode}.onnx")
    console = Console(stderr=True)
    if args.mode == "dynamic":
        with console.status("dynamic int8 …"):
            info = quantize.dynamic_int8(args.model, out, per_channel=bool(args.per_channel), exclude=args.exclude)
    elif args.mode == "fp16":
        with console.status("fp16 …"):
            info = quantize.fp16(args.model, out, exclude=args.exclude)
    else:
        if not args.calibration:
            raise UsageError("static quantization needs --calibration (.npz or a folder of images)")
        data = calibration.load(args.calibration, load_model(args.model), preprocessing=args.preprocessing, limit=args.limit)
        n = len(next(iter(data.values())))
        with Progress(TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("calibrate", total=n)
            info = quantize.static_int8(args.model, out, data, method=args.method,
                                        per_channel=True if args.per_channel is None else args.per_channel,
                                        exclude=args.exclude, calibration_name=str(args.calibration),
                                        progress=lambda: bar.advance(task))
    if args.json:
        print(json.dumps(info))
    else:
        console.print(f"{out} ({info['method']})")
    return 0

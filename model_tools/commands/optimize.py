"""`model-tools optimize`: onnxruntime's offline graph optimization and shape inference, as a new ONNX file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from ..optimize import LEVELS, optimize


def add_parser(sub) -> None:
    p = sub.add_parser("optimize", help="offline graph optimization (onnxruntime) into a new ONNX file",
                       description="Fuse and fold the graph once, offline, and run shape inference. "
                       "'extended' (default) stays portable across execution providers; 'all' adds CPU-only layouts.")
    p.add_argument("model", type=Path, help="input .onnx")
    p.add_argument("-o", "--out", type=Path, help="output .onnx (default: MODEL.opt.onnx)")
    p.add_argument("--level", choices=list(LEVELS), default="extended", help="optimization level (default: extended)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = args.out or args.model.with_suffix(".opt.onnx")
    console = Console(stderr=True)
    with console.status(f"optimizing {args.model} …"):
        info = optimize(args.model, out, level=args.level)
    if args.json:
        print(json.dumps(info))
    else:
        console.print(f"{out}: {info['nodes_before']} → {info['nodes_after']} nodes ({args.level})")
    return 0

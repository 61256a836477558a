"""`model-tools export`: PyTorch module / TorchScript file or scikit-learn estimator → checked ONNX."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console

from .. import export
from ..errors import UsageError


def shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace("x", ",").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,3,224,224, got {text!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="PyTorch / TorchScript / scikit-learn → ONNX, checked against the source",
                       description="Torch: dynamo exporter first, the legacy exporter as fallback, dynamic batch axis. "
                       "scikit-learn: skl2onnx. The result passes onnx.checker and matches the source framework's "
                       "outputs on sample inputs, or nothing is written. Needs the `export` extra.")
    p.add_argument("source", help="TorchScript file, 'package.module:factory' returning an nn.Module, or a pickled "
                   "scikit-learn estimator (with --sklearn)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output .onnx")
    p.add_argument("--sklearn", action="store_true", help="the source is a pickled scikit-learn estimator")
    p.add_argument("--input-shape", type=shape, help="torch: sample input shape, e.g. 1,3,224,224")
    p.add_argument("--sample", type=Path, help="an .npz whose first array is the sample input (instead of random)")
    p.add_argument("--n-features", type=int, help="scikit-learn: number of input features (default: from the estimator)")
    p.add_argument("--opset", type=int, default=export.DEFAULT_OPSET, help=f"default {export.DEFAULT_OPSET}")
    p.add_argument("--input-name", default="input")
    p.add_argument("--output-name", default="output")
    p.add_argument("--static-batch", action="store_true", help="keep the batch axis fixed")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    sample = None
    if args.sample:
        try:
            with np.load(args.sample, allow_pickle=False) as z:
                sample = z[z.files[0]]
        except (OSError, ValueError, IndexError) as exc:
            raise UsageError(f"{args.sample}: not a readable .npz with an array ({exc})") from None
    with console.status(f"exporting {args.source} …"):
        if args.sklearn:
            info = export.export_sklearn(Path(args.source), args.out, n_features=args.n_features, sample=sample,
                                         opset=args.opset)
        else:
            if sample is None:
                if not args.input_shape:
                    raise UsageError("torch export needs --input-shape or --sample")
                sample = np.random.default_rng(0).normal(size=args.input_shape).astype(np.float32)
            module = export.load_torch(args.source)
            info = export.export_torch(module, sample, args.out, opset=args.opset, input_name=args.input_name,
                                       output_name=args.output_name, dynamic_batch=not args.static_batch)
    if args.json:
        print(json.dumps(info))
    else:
        console.print(f"{args.out} ({info['exporter']}, opset {info['opset']}, max |diff| {info['max_abs_diff']:.2e})")
    return 0

"""`model-tools export`: PyTorch module / TorchScript file or scikit-learn estimator → checked ONNX."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console

from .. import export
from ..errors import UsageError

DTYPES = ["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]


def shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(t) for t in text.replace("x", ",").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,3,224,224, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive dimensions like 1,3,224,224, got {text!r}")
    return dims


def names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="PyTorch / TorchScript / scikit-learn → ONNX, checked against the source",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Torch: dynamo exporter first, the legacy exporter as fallback. The result passes onnx.checker, "
        "its input dims are the declared ones (a name on every dynamic axis, the sample's size elsewhere) and its "
        "outputs match torch's on the sample and, when an axis is dynamic, on a second shape; otherwise nothing is "
        "written. scikit-learn: skl2onnx, outputs `label` and `probabilities`. Needs the `export` extra.\n\n"
        "examples:\n"
        "  model-tools export net:Net --input-shape 1,3,224,224 -o net.onnx                  # dynamic batch\n"
        "  model-tools export fcn:Net --input-shape 1,3,64,64 --dynamic batch,height,width -o fcn.onnx\n"
        "  model-tools export lm:Net --sample tokens.npz --dynamic batch,sequence -o lm.onnx  # int64 ids + bool mask\n"
        "  model-tools export lm:Net --input-shape 2,16 --dtype int64 --dynamic tokens:batch,sequence "
        "--input-name tokens -o lm.onnx")
    p.add_argument("source", help="TorchScript file, 'package.module:factory' returning an nn.Module (looked up from "
                   "the working folder too), or a pickled scikit-learn estimator (with --sklearn)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output .onnx")
    p.add_argument("--sklearn", action="store_true", help="the source is a pickled scikit-learn estimator")
    p.add_argument("--input-shape", type=shape, action="append", default=[], metavar="SHAPE",
                   help="torch: shape of a random sample input, e.g. 1,3,224,224; repeat for each input")
    p.add_argument("--dtype", choices=DTYPES, action="append", default=[],
                   help="dtype of the random sample of each --input-shape (default float32; integers are drawn "
                   "from 0..1 so any embedding accepts them, give --sample for real token ids)")
    p.add_argument("--sample", type=Path, help=".npz of sample inputs, one array per model input in call order, dtypes "
                   "kept; its keys name the inputs (unless --input-name); scikit-learn: the first array")
    p.add_argument("--dynamic", action="append", default=[], metavar="[INPUT:]NAME[=AXIS],…",
                   help="dynamic axes by name: batch, sequence, height, width (well-known) or NAME=AXIS; "
                   "'INPUT:' limits them to one input; repeatable; 'none' for all fixed (default: batch)")
    p.add_argument("--n-features", type=int, help="scikit-learn: number of input features (default: from the estimator)")
    p.add_argument("--opset", type=int, default=export.DEFAULT_OPSET,
                   help=f"opset to ask for (default {export.DEFAULT_OPSET}); the report says the file's own")
    p.add_argument("--input-name", type=names, help="comma-separated input names in call order (default: the "
                   ".npz keys, else input / input_0, input_1 …)")
    p.add_argument("--output-name", type=names, help="comma-separated output names (default: output / output_0 …)")
    p.add_argument("--static-batch", action="store_true", help="keep the batch axis fixed (same as --dynamic none)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _samples(args: argparse.Namespace) -> dict[str, np.ndarray]:
    if args.sample:
        try:
            with np.load(args.sample, allow_pickle=False) as z:
                arrays = [(k, z[k]) for k in z.files]
        except (OSError, ValueError, EOFError) as exc:
            raise UsageError(f"{args.sample}: not a readable .npz file ({exc})") from None
        if not arrays:
            raise UsageError(f"{args.sample}: holds no arrays")
        keys = [k for k, _ in arrays]
        if args.input_name:
            if len(args.input_name) != len(arrays):
                raise UsageError(f"--input-name gives {len(args.input_name)} name(s), {args.sample} has {len(arrays)} arrays")
            keys = args.input_name
        elif all(k.startswith("arr_") for k in keys):  # np.savez(f, a, b): positional, unnamed
            keys = ["input"] if len(keys) == 1 else [f"input_{i}" for i in range(len(keys))]
        return {k: a for k, (_, a) in zip(keys, arrays, strict=True)}
    if not args.input_shape:
        raise UsageError("torch export needs --input-shape or --sample")
    n = len(args.input_shape)
    if len(args.dtype) not in (0, 1, n):
        raise UsageError(f"--dtype given {len(args.dtype)} times for {n} --input-shape")
    dtypes = args.dtype * n if len(args.dtype) == 1 else (args.dtype or ["float32"] * n)
    keys = args.input_name or (["input"] if n == 1 else [f"input_{i}" for i in range(n)])
    if len(keys) != n:
        raise UsageError(f"--input-name gives {len(keys)} name(s) for {n} --input-shape")
    rng = np.random.default_rng(0)
    out = {}
    for key, dims, dtype in zip(keys, args.input_shape, dtypes, strict=True):
        if dtype == "bool":
            out[key] = rng.integers(0, 2, size=dims).astype(bool)
        elif np.issubdtype(np.dtype(dtype), np.integer):
            out[key] = rng.integers(0, 2, size=dims).astype(dtype)
        else:
            out[key] = rng.normal(size=dims).astype(dtype)
    return out


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if args.sklearn:
        sample = None
        if args.sample:
            sample = next(iter(_samples(args).values()))
        with console.status(f"exporting {args.source} …"):
            info = export.export_sklearn(Path(args.source), args.out, n_features=args.n_features, sample=sample,
                                         opset=args.opset)
    else:
        samples = _samples(args)
        dynamic = export.parse_dynamic(args.dynamic, samples, default_batch=not args.static_batch)
        module = export.load_torch(args.source)
        with console.status(f"exporting {args.source} …"):
            info = export.export_torch(module, samples, args.out, opset=args.opset, dynamic=dynamic,
                                       output_names=args.output_name)
    if args.json:
        print(json.dumps(info))
    else:
        ins = ", ".join(f"{i['name']} {i['dtype']}{i['shape']}" for i in info["inputs"])
        console.print(f"{args.out} ({info['exporter']}, opset {info['opset']}, inputs {ins}, "
                      f"max |diff| {info['max_abs_diff']:.2e})")
    return 0

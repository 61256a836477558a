"""`model-tools evaluate`: accuracy of a variant (against labels or the fp32 model) and its latency per provider."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .. import calibration
from .. import evaluate as ev
from ..errors import UsageError
from ..optimize import load_model
from .arguments import json_object

TASKS = ["classification", "detection", "ocr-recognition", "ocr-detection", "ocr-orientation", "other"]


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zoo", metavar="NAME", help="take task, labels, decoder settings and data from a zoo entry")
    p.add_argument("--data", type=Path, help=".npz with the inputs (keyed by input name or 'x') and labels "
                   "('y' class ids, 'text' strings, 'boxes' N×K×4 in [0,1], NaN-padded), or a folder of images")
    p.add_argument("--task", choices=TASKS, help="how outputs are scored (default: from --zoo, else other)")
    p.add_argument("--labels", type=Path, help="class names / characters, one per line")
    p.add_argument("--preprocessing", type=json_object, help="JSON preprocessing for an image folder")
    p.add_argument("--limit", type=int, help="use at most this many samples")
    p.add_argument("--output", metavar="NAME", help="the output to score (default: by task; a classifier's "
                   "probabilities, e.g. skl2onnx's output_probability rather than its label)")


def context(args: argparse.Namespace, model_path: Path) -> dict[str, Any]:
    """Data, labels and task settings for scoring, from --zoo and/or the explicit flags."""
    task, labels, extra, pre, data_path, zoo = "other", [], {}, None, None, None
    if args.zoo:
        from ..zoo.base import prepare

        zoo = prepare(args.zoo)
        task, labels, extra, pre = zoo.task, zoo.labels, zoo.extra, zoo.preprocessing
        data_path = zoo.data.get("eval") or zoo.data.get("test")
    task = args.task or task
    data_path = args.data or data_path
    if data_path is None:
        raise UsageError("no evaluation data: give --data or --zoo")
    if args.labels:
        try:
            labels = [ln.rstrip("\n") for ln in args.labels.read_text().splitlines()]
        except OSError as exc:
            raise UsageError(f"cannot read labels {args.labels}: {exc.strerror}") from None
    if args.preprocessing:
        pre = args.preprocessing
    model = load_model(model_path)
    data = calibration.load(data_path, model, preprocessing=pre, limit=args.limit)
    truth = None
    if Path(data_path).is_file():
        with np.load(data_path, allow_pickle=False) as z:
            truth = ev.labels_of(task, {k: z[k] for k in z.files})
        if truth is not None and args.limit:
            truth = truth[:args.limit]
    return {"task": task, "labels": labels, "extra": extra, "data": data, "truth": truth, "data_path": data_path,
            "zoo": zoo, "preprocessing": pre}


def ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy and latency (p50/p95/p99) of a model variant",
                       description="Accuracy against the labels in the data, or against --reference (the fp32 "
                       "model) when there are none; latency per execution provider × threads × batch.")
    p.add_argument("model", type=Path, help="the .onnx variant to measure")
    add_data_arguments(p)
    p.add_argument("--reference", type=Path, help="fp32 model whose decoded outputs are the truth when data has no labels")
    p.add_argument("--providers", default="cpu", help="comma-separated: cpu, cuda, tensorrt, openvino … (default: cpu)")
    p.add_argument("--threads", type=ints, default=[1], help="intra-op thread counts, e.g. 1,2 (default: 1)")
    p.add_argument("--batch", type=ints, default=[1, 8], help="batch sizes, e.g. 1,8 (default: 1,8)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per setting (default: 50)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    ctx = context(args, args.model)
    with console.status("evaluating …") as status:
        report = ev.evaluate(args.model, ctx["data"], task=ctx["task"], labels=ctx["labels"], extra=ctx["extra"],
                             truth=ctx["truth"], reference=args.reference,
                             providers=[p.strip() for p in args.providers.split(",") if p.strip()],
                             threads=args.threads, batches=args.batch, runs=args.runs, output=args.output,
                             progress=lambda msg: status.update(f"evaluating: {msg} …"))
    if args.json:
        print(json.dumps(report))
        return 0
    acc = report["accuracy"]
    out = Console()
    out.print(f"[bold]{args.model}[/bold]  {acc['metric']} = {acc['accuracy']:.4f} against {acc['against']} "
              f"({acc['samples']} samples" + (f", output {acc['output']}" if acc.get("output") else "") + ")")
    table = Table("provider", "threads", "batch", "p50 ms", "p95 ms", "p99 ms", "per item ms")
    for r in report["latency"]:
        table.add_row(r["provider"].replace("ExecutionProvider", ""), str(r["threads"]), str(r["batch"]),
                      f"{r['p50_ms']:.3f}", f"{r['p95_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['per_item_p50_ms']:.3f}")
    out.print(table)
    return 0

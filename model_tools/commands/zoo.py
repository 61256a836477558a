"""`model-tools zoo NAME`: prepare a real model that can be had offline, cached under the user's cache folder."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from ..zoo.base import ENTRIES, prepare


def add_parser(sub) -> None:
    p = sub.add_parser("zoo", help="prepare an offline pretrained model as ONNX",
                       description=f"Prepare one of: {', '.join(sorted(ENTRIES))}. Cached; --refresh rebuilds.")
    p.add_argument("name", choices=sorted(ENTRIES), metavar="NAME", help=", ".join(sorted(ENTRIES)))
    p.add_argument("--cache-dir", type=Path, help="cache folder (default: EDGEFLEET_TOOLS_CACHE_DIR or ~/.cache/edgefleet)")
    p.add_argument("--refresh", action="store_true", help="rebuild even when cached")
    p.add_argument("--json", action="store_true", help="print the prepared entry as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    with console.status(f"preparing {args.name} …"):
        model = prepare(args.name, cache_dir=args.cache_dir, refresh=args.refresh)
    info = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(model).items()}
    info["data"] = {k: str(v) for k, v in model.data.items()}
    if args.json:
        print(json.dumps(info))
    else:
        console.print(f"[bold]{model.name}[/bold] ({model.task}) → {model.onnx}")
    return 0

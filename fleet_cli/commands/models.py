"""`edgefleet models ...`: the model registry (signed bundles)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from .. import output
from ..exit_codes import ExitCode
from ..state import CliError, JsonOpt, api, wants_json

app = typer.Typer(help="Models: upload signed bundles, list them, show one.", no_args_is_help=True)

PROGRESS_FROM_BYTES = 1 << 20  # smaller bundles go up faster than a bar could be drawn


def _row(m: dict) -> tuple:
    return (m["name"], m["version"], m.get("hardware_class"), m.get("task"), m.get("quantization") or "fp32",
            output.size(m.get("size")), m["sha256"][:12], output.ago(m.get("created_at")))


COLUMNS = ["model", "version", "hardware", "task", "quantization", "size", "sha256", "uploaded"]


@app.command()
def upload(ctx: typer.Context,
           bundles: Annotated[list[Path], typer.Argument(help="bundle file(s) made by 'model-tools bundle'")],
           progress: Annotated[bool | None, typer.Option("--progress/--no-progress",
                                                            help="progress bar (default: on a terminal, for bundles over 1 MiB)")] = None,
           json: JsonOpt = False) -> None:
    """Upload signed bundles. The same bytes again is fine (200); the same name and version with other bytes is refused (409)."""
    for path in bundles:
        if not path.is_file():
            raise CliError(f"{path}: no such file")
    client = api(ctx)
    results = []
    for path in bundles:
        size = os.path.getsize(path)
        show = progress if progress is not None else (output.err.is_terminal and size >= PROGRESS_FROM_BYTES)
        if show:
            with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          TimeRemainingColumn(), console=output.err, transient=True) as bar:
                task = bar.add_task(f"uploading {path.name}", total=size)
                view, created = client.upload_model(path, functools.partial(bar.advance, task))
        else:
            view, created = client.upload_model(path)
        results.append({**view, "created": created})
        if not wants_json(ctx, json):
            verb = "uploaded" if created else "already there (same bytes)"
            output.out.print(f"{verb}: [bold]{view['name']} {view['version']}[/bold] ({view.get('hardware_class')}, "
                             f"{output.size(view.get('size'))}, sha256 {view['sha256'][:12]})")
    if wants_json(ctx, json):
        output.print_json(results if len(results) > 1 else results[0])


@app.command("list")
def list_(ctx: typer.Context, name: Annotated[str | None, typer.Argument(help="only this model")] = None,
          json: JsonOpt = False) -> None:
    """Every bundle in the registry, by model and version."""
    models = [m for m in api(ctx).list_models() if name is None or m["name"] == name]
    if wants_json(ctx, json):
        output.print_json(models)
        return
    output.table(None, COLUMNS, map(_row, models), empty="no models" + (f" named {name}" if name else ""))


@app.command()
def show(ctx: typer.Context, name: str, version: Annotated[str | None, typer.Argument()] = None, json: JsonOpt = False) -> None:
    """A model's versions (or one version: its bundles per hardware class)."""
    found = [m for m in api(ctx).list_models() if m["name"] == name and (version is None or m["version"] == version)]
    if not found:
        raise CliError(f"no model {name}" + (f" version {version}" if version else "") + " in the registry", ExitCode.NOT_FOUND)
    if wants_json(ctx, json):
        output.print_json(found)
        return
    for m in found:
        output.fields([("model", f"{m['name']} {m['version']}"), ("hardware class", m.get("hardware_class")),
                       ("task", m.get("task")), ("quantization", m.get("quantization") or "fp32"), ("size", output.size(m.get("size"))),
                       ("sha256", m["sha256"]), ("signed by", m.get("signed_by")), ("uploaded", output.ago(m.get("created_at")))])
        output.out.print()

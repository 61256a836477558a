"""`edgefleet captures ...`: samples the devices captured (low confidence, shadow disagreement) with their
provisional labels — list, show, fetch one, download a dataset, delete, the fleet's quota."""

from __future__ import annotations

import datetime as dt
import json as jsonlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from .. import output
from ..state import CliError, JsonOpt, api, wants_json
from .telemetry import TIME_FORMATS

app = typer.Typer(help="Captured samples: list, show, get one, download a dataset (ZIP), delete, quota usage.",
                  no_args_is_help=True)

Device = Annotated[str | None, typer.Option(help="only this device")]
Model = Annotated[str | None, typer.Option(help="only this model")]
Version = Annotated[str | None, typer.Option(help="only this model version")]
Reason = Annotated[str | None, typer.Option(help="low_confidence or shadow_disagrees")]
Since = Annotated[dt.datetime | None, typer.Option(help="taken at or after (UTC)", formats=TIME_FORMATS)]
Until = Annotated[dt.datetime | None, typer.Option(help="taken before (UTC)", formats=TIME_FORMATS)]
ProgressOpt = Annotated[bool | None, typer.Option("--progress/--no-progress", help="progress bar (default: on a terminal)")]


def _filters(device: str | None, model: str | None, version: str | None, reason: str | None,
             since: dt.datetime | None, until: dt.datetime | None) -> dict[str, Any]:
    return {"device": device, "model": model, "version": version, "reason": reason,
            "since": output.utc(since).isoformat() if since else None,
            "until": output.utc(until).isoformat() if until else None}


def labels(outputs: dict[str, Any]) -> str:
    """The provisional labels in a few words: 'label 7 (0.31)', '3 detections: face, face, car', the text read."""
    if "detections" in outputs and isinstance(outputs["detections"], list):
        found = outputs["detections"]
        names = ", ".join(str(d.get("label", "?")) for d in found[:3] if isinstance(d, dict))
        return f"{len(found)} detection{'s' if len(found) != 1 else ''}" + (f": {names}" if names else "") + \
            ("…" if len(found) > 3 else "")
    if "label" in outputs:
        score = outputs.get("score")
        return f"{outputs['label']}" + (f" ({score:.2f})" if isinstance(score, int | float) else "")
    if "text" in outputs:
        return repr(str(outputs["text"])[:40])
    return ", ".join(sorted(outputs))[:40] or "-"


def _confidence(c: float | None) -> str | None:
    return None if c is None else f"{c:.2f}"


@app.command("list")
def list_(ctx: typer.Context, device: Device = None, model: Model = None, version: Version = None, reason: Reason = None,
          since: Since = None, until: Until = None,
          limit: Annotated[int, typer.Option(help="samples (1-1000), newest taken first", min=1, max=1000)] = 50,
          offset: Annotated[int, typer.Option(help="skip this many (paging)", min=0)] = 0,
          json: JsonOpt = False) -> None:
    """Captured samples, newest taken first, with their provisional labels (GET /v1/captures)."""
    page = api(ctx).list_captures(**_filters(device, model, version, reason, since, until), limit=limit, offset=offset)
    if wants_json(ctx, json):
        output.print_json(page)
        return
    output.table(None, ["id", "taken", "device", "model", "version", "reason", "confidence", "labels", "type", "size"],
                 [(c["id"], output.ago(c["taken_at"]), c["device_id"], c["model"], c["version"], c["reason"],
                   _confidence(c.get("confidence")), labels(c.get("outputs") or {}),
                   "jpeg" if c["content_type"] == "image/jpeg" else "npy", output.size(c["size"]))
                  for c in page["captures"]], empty="no captured samples")
    shown = len(page["captures"])
    if shown and page["total"] > shown:
        output.out.print(f"[dim]{offset + 1}–{offset + shown} of {page['total']} (--offset to page)[/dim]")


@app.command()
def show(ctx: typer.Context, capture_id: Annotated[int, typer.Argument(min=1, help="capture id")],
         json: JsonOpt = False) -> None:
    """One sample: where and why it was taken, and the model's outputs (its provisional labels)."""
    c = api(ctx).get_capture(capture_id)
    if wants_json(ctx, json):
        output.print_json(c)
        return
    size = f"{c['width']}×{c['height']}" if c.get("width") else None
    output.fields([("capture", c["id"]), ("device", c["device_id"]), ("sample id", c["sample_id"]),
                   ("model", f"{c['model']} {c['version']}"), ("camera", c.get("camera") or "(HTTP request)"),
                   ("taken", output.ago(c["taken_at"])), ("reason", c["reason"]),
                   ("confidence", _confidence(c.get("confidence"))), ("shadow version", c.get("shadow_version")),
                   ("data", f"{c['content_type']}, {output.size(c['size'])}" + (f", {size}" if size else "")),
                   ("faces blurred", "yes" if c.get("faces_blurred") else "no"), ("sha256", c["sha256"]),
                   ("labels", labels(c.get("outputs") or {}))])
    output.out.print_json(jsonlib.dumps(c.get("outputs") or {}))


@contextmanager
def _bar(show: bool | None, what: str) -> Iterator[Callable[[int], None] | None]:
    if not (show if show is not None else output.err.is_terminal):
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=output.err, transient=True) as bar:
        task = bar.add_task(what, total=None)  # streamed: the size is known only at the end
        yield lambda n: bar.advance(task, n)


@app.command()
def get(ctx: typer.Context, capture_id: Annotated[int, typer.Argument(min=1, help="capture id")],
        out: Annotated[Path | None, typer.Option("-o", "--output", help="file to write (default: SAMPLE_ID.jpg|.npy here)")] = None,
        json: JsonOpt = False) -> None:
    """Save one sample's data (the JPEG or .npy the device sent)."""
    client = api(ctx)
    if out is None:
        c = client.get_capture(capture_id)
        out = Path(Path(c["file"]).name)  # SAMPLE_ID.jpg|.npy
    written = client.download_capture(capture_id, out)
    if wants_json(ctx, json):
        output.print_json({"id": capture_id, "file": str(out), "bytes": written})
        return
    output.out.print(f"saved capture {capture_id} to {out} ({output.size(written)})")


@app.command()
def download(ctx: typer.Context, device: Device = None, model: Model = None, version: Version = None,
             reason: Reason = None, since: Since = None, until: Until = None,
             out: Annotated[Path, typer.Option("-o", "--output", help="the ZIP to write")] = Path("dataset.zip"),
             progress: ProgressOpt = None, json: JsonOpt = False) -> None:
    """The matching samples as a dataset ZIP: data/DEVICE/SAMPLE.jpg|.npy, labels.json and labels.csv."""
    if out.is_dir():
        raise CliError(f"{out} is a folder: name the ZIP to write")
    with _bar(progress, f"downloading {out.name}") as advance:
        written = api(ctx).download_dataset(out, advance, **_filters(device, model, version, reason, since, until))
    if wants_json(ctx, json):
        output.print_json({"file": str(out), "bytes": written})
        return
    output.out.print(f"saved dataset to {out} ({output.size(written)})")


@app.command()
def delete(ctx: typer.Context,
           capture_ids: Annotated[list[int] | None, typer.Argument(min=1, help="capture ids (or use filters)")] = None,
           device: Device = None, model: Model = None, version: Version = None, reason: Reason = None,
           since: Since = None, until: Until = None,
           all_: Annotated[bool, typer.Option("--all", help="every sample of the fleet (no filter needed)")] = False,
           json: JsonOpt = False) -> None:
    """Delete samples by id, or every one the filters match (their bytes leave the quota); needs an operator token."""
    filters = _filters(device, model, version, reason, since, until)
    client = api(ctx)
    if capture_ids:
        if all_ or any(v is not None for v in filters.values()):
            raise CliError("give capture ids or filters, not both")
        deleted = [client.delete_capture(i) for i in capture_ids]
        result: dict[str, Any] = {"deleted": len(deleted), "ids": [c["id"] for c in deleted]}
    else:
        if not all_ and all(v is None for v in filters.values()):
            raise CliError("name capture ids, a filter (--device, --model, …) or --all")
        result = client.delete_captures(**filters, all="true" if all_ else None)
    if wants_json(ctx, json):
        output.print_json(result)
        return
    output.out.print(f"deleted {result['deleted']} sample{'s' if result['deleted'] != 1 else ''}")


@app.command()
def usage(ctx: typer.Context, json: JsonOpt = False) -> None:
    """What the stored samples take against the fleet's quota, per device and per model."""
    u = api(ctx).capture_usage()
    if wants_json(ctx, json):
        output.print_json(u)
        return
    share = f" ({100 * u['bytes_used'] / u['quota_bytes']:.1f} %)" if u["quota_bytes"] else ""
    output.out.print(f"{u['count']} samples, {output.size(u['bytes_used'])} of {output.size(u['quota_bytes'])}{share}")
    output.table("per device", ["device", "samples", "size"],
                 [(d["device_id"], d["count"], output.size(d["bytes"])) for d in u["devices"]], empty="none")
    output.table("per model", ["model", "samples", "size"],
                 [(m["model"], m["count"], output.size(m["bytes"])) for m in u["models"]], empty="none")

"""`edgefleet telemetry DEVICE`: a device's telemetry, rolled up per minute."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from .. import output
from ..state import JsonOpt, api, wants_json


def _num(v: float | None, digits: int = 2) -> str | None:
    return None if v is None else f"{v:.{digits}f}"


TIME_FORMATS = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"]


def telemetry(ctx: typer.Context, device_id: str,
              since: Annotated[dt.datetime | None, typer.Option(help="from this time on (UTC)", formats=TIME_FORMATS)] = None,
              until: Annotated[dt.datetime | None, typer.Option(help="up to this time (UTC)", formats=TIME_FORMATS)] = None,
              limit: Annotated[int, typer.Option(help="rows (a minute per model, and one for the device), newest first",
                                                 min=1, max=10_000)] = 30,
              model: Annotated[str | None, typer.Option(help="only this model's rows")] = None,
              json: JsonOpt = False) -> None:
    """Requests, errors, p50 / p95 / p99 latency per model, CPU and memory of the device, per minute, newest first."""
    data = api(ctx).telemetry(device_id, output.utc(since), output.utc(until), limit, model)
    if wants_json(ctx, json):
        output.print_json(data)
        return
    output.table(f"telemetry of {device_id}", ["minute", "model", "version", "provider", "requests", "errors", "p50 ms", "p95 ms", "p99 ms",
                                               "cpu %", "mem MB"],
                 [(m["minute"][:16].replace("T", " "), m.get("model") or "(device)", m.get("model_version"), m.get("provider"), m.get("requests"), m.get("errors"),
                   _num(m.get("latency_ms_p50"), 3), _num(m.get("latency_ms_p95"), 3), _num(m.get("latency_ms_p99"), 3),
                   _num(m.get("cpu_percent"), 1), _num(m.get("memory_mb_max"), 1)) for m in data.get("minutes", [])],
                 empty="no telemetry in that window")

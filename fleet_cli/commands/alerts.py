"""`edgefleet alerts list`: what fleet insight predicts or finds unusual, newest first."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import output
from ..state import JsonOpt, api, wants_json

app = typer.Typer(help="Alerts of fleet insight: disks and memory predicted to fill, latency creep, anomalies.",
                  no_args_is_help=True)


@app.command("list")
def list_(ctx: typer.Context,
          state: Annotated[str | None, typer.Option(help="pending, firing or resolved")] = None,
          all_: Annotated[bool, typer.Option("--all", help="resolved ones too (default: pending and firing)")] = False,
          device: Annotated[str | None, typer.Option(help="only this device")] = None,
          kind: Annotated[str | None, typer.Option(help="disk_full, memory_full, latency_creep, latency_anomaly, …")] = None,
          model: Annotated[str | None, typer.Option(help="only this model")] = None,
          limit: Annotated[int, typer.Option(help="alerts (1-1000)", min=1, max=1000)] = 100,
          json: JsonOpt = False) -> None:
    """Alerts, newest first: active ones unless --all or --state says otherwise (GET /v1/alerts)."""
    active = None if (all_ or state) else True
    alerts = api(ctx).list_alerts(state=state, active=active, device=device, kind=kind, model=model, limit=limit)["alerts"]
    if wants_json(ctx, json):
        output.print_json(alerts)
        return
    output.table(None, ["id", "device", "kind", "model", "state", "severity", "since", "summary"],
                 [(a["id"], a["device_id"], a["kind"], a.get("model") or None, output.state(a["state"]), a.get("severity"),
                   output.ago(a.get("fired_at") or a.get("started_at")), a.get("summary")) for a in alerts],
                 empty="no alerts" if active is None else "no active alerts")

"""`edgefleet audit`: who changed what, newest first."""

from __future__ import annotations

import json as jsonlib
from typing import Annotated

import typer

from .. import output
from ..state import JsonOpt, api, wants_json


def audit(ctx: typer.Context,
          limit: Annotated[int, typer.Option(help="entries (1-1000)", min=1, max=1000)] = 50,
          action: Annotated[str | None, typer.Option(help="action prefix, e.g. 'rollout.' or 'device.register'")] = None,
          before_id: Annotated[int | None, typer.Option(help="only entries older than this id (paging)")] = None,
          json: JsonOpt = False) -> None:
    """The audit log: every change to models, devices, tokens and rollouts, with who made it."""
    entries = api(ctx).audit(limit, action, before_id)
    if wants_json(ctx, json):
        output.print_json(entries)
        return
    output.table(None, ["id", "when", "actor", "action", "target", "detail"],
                 [(e.get("id"), output.ago(e.get("ts")), e.get("actor"), e.get("action"), e.get("target"),
                   jsonlib.dumps(e.get("detail"), separators=(",", ":"))[:80] if e.get("detail") else None) for e in entries],
                 empty="no audit entries")

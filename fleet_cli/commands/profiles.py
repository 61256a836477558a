"""`edgefleet profiles ...`: settings for every device whose labels match a selector."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated

import typer

from .. import output
from ..state import JsonOpt, api, wants_json
from .devices import _confirm, read_config

app = typer.Typer(help="Profiles: runtime, cameras and models for every device whose labels match, by priority.",
                  no_args_is_help=True)


def _what(p: dict) -> str:
    keys = [k for k, v in p.items() if k not in ("name", "selector", "priority", "created_at", "updated_at", "devices_changed")
            and v not in (None, {}, [])]
    return ", ".join(sorted(keys)) or "-"


@app.command("list")
def list_(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Profiles, the one that wins first (highest priority)."""
    profiles = api(ctx).list_profiles()
    if wants_json(ctx, json):
        output.print_json(profiles)
        return
    output.table(None, ["profile", "selector", "priority", "sets", "updated"],
                 [(p["name"], output.labels(p.get("selector")) or "(every device)", p.get("priority"), _what(p),
                   output.ago(p.get("updated_at"))) for p in profiles], empty="no profiles")


@app.command()
def show(ctx: typer.Context, name: str, json: JsonOpt = False) -> None:
    """One profile, as JSON (the same shape `profiles set` takes)."""
    p = api(ctx).get_profile(name)
    if wants_json(ctx, json):
        output.print_json(p)
    else:
        output.out.print(jsonlib.dumps(p, indent=2))


@app.command("set")
def set_(ctx: typer.Context, name: str,
         file: Annotated[Path, typer.Argument(help="JSON or YAML: selector, priority, runtime, cameras, models, …; '-' reads stdin")],
         json: JsonOpt = False) -> None:
    """Create or replace a profile (PUT /v1/profiles/NAME); the devices whose desired state changed are listed."""
    p, created = api(ctx).put_profile(name, read_config(file))
    if wants_json(ctx, json):
        output.print_json(p)
        return
    moved = p.get("devices_changed") or []
    output.out.print(f"profile [bold]{name}[/bold] {'created' if created else 'replaced'}; "
                     f"{len(moved)} device(s) got a new desired state" + (f": {', '.join(moved[:10])}" if moved else ""))


@app.command()
def delete(ctx: typer.Context, name: str, yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
           json: JsonOpt = False) -> None:
    """Delete a profile: its devices fall back to the other profiles and their own config."""
    _confirm(f"delete profile {name}", yes)
    p = api(ctx).delete_profile(name)
    if wants_json(ctx, json):
        output.print_json(p)
        return
    moved = p.get("devices_changed") or []
    output.out.print(f"profile [bold]{name}[/bold] deleted; {len(moved)} device(s) got a new desired state")

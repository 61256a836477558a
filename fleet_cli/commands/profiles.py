"""`edgefleet profiles ...`: settings for every device whose labels match a selector."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated

import typer

from .. import output
from ..state import JsonOpt, api, wants_json
from .devices import (
    BlurFaces,
    CaptureOn,
    MaxMbPerDay,
    MaxPerHour,
    MinConfidence,
    _confirm,
    capture_changes,
    print_capture,
    read_config,
)

SPEC_FIELDS = ("selector", "priority", "runtime", "cameras", "capture", "memory_budget_mb")

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
def capture(ctx: typer.Context, name: str, on: CaptureOn = None, max_per_hour: MaxPerHour = None,
            max_mb_per_day: MaxMbPerDay = None, min_confidence: MinConfidence = None, blur_faces: BlurFaces = None,
            inherit: Annotated[bool, typer.Option("--inherit", help="drop the profile's capture setting")] = False,
            json: JsonOpt = False) -> None:
    """Show or change the data capture a profile gives its devices (the rest of the profile is kept)."""
    client = api(ctx)
    changes = capture_changes(on, max_per_hour, max_mb_per_day, min_confidence, blur_faces, inherit)
    p = client.get_profile(name)
    if inherit or changes:
        spec = {k: p[k] for k in SPEC_FIELDS if p.get(k) is not None}
        if inherit:
            spec.pop("capture", None)
        else:
            spec["capture"] = {**(spec.get("capture") or {}), **changes}
        p, _ = client.put_profile(name, spec)
    if wants_json(ctx, json):
        output.print_json(p)
        return
    moved = p.get("devices_changed")
    print_capture(p.get("capture") or {}, f"profile {name}" + ("" if p.get("capture") else " (sets none)"))
    if moved:
        output.out.print(f"{len(moved)} device(s) got a new desired state: {', '.join(moved[:10])}")


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

"""`edgefleet devices ...`: the device registry."""

from __future__ import annotations

import json as jsonlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import output
from ..exit_codes import ExitCode
from ..state import CliError, JsonOpt, api, key_values, wants_json

app = typer.Typer(help="Devices: register, label, configure, revoke, rotate broker credentials.", no_args_is_help=True)

LabelOpt = Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE, repeatable")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]


def _reported(d: dict) -> dict:
    return d.get("reported") or {}


def _row(d: dict) -> tuple:
    rep = _reported(d)
    model = rep.get("model") or {}
    status = "revoked" if d.get("revoked") else "online" if d.get("online") else "offline"
    return (d["id"], output.labels(d.get("labels")), output.state(status), output.state(rep.get("state")),
            f"{model.get('name')} {model.get('version')}" if model else "-", rep.get("provider"), output.ago(d.get("last_seen")),
            (rep.get("error") or "")[:60] or None)


def matches(d: dict, selector: dict[str, str], state: str | None) -> bool:
    labels = d.get("labels") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    if state is None:
        return True
    status = "revoked" if d.get("revoked") else "online" if d.get("online") else "offline"
    return state in (status, _reported(d).get("state"))


@app.command("list")
def list_(ctx: typer.Context, label: LabelOpt = None,
          state: Annotated[str | None, typer.Option(help="online, offline, revoked, or a reported state (serving, failed, …)")] = None,
          json: JsonOpt = False) -> None:
    """Devices with their reported state; filter by labels and state."""
    selector, _ = key_values(label)
    devices = [d for d in api(ctx).list_devices() if matches(d, selector, state)]
    if wants_json(ctx, json):
        output.print_json(devices)
        return
    output.table(None, ["device", "labels", "status", "state", "model", "provider", "last seen", "error"], map(_row, devices),
                 empty="no devices")


@app.command()
def show(ctx: typer.Context, device_id: str, json: JsonOpt = False) -> None:
    """One device: labels, desired and reported state."""
    d = api(ctx).get_device(device_id)
    if wants_json(ctx, json):
        output.print_json(d)
        return
    rep, desired = _reported(d), d.get("desired") or {}
    model, want = rep.get("model") or {}, desired.get("model") or {}
    status = "revoked" if d.get("revoked") else "online" if d.get("online") else "offline"
    output.fields([
        ("device", d["id"]), ("labels", output.labels(d.get("labels"))), ("status", output.state(status)),
        ("last seen", output.ago(d.get("last_seen"))),
        ("desired", f"{want.get('name')} {want.get('version')} (revision {d.get('desired_revision')}, published "
                    f"{d.get('published_revision')})" if want else f"nothing (revision {d.get('desired_revision')})"),
        ("reported", f"{output.state(rep.get('state'))} {model.get('name', '')} {model.get('version', '')}".strip() if rep else None),
        ("provider", rep.get("provider")), ("error", rep.get("error")),
        ("hardware", ", ".join(f"{k}={v}" for k, v in (rep.get("hardware") or {}).items()) or None),
        ("broker user", d.get("broker_username")),
    ])


def _credentials(d: dict) -> None:
    creds = d.get("credentials")
    if creds:
        output.out.print("[bold]broker credentials (shown once, store them now):[/bold]")
        output.fields([("username", creds.get("username")), ("password", creds.get("password")),
                       ("client id", creds.get("client_id")), ("broker", creds.get("broker_url_hint"))])


@app.command()
def register(ctx: typer.Context, device_id: str, label: LabelOpt = None, json: JsonOpt = False) -> None:
    """Register a device. With broker dynamic security on, its broker login is printed once."""
    labels, _ = key_values(label)
    d = api(ctx).register_device(device_id, labels)
    if wants_json(ctx, json):
        output.print_json(d)
        return
    output.out.print(f"registered [bold]{d['id']}[/bold] ({output.labels(d.get('labels'))})")
    _credentials(d)


@app.command()
def label(ctx: typer.Context, device_id: str,
          labels: Annotated[list[str], typer.Argument(help="KEY=VALUE to set, KEY- to remove")],
          json: JsonOpt = False) -> None:
    """Set or remove labels of a device (PATCH /v1/devices/ID with its whole new label set)."""
    client = api(ctx)
    changes, removed = key_values(labels, allow_removal=True)
    current = dict(client.get_device(device_id).get("labels") or {})
    missing = [k for k in removed if k not in current]
    if missing:
        raise CliError(f"device {device_id} has no label {', '.join(missing)}", ExitCode.INVALID)
    new = {k: v for k, v in {**current, **changes}.items() if k not in removed}
    d = client.set_labels(device_id, new)
    if wants_json(ctx, json):
        output.print_json(d)
    else:
        output.out.print(f"{device_id}: {output.labels(d.get('labels', new))}")


def read_config(path: Path) -> dict[str, Any]:
    """A JSON or YAML file ('-' for stdin) with the device config: {"runtime": …, "models": …, "cameras": …}."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = jsonlib.loads(text)
    except ValueError:
        try:
            import yaml
        except ImportError:
            raise CliError(f"{path} is not JSON (and PyYAML is not installed to read YAML)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            detail = f" (line {where.line + 1}: {getattr(exc, 'problem', '')})" if where else ""
            raise CliError(f"{path} is neither JSON nor YAML{detail}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path} must hold a mapping like {{'runtime': …, 'models': …, 'cameras': …}}, not {type(data).__name__}")
    return data


@app.command()
def config(ctx: typer.Context, device_id: str,
           file: Annotated[Path, typer.Argument(help="JSON or YAML: {runtime, models, cameras}; '-' reads stdin")],
           json: JsonOpt = False) -> None:
    """Replace a device's configuration (PUT /v1/devices/ID/config) from a JSON or YAML file."""
    body = read_config(file)
    d = api(ctx).set_config(device_id, body)
    if wants_json(ctx, json):
        output.print_json(d)
    else:
        output.out.print(f"{device_id}: configuration set ({', '.join(sorted(body)) or 'empty'})")


def _confirm(what: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"refusing to {what} without confirmation: add --yes")
    typer.confirm(what[0].upper() + what[1:] + "?", abort=True)


@app.command()
def revoke(ctx: typer.Context, device_id: str, yes: YesOpt = False, json: JsonOpt = False) -> None:
    """Revoke a device: its broker login goes, it leaves active rollouts, its messages are refused. Irreversible."""
    _confirm(f"revoke device {device_id}", yes)
    d = api(ctx).revoke_device(device_id)
    if wants_json(ctx, json):
        output.print_json(d)
    else:
        output.out.print(f"revoked [bold]{device_id}[/bold]")


@app.command()
def rotate(ctx: typer.Context, device_id: str, json: JsonOpt = False) -> None:
    """New broker credentials for a device (printed once); the old ones stop working."""
    d = api(ctx).rotate_credentials(device_id)
    if wants_json(ctx, json):
        output.print_json(d)
    else:
        _credentials(d)

"""`edgefleet devices ...`: the device registry."""

from __future__ import annotations

import json as jsonlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import output
from ..state import CliError, JsonOpt, api, key_values, wants_json

app = typer.Typer(help="Devices: register, label, configure, revoke, rotate broker credentials.", no_args_is_help=True)

LabelOpt = Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE, repeatable")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]


# A device's own state is its models' worst: failed first, then the moving ones, then serving.
STATE_ORDER = ("failed", "removing", "pending", "downloading", "verifying", "building", "loading", "serving")


def _status(d: dict) -> str:
    return "revoked" if d.get("revoked") else "online" if d.get("online") else "offline"


def device_state(d: dict) -> str | None:
    """The worst state among the device's reported models; None when it reported none."""
    states = [m.get("state") or "pending" for m in (d.get("models") or {}).values()]
    if not states:
        return None
    return min(states, key=lambda s: STATE_ORDER.index(s) if s in STATE_ORDER else 0)


def _models_text(d: dict) -> str:
    parts = []
    for name, m in sorted((d.get("models") or {}).items()):
        text = f"{name} {m.get('version') or '-'}"
        if m.get("state") != "serving":
            want = m.get("desired_version")
            text += f" ({m.get('state')}{f' → {want}' if want and want != m.get('version') else ''})"
        parts.append(text)
    return ", ".join(parts) or "-"


def _errors(d: dict) -> str | None:
    errors = [f"{name}: {m['error']}" for name, m in sorted((d.get("models") or {}).items()) if m.get("error")]
    errors += [f"camera {name}: {c['error']}" for name, c in sorted((d.get("cameras") or {}).items()) if c.get("error")]
    if d.get("error"):
        errors.insert(0, d["error"])
    return "; ".join(errors)[:80] or None


def _row(d: dict) -> tuple:
    providers = sorted({m["provider"] for m in (d.get("models") or {}).values() if m.get("provider")})
    return (d["id"], output.labels(d.get("labels")), output.state(_status(d)), output.state(device_state(d)),
            _models_text(d), ", ".join(p.removesuffix("ExecutionProvider") for p in providers) or None,
            output.ago(d.get("last_seen")), _errors(d))


def matches(d: dict, selector: dict[str, str], state: str | None) -> bool:
    labels = d.get("labels") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    if state is None:
        return True
    return state == _status(d) or any(m.get("state") == state for m in (d.get("models") or {}).values())


@app.command("list")
def list_(ctx: typer.Context, label: LabelOpt = None,
          state: Annotated[str | None, typer.Option(help="online, offline, revoked, or a model state (serving, failed, …): "
                                                            "devices with any model in it")] = None,
          json: JsonOpt = False) -> None:
    """Devices with their models (version, and state when not serving); filter by labels and state."""
    selector, _ = key_values(label)
    devices = [d for d in api(ctx).list_devices() if matches(d, selector, state)]
    if wants_json(ctx, json):
        output.print_json(devices)
        return
    output.table(None, ["device", "labels", "status", "state", "models", "provider", "last seen", "errors"], map(_row, devices),
                 empty="no devices")


@app.command()
def show(ctx: typer.Context, device_id: str, json: JsonOpt = False) -> None:
    """One device: labels, revisions, every model (desired and serving version, state, provider, error), cameras."""
    d = api(ctx).get_device(device_id)
    if wants_json(ctx, json):
        output.print_json(d)
        return
    rep, desired = d.get("reported") or {}, d.get("desired") or {}
    output.fields([
        ("device", d["id"]), ("labels", output.labels(d.get("labels"))), ("status", output.state(_status(d))),
        ("last seen", output.ago(d.get("last_seen"))), ("state", output.state(device_state(d))),
        ("revision", (f"desired {d.get('desired_revision')}, published {d.get('published_revision')}, "
                      f"reported {d.get('reported_revision') if d.get('reported_revision') is not None else '-'}")),
        ("error", d.get("error")), ("agent", rep.get("agent_version") or None),
        ("hardware", ", ".join(f"{k}={v}" for k, v in (rep.get("hardware") or {}).items()) or None),
        ("broker user", d.get("broker_username")),
    ])
    wanted = desired.get("models") or {}
    reported = d.get("models") or {}
    rows = []
    for name in sorted(set(wanted) | set(reported)):
        m, spec = reported.get(name) or {}, wanted.get(name) or {}
        rows.append((name, (spec.get("bundle") or {}).get("version") or m.get("desired_version") or "(removed)",
                     m.get("version"), output.state(m.get("state")),
                     (m.get("provider") or "").removesuffix("ExecutionProvider") or None,
                     spec.get("rollout_id") or m.get("rollout_id"), m.get("error")))
    output.table("models", ["model", "desired", "serving", "state", "provider", "rollout", "error"], rows, empty="no models")
    cameras = d.get("cameras") or {}
    if cameras or desired.get("cameras"):
        output.table("cameras", ["camera", "state", "source", "models", "error"],
                     [(name, output.state(c.get("state")), c.get("source"), " → ".join(c.get("models") or []), c.get("error"))
                      for name, c in sorted(cameras.items())], empty="none reported yet")


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
    """Set or remove labels of a device (PATCH /v1/devices/ID); profiles that match may change its desired state."""
    changes, removed = key_values(labels, allow_removal=True)
    d = api(ctx).set_labels(device_id, {**changes, **{k: None for k in removed}})
    if wants_json(ctx, json):
        output.print_json(d)
    else:
        output.out.print(f"{device_id}: {output.labels(d.get('labels'))}")


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
           file: Annotated[Path | None, typer.Argument(help="JSON or YAML (runtime, cameras, memory_budget_mb, capture, …); "
                                                               "'-' reads stdin; none: show the current one")] = None,
           json: JsonOpt = False) -> None:
    """Show or replace a device's own configuration (GET / PUT /v1/devices/ID/config); it wins over every profile."""
    if file is None:
        current = api(ctx).get_config(device_id)
        if wants_json(ctx, json):
            output.print_json(current)
        else:
            output.out.print(jsonlib.dumps(current.get("config") or {}, indent=2))
        return
    body = read_config(file)
    d = api(ctx).set_config(device_id, body)
    if wants_json(ctx, json):
        output.print_json(d)
    else:
        output.out.print(f"{device_id}: configuration set ({', '.join(sorted(body)) or 'empty'}); "
                         f"desired revision {d.get('desired_revision')}")


CaptureOn = Annotated[bool | None, typer.Option("--on/--off", help="capture samples, or not")]
MaxPerHour = Annotated[int | None, typer.Option(help="samples an hour at most (per device)", min=0, max=100_000)]
MaxMbPerDay = Annotated[float | None, typer.Option(help="MiB a day at most (per device)", min=0)]
MinConfidence = Annotated[float | None, typer.Option(help="keep inputs the model is less sure of than this", min=0, max=1)]
BlurFaces = Annotated[bool | None, typer.Option("--blur-faces/--no-blur-faces",
                                                help="pixelate faces on the device before a frame leaves it")]


def capture_changes(on: bool | None, max_per_hour: int | None, max_mb_per_day: float | None,
                    min_confidence: float | None, blur_faces: bool | None, inherit: bool) -> dict[str, Any]:
    """The `capture` fields the options set (none: show only); --inherit with any of them is a usage error."""
    changes = {"enabled": on, "max_per_hour": max_per_hour, "min_confidence": min_confidence, "blur_faces": blur_faces,
               "max_bytes_per_day": None if max_mb_per_day is None else int(max_mb_per_day * 1024 * 1024)}
    changes = {k: v for k, v in changes.items() if v is not None}
    if inherit and changes:
        raise CliError("--inherit drops this capture setting: give no other option with it")
    return changes


def print_capture(current: dict[str, Any], source: str) -> None:
    output.fields([("capture", "[green]on[/green]" if current.get("enabled") else "off"), ("decided by", source),
                   ("max per hour", current.get("max_per_hour")),
                   ("max per day", output.size(current.get("max_bytes_per_day"))),
                   ("min confidence", current.get("min_confidence")),
                   ("blur faces", "yes" if current.get("blur_faces") else "no")])


@app.command()
def capture(ctx: typer.Context, device_id: str, on: CaptureOn = None, max_per_hour: MaxPerHour = None,
            max_mb_per_day: MaxMbPerDay = None, min_confidence: MinConfidence = None, blur_faces: BlurFaces = None,
            inherit: Annotated[bool, typer.Option("--inherit", help="drop the device's own setting: profiles decide")] = False,
            json: JsonOpt = False) -> None:
    """Show or change a device's data capture (the `capture` of its own configuration; the rest is kept).
    Without options: what the device is told now, and whether that comes from itself, a profile or the default."""
    client = api(ctx)
    changes = capture_changes(on, max_per_hour, max_mb_per_day, min_confidence, blur_faces, inherit)
    if inherit or changes:
        config = dict(client.get_config(device_id).get("config") or {})
        config = {k: v for k, v in config.items() if v not in (None, {}, [])}
        if inherit:
            config.pop("capture", None)
        else:
            # starting from what the device is told now: --max-per-hour alone keeps capture as it is otherwise
            current = (client.get_desired(device_id).get("desired") or {}).get("capture") or {}
            config["capture"] = {**current, **(config.get("capture") or {}), **changes}
        client.set_config(device_id, config)
    view = client.get_desired(device_id)
    current = (view.get("desired") or {}).get("capture") or {}
    source = (view.get("sources") or {}).get("capture", "default")
    if wants_json(ctx, json):
        output.print_json({"device_id": device_id, "capture": current, "source": source})
        return
    print_capture(current, source)


models_app = typer.Typer(help="The models of one device outside any rollout: assign a version, remove one.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")


def _desired_line(view: dict) -> str:
    models = (view.get("desired") or {}).get("models") or {}
    names = ", ".join(f"{n} {(m.get('bundle') or {}).get('version')}" for n, m in sorted(models.items())) or "no models"
    return f"desired revision {view.get('revision')}: {names}"


@models_app.command("assign")
def models_assign(ctx: typer.Context, device_id: str, model: str, version: str,
                  runtime: Annotated[Path | None, typer.Option(help="JSON or YAML Runtime (providers, precision, "
                                                                        "intra_op_threads, batching); none: config/profiles decide")] = None,
                  json: JsonOpt = False) -> None:
    """Give one device a version of a model (its hardware variant) directly (PUT /v1/devices/ID/models/MODEL)."""
    spec = read_config(runtime) if runtime is not None else None
    view = api(ctx).assign_model(device_id, model, version, spec)
    if wants_json(ctx, json):
        output.print_json(view)
    else:
        output.out.print(f"{device_id}: {model} {version} assigned; {_desired_line(view)}")


@models_app.command("remove")
def models_remove(ctx: typer.Context, device_id: str, model: str, json: JsonOpt = False) -> None:
    """Take a model off one device (DELETE /v1/devices/ID/models/MODEL)."""
    view = api(ctx).remove_model(device_id, model)
    if wants_json(ctx, json):
        output.print_json(view)
    else:
        output.out.print(f"{device_id}: {model} removed; {_desired_line(view)}")


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

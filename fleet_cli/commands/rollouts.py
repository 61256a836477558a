"""`edgefleet rollouts ...`: start, follow and steer rollouts."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .. import output
from ..exit_codes import FINAL_STATES, ExitCode
from ..state import CliError, JsonOpt, api, key_values, wants_json
from ..watch import WatchTimeout, follow, waves

app = typer.Typer(help="Rollouts: a model version to the devices a selector matches, in waves, behind gates.",
                  no_args_is_help=True)

GATES = ("min_success_ratio", "max_failure_ratio", "soak_s", "max_concurrent", "wave_timeout_s", "max_p95_increase_pct", "max_error_rate",
         "baseline_window_s")
ReasonOpt = Annotated[str | None, typer.Option(help="why (kept in the rollout and the audit log)")]
IntervalOpt = Annotated[float, typer.Option(help="seconds between polls", min=0.1)]
TimeoutOpt = Annotated[float | None, typer.Option(help="stop watching after this many seconds (exit 12)", min=0)]


def parse_gates(pairs: list[str] | None) -> dict:
    values, _ = key_values(pairs, "gate")
    gates: dict = {}
    for name, raw in values.items():
        if raw.lower() in ("none", "null", "off"):
            gates[name] = None
            continue
        try:
            gates[name] = float(raw)
        except ValueError:
            raise CliError(f"gate {name}={raw!r} is not a number (or 'none')") from None
    return gates


def _summary(r: dict) -> str:
    counts = r.get("device_states")
    if counts is None:
        counts = {}
        for m in r.get("devices") or []:
            counts[m["state"]] = counts.get(m["state"], 0) + 1
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"


def _wave_text(r: dict) -> str:
    n = len(r.get("waves") or [])
    return f"{min(r.get('current_wave', 0) + 1, n)}/{n}" if n else "-"


def render(r: dict) -> Group:
    """The rollout as a header and one row per wave with a bar of devices serving the new version."""
    head = Text.from_markup(
        f"rollout [bold]{r['id']}[/bold]: {r['model']} {r['version']}  {output.state(r['state'])}  wave {_wave_text(r)}"
        + (f"  [dim]{r['reason']}[/dim]" if r.get("reason") else ""))
    t = Table(box=None, header_style="bold", pad_edge=False)
    for c in ("wave", "devices", "progress", "succeeded", "failed", "other", "status"):
        t.add_column(c)
    for w in waves(r):
        other = {k: v for k, v in w.states.items() if k not in ("succeeded", "failed")}
        t.add_row(str(w.index + 1), str(w.size), ProgressBar(total=max(w.size, 1), completed=w.succeeded, width=24),
                  str(w.succeeded), str(w.failed), " ".join(f"{k}={v}" for k, v in sorted(other.items())) or "-",
                  output.state(r["state"] if w.status == "stopped" else w.status))
    return Group(head, t)


def show_rollout(r: dict) -> None:
    output.out.print(render(r))
    output.out.print(f"[dim]selector {output.labels(r.get('selector'))}; created {output.ago(r.get('created_at'))}; gates "
                     + ", ".join(f"{k}={v}" for k, v in (r.get("gates") or {}).items() if v is not None) + "[/dim]")
    members = r.get("devices") or []
    if members:
        output.table(None, ["device", "wave", "state", "error"],
                     [(m["device_id"], m["wave"] + 1, output.state(m["state"]), m.get("error")) for m in members])


def watch_until_done(ctx: typer.Context, rollout_id: int, interval: float, timeout: float | None, as_json: bool) -> None:
    """Follow the rollout; exit with the code of how it ended (README: exit codes)."""
    client = api(ctx)
    fetch = lambda: client.get_rollout(rollout_id)  # noqa: E731
    try:
        if as_json:
            final = follow(fetch, lambda _: None, interval, timeout)
        elif output.out.is_terminal:
            with Live(console=output.out, refresh_per_second=4) as live:
                final = follow(fetch, lambda r: live.update(render(r)), interval, timeout)
        else:
            # Not a terminal (a log, a pipe): a line each time something changed.
            last: list[str] = []

            def line(r: dict) -> None:
                text = f"rollout {r['id']}: {r['state']} wave {_wave_text(r)} {_summary(r)}" + (f" — {r['reason']}" if r.get("reason") else "")
                if text != (last[-1] if last else None):
                    last.append(text)
                    output.out.print(text)

            final = follow(fetch, line, interval, timeout)
    except WatchTimeout as exc:
        if as_json:
            output.print_json(exc.rollout)
        output.err.print(f"error: rollout {rollout_id} is still {exc.rollout['state']} after {timeout:g}s "
                         f"(exit {int(ExitCode.WATCH_TIMEOUT)})")
        raise typer.Exit(ExitCode.WATCH_TIMEOUT) from None
    if as_json:
        output.print_json(final)
    code = FINAL_STATES.get(final["state"], ExitCode.ERROR)
    if code != ExitCode.OK:
        output.err.print(f"rollout {rollout_id} ended {final['state']}" + (f": {final['reason']}" if final.get("reason") else ""))
    raise typer.Exit(code)


@app.command()
def create(ctx: typer.Context, model: str, version: str,
           selector: Annotated[str, typer.Option("--selector", "-s", help="labels, e.g. site=plant-3,hw=jetson; empty: all devices")] = "",
           waves_: Annotated[str, typer.Option("--waves", "-w", help="cumulative, e.g. 1,10%,50%,100%")] = "100%",
           gate: Annotated[list[str] | None, typer.Option("--gate", "-g", help=f"NAME=VALUE, repeatable; names: {', '.join(GATES)}")] = None,
           watch: Annotated[bool, typer.Option("--watch", help="then follow it like 'rollouts watch'")] = False,
           interval: IntervalOpt = 1.0, timeout: TimeoutOpt = None, json: JsonOpt = False) -> None:
    """Start a rollout of MODEL VERSION (409 if a device is in another active rollout)."""
    r = api(ctx).create_rollout(model, version, selector, waves_, parse_gates(gate))
    if watch:
        if not wants_json(ctx, json):
            output.out.print(f"started rollout [bold]{r['id']}[/bold] of {model} {version} to {len(r.get('devices') or [])} device(s)")
        watch_until_done(ctx, r["id"], interval, timeout, wants_json(ctx, json))
    if wants_json(ctx, json):
        output.print_json(r)
    else:
        output.out.print(f"started rollout [bold]{r['id']}[/bold]")
        output.out.print(render(r))


@app.command("list")
def list_(ctx: typer.Context,
          state: Annotated[str | None, typer.Option(help="pending, running, paused, succeeded, aborted, rolled_back")] = None,
          json: JsonOpt = False) -> None:
    """Rollouts, newest first."""
    rollouts = [r for r in api(ctx).list_rollouts() if state is None or r["state"] == state]
    if wants_json(ctx, json):
        output.print_json(rollouts)
        return
    output.table(None, ["id", "model", "version", "selector", "state", "wave", "devices", "created", "reason"],
                 [(r["id"], r["model"], r["version"], output.labels(r.get("selector")), output.state(r["state"]), _wave_text(r),
                   _summary(r), output.ago(r.get("created_at")), r.get("reason")) for r in rollouts], empty="no rollouts")


@app.command()
def show(ctx: typer.Context, rollout_id: int, json: JsonOpt = False) -> None:
    """A rollout: its waves and every device's state in it."""
    r = api(ctx).get_rollout(rollout_id)
    if wants_json(ctx, json):
        output.print_json(r)
    else:
        show_rollout(r)


@app.command()
def watch(ctx: typer.Context, rollout_id: int, interval: IntervalOpt = 1.0, timeout: TimeoutOpt = None,
          json: JsonOpt = False) -> None:
    """Follow a rollout live, wave by wave, until it ends. Exit 0 succeeded, 10 aborted, 11 rolled back, 12 --timeout."""
    watch_until_done(ctx, rollout_id, interval, timeout, wants_json(ctx, json))


def _control(ctx: typer.Context, rollout_id: int, action: str, reason: str | None, as_json: bool) -> None:
    r = api(ctx).control_rollout(rollout_id, action, reason)
    if as_json:
        output.print_json(r)
    else:
        output.out.print(f"rollout {r['id']}: {output.state(r['state'])}" + (f" — {r['reason']}" if r.get("reason") else ""))


@app.command()
def pause(ctx: typer.Context, rollout_id: int, reason: ReasonOpt = None, json: JsonOpt = False) -> None:
    """Pause a running rollout: no new wave starts, devices already told keep going."""
    _control(ctx, rollout_id, "pause", reason, wants_json(ctx, json))


@app.command()
def resume(ctx: typer.Context, rollout_id: int, reason: ReasonOpt = None, json: JsonOpt = False) -> None:
    """Resume a paused rollout (its current wave gets its full time again)."""
    _control(ctx, rollout_id, "resume", reason, wants_json(ctx, json))


@app.command()
def abort(ctx: typer.Context, rollout_id: int, reason: ReasonOpt = None, json: JsonOpt = False) -> None:
    """Abort an active rollout: every device it moved gets its previous model back."""
    _control(ctx, rollout_id, "abort", reason, wants_json(ctx, json))


@app.command()
def rollback(ctx: typer.Context, rollout_id: int, reason: ReasonOpt = None, json: JsonOpt = False) -> None:
    """Roll back a running, paused or succeeded rollout: its devices get their previous model."""
    _control(ctx, rollout_id, "rollback", reason, wants_json(ctx, json))

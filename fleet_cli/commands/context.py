"""`edgefleet context set|use|list|delete`: where the fleet API is and which token to send."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import output
from ..config import SERVER_ENV, TOKEN_ENV
from ..state import JsonOpt, state, wants_json

app = typer.Typer(help="Contexts: named fleet API URL + token pairs, kept 0600 in your config folder.", no_args_is_help=True)


def _mask(token: str | None) -> str | None:
    return None if not token else token[:6] + "…" if len(token) > 10 else "…"


@app.command("set")
def set_(ctx: typer.Context, name: str,
         server: Annotated[str | None, typer.Option(help="the fleet API's URL, e.g. http://127.0.0.1:8000")] = None,
         token: Annotated[str | None, typer.Option(help="API token sent as 'Authorization: Bearer' (default: $EDGEFLEET_TOKEN when set)")] = None,
         use: Annotated[bool, typer.Option("--use/--no-use", help="make it the current context")] = True,
         json: JsonOpt = False) -> None:
    """Create or update a context (only the fields given change) and, by default, switch to it."""
    import os

    config = state(ctx).config()
    if token is None and name not in config.contexts:
        token = os.environ.get(TOKEN_ENV) or None
    c = config.set(name, server, token)
    if use:
        config.use(name)
    config.save()
    view = {"name": c.name, "server": c.server, "token": _mask(c.token), "current": config.current == name, "path": str(config.path)}
    if wants_json(ctx, json):
        output.print_json(view)
    else:
        output.out.print(f"context [bold]{c.name}[/bold]: {c.server}" + (" (current)" if view["current"] else "")
                         + f"  [dim]{config.path}[/dim]")


@app.command()
def use(ctx: typer.Context, name: str, json: JsonOpt = False) -> None:
    """Switch to another context."""
    config = state(ctx).config()
    c = config.use(name)
    config.save()
    if wants_json(ctx, json):
        output.print_json({"name": c.name, "server": c.server, "current": True})
    else:
        output.out.print(f"now using context [bold]{c.name}[/bold]: {c.server}")


@app.command("list")
def list_(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Every context; the current one marked. Tokens are shown only by their first characters."""
    import os

    config = state(ctx).config()
    rows = [{"name": c.name, "server": c.server, "token": _mask(c.token), "current": c.name == config.current}
            for c in config.contexts.values()]
    if wants_json(ctx, json):
        output.print_json(rows)
        return
    output.table(None, ["", "name", "server", "token"], [("*" if r["current"] else "", r["name"], r["server"], r["token"]) for r in rows],
                 empty="no context yet: edgefleet context set NAME --server URL --token TOKEN")
    overrides = [v for v in (SERVER_ENV, TOKEN_ENV) if os.environ.get(v)]
    if overrides:
        verb = "overrides" if len(overrides) == 1 else "override"
        output.err.print(f"[yellow]note:[/yellow] {' and '.join(overrides)} set: {verb} the current context")


@app.command()
def delete(ctx: typer.Context, name: str, json: JsonOpt = False) -> None:
    """Forget a context (and its token)."""
    config = state(ctx).config()
    config.delete(name)
    config.save()
    if wants_json(ctx, json):
        output.print_json({"deleted": name, "current": config.current})
    else:
        output.out.print(f"deleted context {name}" + (f"; current: {config.current}" if config.current else ""))

"""`edgefleet tokens ...` and `edgefleet whoami`: API tokens and their roles."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import output
from ..state import JsonOpt, api, wants_json

app = typer.Typer(help="API tokens (admin): create (shown once), list, revoke.", no_args_is_help=True)


@app.command("list")
def list_(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Every token (never the secret itself)."""
    tokens = api(ctx).list_tokens()
    if wants_json(ctx, json):
        output.print_json(tokens)
        return
    output.table(None, ["id", "name", "role", "created", "by", "revoked"],
                 [(t["id"], t["name"], t["role"], output.ago(t.get("created_at")), t.get("created_by"),
                   output.ago(t["revoked_at"]) if t.get("revoked_at") else None) for t in tokens])


@app.command()
def create(ctx: typer.Context, name: str,
           role: Annotated[str, typer.Option(help="viewer (read), operator (+ models, rollouts), admin (+ devices, tokens)")] = "viewer",
           json: JsonOpt = False) -> None:
    """Create a token; it is printed once (only its hash is kept)."""
    t = api(ctx).create_token(name, role)
    if wants_json(ctx, json):
        output.print_json(t)
        return
    output.err.print(f"token {t['id']} [bold]{t['name']}[/bold] ({t['role']}), shown once:")
    output.out.print(t["token"])


@app.command()
def revoke(ctx: typer.Context, token_id: int, json: JsonOpt = False) -> None:
    """Revoke a token: it stops working at once."""
    t = api(ctx).revoke_token(token_id)
    if wants_json(ctx, json):
        output.print_json(t)
    else:
        output.out.print(f"revoked token {t['id']} ({t['name']})")


def whoami(ctx: typer.Context, json: JsonOpt = False) -> None:
    """The server, and the name and role of the token in use."""
    client = api(ctx)
    me = client.whoami()
    if wants_json(ctx, json):
        output.print_json({**me, "server": client.server})
    else:
        output.out.print(f"{me['name']} ({me['role']}) on {client.server}")

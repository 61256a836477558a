"""What every command shares: the resolved target (flags > environment > context), the client, `--json`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from .client import ApiClient
from .config import Config, resolve
from .exit_codes import ExitCode

JsonOpt = Annotated[bool, typer.Option("--json", help="print the API's answer as JSON (for scripts)")]


class CliError(Exception):
    """A failure on this side (bad flag value, unreadable file, no server): one line, its exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class State:
    config_path: Path | None = None
    context: str | None = None
    server: str | None = None
    token: str | None = None
    json: bool = False
    timeout: float = 30.0
    _client: ApiClient | None = field(default=None, repr=False)

    def config(self) -> Config:
        return Config.load(self.config_path)

    def client(self) -> ApiClient:
        if self._client is None:
            target = resolve(self.config(), self.context, self.server, self.token)
            self._client = ApiClient(target.server, target.token, timeout=self.timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def state(ctx: typer.Context) -> State:
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State()
    return root.obj


def api(ctx: typer.Context) -> ApiClient:
    return state(ctx).client()


def wants_json(ctx: typer.Context, flag: bool) -> bool:
    return flag or state(ctx).json


def key_values(pairs: list[str] | None, what: str = "label", allow_removal: bool = False) -> tuple[dict[str, str], list[str]]:
    """['site=lab', 'hw=cpu', 'old-'] → ({'site': 'lab', 'hw': 'cpu'}, ['old'])."""
    values: dict[str, str] = {}
    removed: list[str] = []
    for pair in pairs or []:
        if allow_removal and pair.endswith("-") and "=" not in pair:
            removed.append(pair[:-1])
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            hint = " (or KEY- to remove one)" if allow_removal else ""
            raise CliError(f"{what} {pair!r} is not KEY=VALUE{hint}")
        values[key.strip()] = value.strip()
    return values, removed

"""`edgefleet`: the root command, its global flags, and the one place failures become an `error:` line and an exit code."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import output
from .client import ApiError, Unreachable
from .commands import alerts, audit, captures, context, devices, models, profiles, rollouts, telemetry, tokens
from .config import ConfigError
from .exit_codes import ExitCode, for_status
from .state import CliError, State

if TYPE_CHECKING:  # the type checker sees click's classes (the same ones, whichever copy typer carries)
    from click.exceptions import ClickException as ClickError
    from click.exceptions import UsageError
else:
    # typer ≥ 0.24 carries its own copy of click; take the classes from typer, whichever click it uses.
    UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    ClickError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

app = typer.Typer(
    name="edgefleet", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Operate an edgefleet fleet through its API: devices, models, rollouts, telemetry, captures, tokens, audit.\n\n"
         "Where: flags, else EDGEFLEET_SERVER / EDGEFLEET_TOKEN, else the current context ('edgefleet context set').",
)
app.add_typer(context.app, name="context")
app.add_typer(devices.app, name="devices")
app.add_typer(models.app, name="models")
app.add_typer(rollouts.app, name="rollouts")
app.add_typer(profiles.app, name="profiles")
app.add_typer(alerts.app, name="alerts")
app.add_typer(captures.app, name="captures")
app.add_typer(tokens.app, name="tokens")
app.command("telemetry")(telemetry.telemetry)
app.command("audit")(audit.audit)
app.command("whoami")(tokens.whoami)


@app.callback()
def root(ctx: typer.Context,
         server: Annotated[str | None, typer.Option(help="fleet API URL (overrides EDGEFLEET_SERVER and the context)")] = None,
         token: Annotated[str | None, typer.Option(help="API token (overrides EDGEFLEET_TOKEN and the context)")] = None,
         context_name: Annotated[str | None, typer.Option("--context", help="use this context instead of the current one")] = None,
         config: Annotated[Path | None, typer.Option(help="config file (default $XDG_CONFIG_HOME/edgefleet/config)",
                                                        envvar="EDGEFLEET_CONFIG")] = None,
         timeout: Annotated[float, typer.Option(help="seconds to wait for each answer", min=0.1)] = 30.0,
         json: Annotated[bool, typer.Option("--json", help="JSON output for every command")] = False) -> None:
    ctx.obj = State(config_path=config, context=context_name, server=server, token=token, json=json, timeout=timeout)
    ctx.call_on_close(ctx.obj.close)


def _error(message: str, code: ExitCode) -> int:
    # One line, never a traceback; markup off: messages quote user input and server text.
    output.err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return int(code)


def _api_error(exc: ApiError) -> str:
    hint = ""
    if exc.status == 401:
        hint = "; set a valid token: 'edgefleet context set NAME --token TOKEN' or EDGEFLEET_TOKEN"
    elif exc.status in (404, 405) and not exc.ours:
        hint = f"; the server has no {exc.method} {exc.path} (not a fleet API, or an older one?)"
    return f"{exc.message} (HTTP {exc.status}){hint}"


def main(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app)
    output.fit_to_terminal()
    try:
        rv = command.main(args=argv, prog_name="edgefleet", standalone_mode=False)
    except ApiError as exc:
        return _error(_api_error(exc), for_status(exc.status))
    except Unreachable as exc:
        return _error(str(exc), ExitCode.UNREACHABLE)
    except CliError as exc:
        return _error(str(exc), exc.code)
    except ConfigError as exc:
        return _error(str(exc), ExitCode.USAGE)
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "edgefleet"
        return _error(f"{exc.format_message()} (see '{where} --help')", ExitCode.USAGE)
    except typer.Abort:
        return _error("aborted", ExitCode.INTERRUPTED)
    except ClickError as exc:  # e.g. a file option that cannot be opened
        return _error(exc.format_message(), ExitCode.USAGE)
    except KeyboardInterrupt:
        return _error("interrupted", ExitCode.INTERRUPTED)
    except Exception as exc:  # a bug or an answer of an unexpected shape: still one line (EDGEFLEET_DEBUG=1: the traceback)
        if os.environ.get("EDGEFLEET_DEBUG"):
            raise
        return _error(f"unexpected {type(exc).__name__}: {exc} (EDGEFLEET_DEBUG=1 shows where)", ExitCode.ERROR)
    return rv if isinstance(rv, int) else 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()

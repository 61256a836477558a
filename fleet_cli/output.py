"""Printing: rich tables for people, JSON for scripts (`--json`: exactly the API's answer, nothing else on stdout)."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, overload

from rich.console import Console
from rich.table import Table

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)

PIPED_WIDTH = 200


def fit_to_terminal() -> None:
    """Each run: the width `COLUMNS` gives, else the terminal's; piped into another program (no terminal), rows as
    wide as PIPED_WIDTH rather than rich's 80 columns, so `edgefleet devices list | grep` sees whole rows. Run at
    the start of every command, not at import: the environment may change between runs in one process."""
    for console, stream in ((out, sys.stdout), (err, sys.stderr)):
        columns = os.environ.get("COLUMNS", "")
        if columns.isdigit() and int(columns) > 0:
            console.width = int(columns)
        elif not stream.isatty():
            console.width = PIPED_WIDTH

STATE_STYLE = {
    # rollouts
    "succeeded": "green", "running": "cyan", "pending": "yellow", "paused": "yellow", "aborted": "red",
    "rolled_back": "magenta",
    # rollout members
    "waiting": "dim", "notified": "cyan", "failed": "red", "reverted": "magenta", "removed": "dim",
    # waves
    "passed": "green", "current": "cyan",
    # devices (reported)
    "serving": "green", "downloading": "cyan", "verifying": "cyan", "loading": "cyan", "idle": "dim",
    "online": "green", "offline": "red", "revoked": "red",
}


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def state(value: str | None) -> str:
    if not value:
        return "[dim]-[/dim]"
    style = STATE_STYLE.get(value)
    return f"[{style}]{value}[/{style}]" if style else value


@overload
def utc(t: dt.datetime) -> dt.datetime: ...
@overload
def utc(t: None) -> None: ...
def utc(t: dt.datetime | None) -> dt.datetime | None:
    """A time without a zone is UTC (what the API sends and what the options say)."""
    return t.replace(tzinfo=dt.UTC) if t is not None and t.tzinfo is None else t


def ago(iso: str | None, now: dt.datetime | None = None) -> str:
    """'3m ago (2026-12-01 21:04:05Z)': relative for reading, absolute for reference."""
    if not iso:
        return "-"
    try:
        t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    t = utc(t)
    now = now or dt.datetime.now(dt.UTC)
    s = int((now - t).total_seconds())
    rel = "just now" if abs(s) < 5 else f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else \
        f"{s // 3600}h ago" if s < 172800 else f"{s // 86400}d ago"
    return f"{rel} ({t.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}Z)"


def labels(value: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((value or {}).items())) or "-"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    x = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if x < 1000 or unit == "GB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1000
    return str(x)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "nothing yet") -> None:
    rows = list(rows)
    if not rows:
        out.print(f"[dim]{title + ': ' if title else ''}{empty}[/dim]")
        return
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("-" if v is None else str(v) for v in r))
    out.print(t)


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    for k, v in pairs:
        t.add_row(k, "-" if v is None or v == "" else str(v))
    out.print(t)

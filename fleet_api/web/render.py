"""Jinja2 templates and the small formatting helpers the pages share (times, states, sizes)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# One colour family per kind of state, so "good", "moving", "waiting", "bad" and "over" read the same everywhere.
STATE_TONE = {
    "serving": "ok", "succeeded": "ok", "online": "ok", "healthy": "ok",
    "running": "busy", "downloading": "busy", "verifying": "busy", "loading": "busy", "notified": "busy",
    "pending": "wait", "waiting": "wait", "paused": "wait",
    "failed": "bad", "aborted": "bad", "offline": "bad",
    "firing": "bad", "critical": "bad", "warning": "wait", "resolved": "over", "info": "none",
    "rolled_back": "over", "reverted": "over", "removed": "over", "revoked": "over", "idle": "over",
}


def parse_time(value: str | dt.datetime | None) -> dt.datetime | None:
    if value is None or value == "":
        return None
    t = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)  # SQLite hands back naive UTC


def relative(t: dt.datetime, now: dt.datetime | None = None) -> str:
    seconds = ((now or dt.datetime.now(dt.UTC)) - t).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 45:
        text = "just now" if not future else "in a few seconds"
        return text
    for size, unit in ((86400 * 365, "year"), (86400 * 30, "month"), (86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size * 0.95:
            n = max(1, round(seconds / size))
            text = f"{n} {unit}{'s' if n != 1 else ''}"
            return f"in {text}" if future else f"{text} ago"
    return "just now"


def reltime(value: str | dt.datetime | None, empty: str = "never") -> Markup:
    """`<time>` with the relative time as text and the absolute one on hover; static/app.js keeps it current."""
    t = parse_time(value)
    if t is None:
        return Markup('<span class="muted">{}</span>').format(empty)
    absolute = t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{}" title="{}">{}</time>').format(t.isoformat(), absolute, relative(t))


def badge(state: Any, label: str | None = None) -> Markup:
    s = str(state) if state not in (None, "") else "unknown"
    tone = STATE_TONE.get(s, "none")
    return Markup('<span class="badge tone-{}" data-state="{}">{}</span>').format(tone, s, label or s.replace("_", " "))


def filesize(n: int | float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.2g}"
        text = f"{value:,.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested measurements → ("latency.p50_ms", 0.01) rows, lists of dicts indexed."""
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = []
        for i, v in enumerate(value):
            out += flatten(v, f"{prefix}[{i}]")
        return out
    return [(prefix, value)]


def labels(value: dict[str, Any] | None) -> Markup:
    if not value:
        return Markup('<span class="muted">no labels</span>')
    return Markup("").join(Markup('<span class="chip">{}<b>=</b>{}</span>').format(k, v) for k, v in sorted(value.items()))


def make_env() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(reltime=reltime, badge=badge, filesize=filesize, number=number, labels=labels, flatten=flatten)
    env.globals.update(badge=badge, reltime=reltime)
    return env

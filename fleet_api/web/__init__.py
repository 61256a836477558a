"""The dashboard: server-rendered Jinja2 pages, htmx fragments for live parts, uPlot charts (both vendored in
static/vendor). Signed in with the same API tokens as the JSON API (kept in a session cookie)."""

from .pages import router

__all__ = ["router"]

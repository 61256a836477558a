"""The dashboard: server-rendered HTML (no JS build), with the same tokens as the API (kept in a cookie)."""

from __future__ import annotations

from html import escape
from pathlib import Path
from string import Template
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from ..errors import FleetError
from ..routes.security import COOKIE, token_of

router = APIRouter(include_in_schema=False)
PAGE = Template((Path(__file__).parent / "page.html").read_text())


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.substitute(title=escape(title), body=body), status_code=status)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body or '<tr><td colspan=99>none</td></tr>'}</tbody></table>"


def _state(s: Any) -> str:
    s = escape(str(s or "—"))
    return f'<span class="state {s}">{s}</span>'


LOGIN = """<form method="post" action="/login"><label>API token <input type="password" name="token" autofocus></label>
<button>Sign in</button></form><p class="hint">Any token with at least the viewer role.</p>"""


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request) -> HTMLResponse:
    service = request.app.state.service
    try:
        who = service.authenticate(token_of(request), "viewer")
    except FleetError as exc:
        return _page("edgefleet — sign in", f'<p class="error">{escape(str(exc))}</p>{LOGIN}', status=exc.status)
    devices = service.list_devices()
    rollouts = service.list_rollouts(limit=50)
    device_rows = []
    for d in devices:
        rep = d.get("reported") or {}
        model = rep.get("model") or {}
        device_rows.append([
            escape(d["id"]), escape(", ".join(f"{k}={v}" for k, v in sorted(d["labels"].items()))),
            "revoked" if d["revoked"] else ("online" if d["online"] else "offline"), _state(rep.get("state")),
            escape(f"{model.get('name', '')} {model.get('version', '')}".strip() or "—"), escape(rep.get("provider") or "—"),
            escape(str(rep.get("revision", "—"))), escape((rep.get("error") or "")[:120]),
        ])
    rollout_rows = [[
        str(r["id"]), escape(f"{r['model']} {r['version']}"), _state(r["state"]),
        f"{r['current_wave'] + 1}/{len(r['waves'])}", escape(", ".join(f"{k}: {v}" for k, v in sorted(r["device_states"].items()))),
        escape((r.get("reason") or "")[:200]), escape(r["created_at"][:19]),
    ] for r in rollouts]
    drift_rows = [[escape(a["device_id"]), escape(f"{a['model']} {a['version']}"), escape(a["stat"]), f"{a['psi']:.3f}",
                   _state(a["state"])] for a in service.drift.alerts(state="open")]
    online = sum(d["online"] for d in devices)
    body = (
        f'<p class="who">signed in as {escape(who.name)} ({escape(who.role)}) · <a href="/logout">sign out</a></p>'
        f"<h2>Devices <small>{len(devices)} registered, {online} online</small></h2>"
        + _table(["device", "labels", "link", "state", "model", "provider", "revision", "error"], device_rows)
        + "<h2>Rollouts</h2>"
        + _table(["id", "model", "state", "wave", "devices", "reason", "created"], rollout_rows)
        + "<h2>Drift alerts <small>open; PSI against the model version's baseline</small></h2>"
        + _table(["device", "model", "statistic", "PSI", "state"], drift_rows)
    )
    return _page("edgefleet fleet", body)


@router.post("/login", response_model=None)
def login(request: Request, token: str = Form("")) -> HTMLResponse | RedirectResponse:
    try:
        request.app.state.service.authenticate(token, "viewer")
    except FleetError as exc:
        return _page("edgefleet — sign in", f'<p class="error">{escape(str(exc))}</p>{LOGIN}', status=exc.status)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.get("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE)
    return response

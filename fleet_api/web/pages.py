"""The dashboard's HTTP shell: server-rendered pages and the htmx fragments that keep them live.

Every page and fragment authenticates the same bearer token as the JSON API (from the sign-in cookie) through
the same core call, with the same role the matching API route needs: viewer to read, operator to upload and
to start or steer rollouts. Nothing here decides anything: it parses forms and calls FleetService.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    UploadFile,
)
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from fleet_protocol.messages import Capture

from ..auth import Principal
from ..captures.store import Filters, npy_header
from ..desired.specs import DeviceConfig
from ..errors import FleetError, Forbidden, Invalid, TooLarge, Unauthorized
from ..rollouts.gates import Gates
from ..rollouts.states import ACTIVE as ACTIVE_STATES
from ..routes.security import COOKIE, token_of
from .render import STATIC, make_env, parse_time

router = APIRouter(include_in_schema=False)
env = make_env()

ACTIVE = tuple(s.value for s in ACTIVE_STATES)
DEFAULT_GATES = Gates().model_dump()
# A device's own state is its models' worst: failed first, then moving ones, then serving; "idle" has none.
REPORTED_STATES = ("failed", "removing", "pending", "downloading", "verifying", "building", "loading", "serving", "idle")
MOVING = ("pending", "downloading", "verifying", "building", "loading")
CONNECTION_STATES = ("online", "offline", "revoked")
ACTIONS = {  # action → (states it applies to, button label, confirmation question)
    "pause": (("running",), "Pause", "Pause rollout {id}? No new wave starts until you resume it."),
    "resume": (("paused",), "Resume", "Resume rollout {id}?"),
    "abort": (ACTIVE, "Abort", "Abort rollout {id}? Every device it moved gets its previous model back."),
    "rollback": (("succeeded",), "Roll back", "Roll back rollout {id}? Every device it moved gets its previous model back."),
}
GATE_HELP = {  # gate → (label, what it means, unit)
    "min_success_ratio": ("Min success ratio", "share of a wave that must serve the new version before the next wave starts", "0–1"),
    "max_failure_ratio": ("Max failure ratio", "share of a wave that may fail before the rollout aborts by itself", "0–1"),
    "soak_s": ("Soak time", "a wave must stay healthy this long after reaching its success ratio", "s"),
    "max_concurrent": ("Max devices at once", "devices taking the bundle at once; the rest of a wave wait for a slot", "devices"),
    "wave_timeout_s": ("Wave timeout", "a wave that has not passed by then aborts the rollout", "s"),
    "max_p95_increase_pct": ("Max p95 increase", "p95 latency may exceed the previous version's by at most this much", "%"),
    "max_error_rate": ("Max error rate", "errors / requests on the new version must stay below this", "0–1"),
    "baseline_window_s": ("Baseline window", "how far back the previous version's telemetry is taken for the baseline", "s"),
    "min_shadow_samples": ("Min shadow samples", "shadow mode: live inputs each device must have compared the candidate on", "inputs"),
    "min_shadow_agreement": ("Min shadow agreement", "shadow mode: agreement with the live model (top-1, box F1, characters)", "0–1"),
    "max_shadow_p95_ms": ("Max shadow p95", "shadow mode: the candidate's p95 latency on those inputs", "ms"),
}
assert set(GATE_HELP) == set(DEFAULT_GATES), "every gate needs its help text on the rollout form"
GATE_UNSET = {"max_concurrent": "whole wave"}  # what an empty optional gate means, when not "not checked"


# --- plumbing -------------------------------------------------------------------------------------------------
def _service(request: Request):
    return request.app.state.service


def _principal(request: Request, role: str) -> Principal:
    """The caller, or an HTTP answer that sends the browser to the sign-in page (htmx: HX-Redirect)."""
    try:
        return _service(request).authenticate(token_of(request), role)
    except Unauthorized:
        target = "/login?" + urlencode({"next": _next_of(request)} | ({"expired": "1"} if token_of(request) else {}))
        if request.headers.get("hx-request"):
            raise HTTPException(401, "sign in again", headers={"HX-Redirect": target}) from None
        raise HTTPException(303, "sign in", headers={"Location": target}) from None
    except Forbidden as exc:
        raise HTTPException(403, str(exc)) from None


def _next_of(request: Request) -> str:
    if request.headers.get("hx-request"):  # a fragment's own URL is no page to come back to
        current = request.headers.get("hx-current-url", "")
        path = "/" + current.split("/", 3)[3] if current.count("/") >= 3 else "/"
        return path
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def viewer(request: Request) -> Principal:
    return _principal(request, "viewer")


def operator(request: Request) -> Principal:
    return _principal(request, "operator")


Viewer = Annotated[Principal, Depends(viewer)]
Operator = Annotated[Principal, Depends(operator)]


def render(request: Request, template: str, who: Principal | None = None, status: int = 200, **context: Any) -> HTMLResponse:
    html = env.get_template(template).render(
        request=request, who=who, can_operate=bool(who and who.allows("operator")), path=request.url.path, **context
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def error_page(request: Request, who: Principal | None, exc: FleetError) -> HTMLResponse:
    return render(request, "error.html", who, status=exc.status, title="Not found" if exc.status == 404 else "Error",
                  message=str(exc))


def _safe_next(value: str | None) -> str:
    # Only paths of this site: an open redirect would turn the sign-in page into a phishing helper.
    return value if value and value.startswith("/") and not value.startswith("//") else "/"


# --- static files -------------------------------------------------------------------------------------------
@router.get("/static/{path:path}")
def static(path: str) -> Response:
    file = (STATIC / path).resolve()
    if not file.is_relative_to(STATIC.resolve()) or not file.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    # Vendored files carry their version in the name, so they may be cached for long; our own only briefly.
    max_age = 31536000 if "/vendor/" in f"/{path}" else 300
    return FileResponse(file, headers={"Cache-Control": f"public, max-age={max_age}"})


# --- sign-in ------------------------------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/", expired: str | None = None) -> HTMLResponse:
    notice = "Your session ended or the token was revoked: sign in again." if expired else None
    return render(request, "login.html", next=_safe_next(next), notice=notice)


@router.post("/login", response_model=None)
def login(request: Request, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/") -> Response:
    token = token.strip()
    try:
        _service(request).authenticate(token, "viewer")
    except FleetError as exc:
        message = "Enter an API token." if not token else f"This token was not accepted: {exc}."
        return render(request, "login.html", status=exc.status, next=_safe_next(next), error=message)
    response = RedirectResponse(_safe_next(next), status_code=303)
    # A session cookie: it survives reloads and navigation, not the browser; httponly keeps it from scripts.
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# --- devices ------------------------------------------------------------------------------------------------
def _device_state(d: dict[str, Any]) -> str:
    """The worst state among the device's models (what a person scanning the list must see first)."""
    states = [m.get("state") or "pending" for m in (d.get("models") or {}).values()]
    if not states:
        return "idle" if d.get("reported") else "unknown"
    return min(states, key=lambda s: REPORTED_STATES.index(s) if s in REPORTED_STATES else 0)


def _connection(d: dict[str, Any]) -> str:
    return "revoked" if d["revoked"] else ("online" if d["online"] else "offline")


def _filter_devices(devices: list[dict[str, Any]], labels: str, state: str, q: str) -> tuple[list[dict[str, Any]], str | None]:
    error = None
    wanted: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in labels.split(","))):
        key, sep, value = term.partition("=")
        if not sep or not key.strip():
            error = f"label filter {term!r} is not key=value"
            continue
        wanted[key.strip()] = value.strip()
    out = []
    for d in devices:
        if any(d["labels"].get(k) != v for k, v in wanted.items()):
            continue
        if state in CONNECTION_STATES and _connection(d) != state:
            continue
        if state in REPORTED_STATES and _device_state(d) != state:
            continue
        if q and q.lower() not in d["id"].lower():
            continue
        out.append(d)
    return out, error


def _devices_context(request: Request, labels: str, state: str, q: str) -> dict[str, Any]:
    service = _service(request)
    devices = service.list_devices()
    shown, error = _filter_devices(devices, labels, state, q)
    active = [r for r in service.list_rollouts(limit=50) if r["state"] in ACTIVE]
    live = [d for d in devices if not d["revoked"]]
    stats = {
        "devices": len(live), "online": sum(d["online"] for d in live),
        "serving": sum(_device_state(d) == "serving" for d in live),
        "failing": sum(_device_state(d) == "failed" for d in live),
        "rollouts": len(active),
    }
    label_keys = sorted({f"{k}={v}" for d in devices for k, v in d["labels"].items()})
    return {"devices": shown, "total": len(devices), "stats": stats, "active_rollouts": active, "filter_error": error,
            "filters": {"labels": labels, "state": state, "q": q}, "label_options": label_keys,
            "state_options": CONNECTION_STATES + REPORTED_STATES}


@router.get("/", response_class=HTMLResponse)
def home() -> RedirectResponse:
    return RedirectResponse("/devices", status_code=307)


@router.get("/devices", response_class=HTMLResponse)
def devices_page(request: Request, who: Viewer, labels: str = "", state: str = "", q: str = "") -> HTMLResponse:
    return render(request, "devices.html", who, **_devices_context(request, labels, state, q))


@router.get("/ui/devices", response_class=HTMLResponse)
def devices_fragment(request: Request, who: Viewer, labels: str = "", state: str = "", q: str = "") -> HTMLResponse:
    # with the counts above the table, swapped out of band
    return render(request, "_devices.html", who, fragment=True, **_devices_context(request, labels, state, q))


def device_http_url(reported: dict[str, Any] | None) -> str | None:
    """Where the device's local HTTP server (KServe API, camera view) answers, if it says so."""
    rep = reported or {}
    for where in (rep, rep.get("hardware") or {}):
        url = where.get("http_url") or where.get("url")
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            return url.rstrip("/")
    return None


def _device_context(request: Request, device_id: str) -> dict[str, Any]:
    service = _service(request)
    device = service.get_device(device_id)
    reported = device.get("reported") or {}
    desired = device.get("desired") or {}
    http_url = device_http_url(reported)
    desired_models = desired.get("models") or {}
    # One row per model the device is asked to run or reports: desired vs serving, state, provider, error.
    models = []
    for name in sorted(set(desired_models) | set(device["models"])):
        spec, rep = desired_models.get(name) or {}, device["models"].get(name) or {}
        models.append({**rep, "name": name, "desired": bool(spec), "runtime": spec.get("runtime"),
                       "desired_version": (spec.get("bundle") or {}).get("version") or rep.get("desired_version"),
                       "rollout_id": spec.get("rollout_id") or rep.get("rollout_id"),
                       "state": rep.get("state") or ("pending" if spec else "removing")})
    cameras = []
    reported_cams = device.get("cameras") or {}
    for i, cam in enumerate(desired.get("cameras") or []):
        name = cam.get("name") or f"camera {i}"
        rep = reported_cams.get(name) or {}
        cameras.append({"name": name, "state": rep.get("state"), "error": rep.get("error"),
                        "source": rep.get("source") or (cam.get("source") or {}).get("type", ""),
                        "models": rep.get("models") or [],
                        "view": f"{http_url}/?camera={quote(name)}" if http_url else None})
    for name, rep in reported_cams.items():  # reported but no longer desired: still say so
        if not any(c["name"] == name for c in cameras):
            cameras.append({"name": name, "state": rep.get("state"), "error": rep.get("error"), "source": rep.get("source", ""),
                            "models": rep.get("models") or [], "view": None})
    config = service.get_config(device_id)["config"]
    sources = service.get_desired(device_id).get("sources") or {}
    history = service.device_rollouts(device_id)
    audit = [a for a in service.audit_log(limit=500) if a["target"] == f"device:{device_id}"][:20]
    events = sorted(
        [{"ts": a["ts"], "kind": a["action"], "text": f"by {a['actor']}", "link": None} for a in audit]
        + [{"ts": h["updated_at"], "kind": f"rollout {h['state']}", "link": f"/rollouts/{h['rollout_id']}",
            "text": f"{h['model']} {h['version']} (rollout {h['rollout_id']}, wave {h['wave'] + 1})"
                    + (f": {h['error']}" if h["error"] else "")} for h in history],
        key=lambda e: e["ts"] or "", reverse=True)
    errors = [{"ts": device.get("last_seen"), "where": f"reported (revision {reported.get('revision')})", "text": reported["error"]}] \
        if reported.get("error") else []
    errors += [{"ts": device.get("last_seen"), "where": f"model {m['name']}", "text": m["error"]} for m in models if m.get("error")]
    errors += [{"ts": device.get("last_seen"), "where": f"camera {c['name']}", "text": c["error"]} for c in cameras if c.get("error")]
    errors += [{"ts": h["updated_at"], "where": f"rollout {h['rollout_id']} ({h['model']} {h['version']})", "text": h["error"]}
               for h in history if h["error"]]
    alerts = _alerts_of(request, device_id)
    samples, sample_count = service.captures.list(Filters(device=device_id), limit=4)
    capture = {"policy": desired.get("capture") or Capture().model_dump(), "source": sources.get("capture", "default"),
               "own": config.get("capture"), "samples": samples, "count": sample_count}
    return {"capture": capture, "device": device, "reported": reported, "desired": desired, "models": models, "http_url": http_url,
            "cameras": cameras, "history": history, "events": events[:25], "errors": errors[:10],
            "connection": _connection(device), "state": _device_state(device), "config": config, "sources": sources,
            "alerts": alerts}


def _alerts_of(request: Request, device_id: str | None = None, active: bool | None = True,
               limit: int = 50) -> list[dict[str, Any]] | None:
    """Alerts from fleet insight, newest first (None when the app runs without it)."""
    insights = getattr(request.app.state, "insights", None)
    if insights is None:
        return None
    return [alert_view(a) for a in insights.alerts(active=active, device_id=device_id, limit=limit)]


def alert_view(a: Any) -> dict[str, Any]:
    def iso(ts: float | None) -> str | None:
        return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat() if ts is not None else None

    return {"id": a.id, "device_id": a.device_id, "kind": str(getattr(a.kind, "value", a.kind)), "model": a.model,
            "state": str(getattr(a.state, "value", a.state)), "severity": str(getattr(a.severity, "value", a.severity)),
            "summary": a.summary, "since": iso(a.fired_at or a.started_at), "resolved_at": iso(a.resolved_at),
            "predicted_at": iso(a.predicted_at)}


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(request: Request, who: Viewer, show: str = "active") -> HTMLResponse:
    alerts = _alerts_of(request, active=None if show == "all" else True, limit=200)
    drift = _service(request).drift.alerts(state=None if show == "all" else "open")
    return render(request, "alerts.html", who, alerts=alerts, drift=drift, show=show)


def _device_page(request: Request, device_id: str, who: Principal, status: int = 200, **extra: Any) -> HTMLResponse:
    try:
        context = _device_context(request, device_id)
    except FleetError as exc:
        return error_page(request, who, exc)
    config_text = extra.pop("config_text", None) or json.dumps(
        {k: v for k, v in context["config"].items() if v not in (None, {}, [])}, indent=2)
    return render(request, "device.html", who, status=status, config_text=config_text, **context, **extra)


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(request: Request, device_id: str, who: Viewer) -> HTMLResponse:
    return _device_page(request, device_id, who)


def parse_labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = term.partition("=")
        if not sep or not key.strip():
            raise Invalid(f"label {term!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


@router.post("/ui/devices/{device_id}/labels", response_model=None)
def set_labels(request: Request, device_id: str, who: Operator, labels: Annotated[str, Form()] = "") -> Response:
    service = _service(request)
    try:
        wanted = parse_labels(labels)
        current = service.get_device(device_id)["labels"]
        changes: dict[str, str | None] = {k: None for k in current if k not in wanted} | wanted
        service.update_labels(device_id, changes, who)
    except FleetError as exc:
        return _device_page(request, device_id, who, status=exc.status, label_error=str(exc))
    return RedirectResponse(f"/devices/{quote(device_id)}", status_code=303)


@router.post("/ui/devices/{device_id}/config", response_model=None)
def set_config(request: Request, device_id: str, who: Operator, config: Annotated[str, Form()] = "") -> Response:
    try:
        try:
            parsed = DeviceConfig.model_validate_json(config.strip() or "{}")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "config"
            raise Invalid(f"{where}: {first.get('msg')}") from None
        _service(request).set_config(device_id, parsed, who)
    except FleetError as exc:
        return _device_page(request, device_id, who, status=exc.status, config_error=str(exc), config_text=config)
    return RedirectResponse(f"/devices/{quote(device_id)}", status_code=303)


@router.post("/ui/devices/{device_id}/capture", response_model=None)
def set_capture(request: Request, device_id: str, who: Operator, mode: Annotated[str, Form()] = "own",
                enabled: Annotated[str, Form()] = "", max_per_hour: Annotated[str, Form()] = "60",
                blur_faces: Annotated[str, Form()] = "") -> Response:
    """The device page's capture form: on or off, samples an hour, face blurring; or back to the profiles' say."""
    try:
        if mode == "inherit":
            capture = None
        else:
            try:
                current = _service(request).get_config(device_id)["config"].get("capture") or {}
                capture = Capture.model_validate({**current, "enabled": bool(enabled), "blur_faces": bool(blur_faces),
                                                  "max_per_hour": int(max_per_hour or 0)})
            except (ValueError, ValidationError) as exc:
                raise Invalid(f"capture: {exc}".splitlines()[0][:300]) from None
        _service(request).set_capture(device_id, capture, who)
    except FleetError as exc:
        return _device_page(request, device_id, who, status=exc.status, capture_error=str(exc))
    return RedirectResponse(f"/devices/{quote(device_id)}#capture-card", status_code=303)


@router.get("/ui/devices/{device_id}", response_class=HTMLResponse)
def device_fragment(request: Request, device_id: str, who: Viewer) -> HTMLResponse:
    return render(request, "_device_status.html", who, **_device_context(request, device_id))


# --- models -------------------------------------------------------------------------------------------------
def _models(request: Request) -> list[dict[str, Any]]:
    """One row per model name: its versions newest first and how many devices serve each."""
    service = _service(request)
    serving: dict[tuple[str, str], int] = {}
    for d in service.list_devices():
        for name, m in (d.get("models") or {}).items():
            if m.get("state") == "serving" and m.get("version"):
                serving[(name, m["version"])] = serving.get((name, m["version"]), 0) + 1
    models: dict[str, dict[str, Any]] = {}
    for b in service.list_bundles():
        m = models.setdefault(b["name"], {"name": b["name"], "task": b["task"], "versions": {}, "serving": 0})
        v = m["versions"].setdefault(b["version"], {"version": b["version"], "variants": [], "created_at": b["created_at"],
                                                    "serving": serving.get((b["name"], b["version"]), 0)})
        v["variants"].append(b)
        v["created_at"] = min(v["created_at"], b["created_at"])
    out = []
    for m in models.values():
        versions = sorted(m["versions"].values(), key=lambda v: v["created_at"], reverse=True)
        out.append({**m, "versions": versions, "latest": versions[0], "serving": sum(v["serving"] for v in versions)})
    return sorted(out, key=lambda m: m["name"])


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, who: Viewer, uploaded: str | None = None) -> HTMLResponse:
    return render(request, "models.html", who, models=_models(request), notice=uploaded and f"Uploaded {uploaded}.")


@router.post("/ui/models", response_model=None)
def upload_model(request: Request, who: Operator, bundle: Annotated[UploadFile, File()]) -> Response:
    service = _service(request)
    limit = int(service.settings.max_bundle_mb * 1024 * 1024)
    tmp = service.store.new_upload()
    try:
        total = 0
        with open(tmp, "wb") as out:
            while block := bundle.file.read(1 << 20):
                total += len(block)
                if total > limit:
                    raise TooLarge(f"bundle exceeds the {limit}-byte limit")
                out.write(block)
        if total == 0:
            raise Invalid("choose a bundle file (.bundle) to upload")
        view, created = service.upload_bundle(tmp, who)  # verifies the signature and digests; removes tmp
    except FleetError as exc:
        Path(tmp).unlink(missing_ok=True)
        return render(request, "models.html", who, status=exc.status, models=_models(request),
                      error=f"{bundle.filename or 'upload'}: {exc}")
    what = f"{view['name']} {view['version']}" + ("" if created else " (already registered, identical)")
    return RedirectResponse(f"/models/{quote(view['name'])}?" + urlencode({"version": view["version"], "uploaded": what}),
                            status_code=303)


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(request: Request, name: str, who: Viewer, version: str | None = None, uploaded: str | None = None) -> HTMLResponse:
    try:
        rows = _service(request).model_versions(name)
    except FleetError as exc:
        return error_page(request, who, exc)
    model = next(m for m in _models(request) if m["name"] == name)
    chosen = version if any(r["version"] == version for r in rows) else model["latest"]["version"]
    variants = [r for r in rows if r["version"] == chosen]
    return render(request, "model.html", who, model=model, version=chosen, variants=variants,
                  notice=uploaded and f"Uploaded {uploaded}.")


# --- rollouts -----------------------------------------------------------------------------------------------
@router.get("/rollouts", response_class=HTMLResponse)
def rollouts_page(request: Request, who: Viewer) -> HTMLResponse:
    return render(request, "rollouts.html", who, rollouts=_service(request).list_rollouts(limit=200))


@router.get("/ui/rollouts", response_class=HTMLResponse)
def rollouts_fragment(request: Request, who: Viewer) -> HTMLResponse:
    return render(request, "_rollouts.html", who, rollouts=_service(request).list_rollouts(limit=200))


def _form_context(request: Request, form: dict[str, str]) -> dict[str, Any]:
    versions = list(dict.fromkeys(f"{b['name']}@{b['version']}" for b in _service(request).list_bundles()))
    # newest upload first: the version one usually rolls out
    # an empty field takes the fleet's default (EDGEFLEET_API_ROLLOUT_MAX_CONCURRENT), shown as the placeholder
    pace = _service(request).settings.rollout_max_concurrent
    gates = {**DEFAULT_GATES, "max_concurrent": pace} if pace else DEFAULT_GATES
    return {"form": form, "model_versions": versions[::-1], "gates": gates, "gate_help": GATE_HELP,
            "gate_unset": GATE_UNSET}


@router.get("/rollouts/new", response_class=HTMLResponse)
def new_rollout_page(request: Request, who: Viewer, model: str | None = None) -> HTMLResponse:
    if not who.allows("operator"):  # a page, so a page that says why rather than a JSON 403
        return error_page(request, who, Forbidden(f"token {who.name!r} has role {who.role!r}; starting a rollout needs 'operator'"))
    form = {"model_version": model or "", "selector": "", "waves": "1,50%,100%"}
    return render(request, "rollout_new.html", who, **_form_context(request, form))


def _parse_gates(form: dict[str, str]) -> dict[str, Any]:
    gates: dict[str, Any] = {}
    for name in DEFAULT_GATES:
        raw = (form.get(f"gate_{name}") or "").strip()
        if not raw:
            continue  # the default
        try:
            gates[name] = float(raw)
        except ValueError:
            raise Invalid(f"gate {name}: {raw!r} is not a number") from None
    return gates


def _split_model(value: str) -> tuple[str, str]:
    name, sep, version = (value or "").partition("@")
    if not sep or not name or not version:
        raise Invalid("choose the model version to roll out")
    return name, version


@router.post("/ui/rollouts/preview", response_class=HTMLResponse)
async def rollout_preview(request: Request, who: Viewer) -> HTMLResponse:
    form = {k: str(v) for k, v in (await request.form()).items()}
    try:
        model = (form.get("model_version") or "").partition("@")[0] or None
        preview = _service(request).preview_rollout(form.get("selector", ""), form.get("waves") or "100%", model)
    except FleetError as exc:
        return render(request, "_rollout_preview.html", who, error=str(exc))
    waves = [[d for d in preview["devices"] if d["wave"] == k] for k in range(len(preview["waves"]))]
    return render(request, "_rollout_preview.html", who, preview=preview, waves=waves, model=model,
                  busy=[d for d in preview["devices"] if d["busy_in"]])


@router.post("/ui/rollouts", response_model=None)
async def create_rollout(request: Request, who: Operator) -> Response:
    form = {k: str(v) for k, v in (await request.form()).items()}
    try:
        model, version = _split_model(form.get("model_version", ""))
        rollout = _service(request).create_rollout(model, version, form.get("selector", ""), form.get("waves") or "100%",
                                                   _parse_gates(form), who)
    except FleetError as exc:
        return render(request, "rollout_new.html", who, status=exc.status, error=str(exc), **_form_context(request, form))
    return RedirectResponse(f"/rollouts/{rollout['id']}", status_code=303)


def _rollout_context(request: Request, rollout_id: int) -> dict[str, Any]:
    service = _service(request)
    rollout = service.get_rollout(rollout_id)
    devices = {d["id"]: d for d in service.list_devices()}
    previous = service.rollout_previous(rollout_id)
    waves = []
    before = 0
    members = rollout["devices"]
    for k, cumulative in enumerate(rollout["waves"]):
        rows = [{**m, "device": devices.get(m["device_id"], {}), "previous": previous.get(m["device_id"])}
                for m in members if m["wave"] == k]
        counts: dict[str, int] = {}
        for m in rows:
            counts[m["state"]] = counts.get(m["state"], 0) + 1
        size = cumulative - before
        if rollout["state"] in ACTIVE:
            phase = "done" if k < rollout["current_wave"] else ("current" if k == rollout["current_wave"] else "next")
        else:
            phase = "done" if k <= rollout["current_wave"] else "skipped"
        label = {"done": "passed", "next": "waiting", "skipped": "not started"}.get(phase, rollout["state"])
        if phase == "current" and rollout["state"] == "running":
            enough = size and counts.get("succeeded", 0) / size >= rollout["gates"].get("min_success_ratio", 1.0)
            label = "soaking" if enough else "in progress"
        elif phase == "done" and rollout["state"] in ("aborted", "rolled_back"):
            label = "reverted" if counts.get("reverted") else rollout["state"].replace("_", " ")
        waves.append({"number": k + 1, "size": size, "cumulative": cumulative, "rows": rows, "counts": counts,
                      "phase": phase, "label": label})
        before = cumulative
    totals: dict[str, int] = {}
    for m in members:
        totals[m["state"]] = totals.get(m["state"], 0) + 1
    actions = [(name, label, question.format(id=rollout_id)) for name, (states, label, question) in ACTIONS.items()
               if rollout["state"] in states]
    return {"rollout": rollout, "waves": waves, "totals": totals, "actions": actions, "live": rollout["state"] in ACTIVE,
            "gate_help": GATE_HELP, "gate_unset": GATE_UNSET}


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_page(request: Request, rollout_id: int, who: Viewer) -> HTMLResponse:
    try:
        return render(request, "rollout.html", who, **_rollout_context(request, rollout_id))
    except FleetError as exc:
        return error_page(request, who, exc)


@router.get("/ui/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_fragment(request: Request, rollout_id: int, who: Viewer) -> HTMLResponse:
    return render(request, "_rollout_progress.html", who, **_rollout_context(request, rollout_id))


@router.post("/ui/rollouts/{rollout_id}/{action}", response_class=HTMLResponse)
def rollout_action(request: Request, rollout_id: int, action: str, who: Operator) -> HTMLResponse:
    if action not in ACTIONS:
        raise HTTPException(404, f"no action {action!r}")
    notice = error = None
    try:
        _service(request).control_rollout(rollout_id, action, who)
        notice = {"pause": "Paused.", "resume": "Resumed.", "abort": "Aborted: devices are going back to their previous model.",
                  "rollback": "Rolled back: devices are going back to their previous model."}[action]
    except FleetError as exc:
        error = str(exc)
    return render(request, "_rollout_progress.html", who, notice=notice, error=error, **_rollout_context(request, rollout_id))


# --- captured samples ---------------------------------------------------------------------------------------
CAPTURE_PAGE = 48
CAPTURE_REASONS = ("low_confidence", "shadow_disagrees")


def capture_boxes(c: dict[str, Any]) -> dict[str, Any] | None:
    """Detections of a sample's outputs as an SVG overlay: a viewBox and a box each. Boxes are in the sample's
    pixels (its width × height); boxes that all fit in [0, 1] are taken as fractions of the image."""
    found = [d for d in (c.get("outputs") or {}).get("detections") or [] if isinstance(d, dict)
             and isinstance(d.get("box"), list | tuple) and len(d["box"]) == 4
             and all(isinstance(v, int | float) for v in d["box"])]
    if not found or not (c.get("width") and c.get("height")):
        return None
    fractions = all(0 <= v <= 1 for d in found for v in d["box"])
    w, h = (1, 1) if fractions else (c["width"], c["height"])
    boxes = [{"x": min(d["box"][0], d["box"][2]), "y": min(d["box"][1], d["box"][3]),
              "w": abs(d["box"][2] - d["box"][0]), "h": abs(d["box"][3] - d["box"][1]),
              "label": str(d.get("label", "")), "score": d.get("score"), "text": d.get("text")} for d in found]
    return {"w": w, "h": h, "stroke": 0.004 if fractions else max(w, h) / 250, "boxes": boxes}


def capture_summary(outputs: dict[str, Any]) -> str:
    """The provisional labels in a few words (a thumbnail's caption)."""
    if isinstance(outputs.get("detections"), list):
        n = len(outputs["detections"])
        names = sorted({str(d.get("label", "?")) for d in outputs["detections"] if isinstance(d, dict)})
        return f"{n} detection{'s' if n != 1 else ''}" + (f" · {', '.join(names[:3])}" if names else "")
    if "label" in outputs:
        return f"label {outputs['label']}"
    if "text" in outputs:
        return f"“{str(outputs['text'])[:28]}”"
    return ", ".join(sorted(outputs))[:32] or "no outputs"


def _capture_filters(device: str, model: str, reason: str) -> tuple[Filters, dict[str, str]]:
    chosen = {"device": device.strip(), "model": model.strip(), "reason": reason if reason in CAPTURE_REASONS else ""}
    return Filters(device=chosen["device"] or None, model=chosen["model"] or None,
                   reason=chosen["reason"] or None), chosen


@router.get("/captures", response_class=HTMLResponse)
def captures_page(request: Request, who: Viewer, device: str = "", model: str = "", reason: str = "",
                  page: int = Query(1, ge=1, le=100_000)) -> HTMLResponse:
    store = _service(request).captures
    filters, chosen = _capture_filters(device, model, reason)
    samples, total = store.list(filters, CAPTURE_PAGE, (page - 1) * CAPTURE_PAGE)
    for c in samples:
        c["summary"] = capture_summary(c["outputs"])
        if c["content_type"] == "application/x-npy":
            c["npy"] = npy_header(store.root / c["file"])
    usage = store.usage()
    query = {k: v for k, v in chosen.items() if v}
    pages = max(1, -(-total // CAPTURE_PAGE))
    return render(request, "captures.html", who, samples=samples, total=total, usage=usage, filters=chosen,
                  page=page, pages=pages, reasons=CAPTURE_REASONS,
                  dataset_url="/v1/captures/dataset" + (f"?{urlencode(query)}" if query else ""),
                  page_url=lambda n: "/captures?" + urlencode({**query, "page": n}),
                  device_options=[d["device_id"] for d in usage["devices"]],
                  model_options=[m["model"] for m in usage["models"]])


@router.get("/captures/{capture_id}", response_class=HTMLResponse)
def capture_page(request: Request, capture_id: int, who: Viewer) -> HTMLResponse:
    try:
        c = _service(request).captures.get(capture_id)
    except FleetError as exc:
        return error_page(request, who, exc)
    if c["content_type"] == "application/x-npy":
        c["npy"] = npy_header(_service(request).captures.root / c["file"])
    return render(request, "capture.html", who, c=c, overlay=capture_boxes(c),
                  outputs_text=json.dumps(c["outputs"], indent=2))


@router.post("/ui/captures/{capture_id}/delete", response_model=None)
def delete_capture(request: Request, capture_id: int, who: Operator) -> Response:
    try:
        c = _service(request).delete_capture(capture_id, who)
    except FleetError as exc:
        return error_page(request, who, exc)
    return RedirectResponse("/captures?" + urlencode({"device": c["device_id"]}), status_code=303)


# --- audit --------------------------------------------------------------------------------------------------
@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, who: Viewer, action: str = "", before_id: int | None = Query(None, ge=1)) -> HTMLResponse:
    page_size = 50
    entries = _service(request).audit_log(page_size + 1, action or None, before_id)
    more = len(entries) > page_size
    entries = entries[:page_size]
    older = "/audit?" + urlencode({"action": action, "before_id": entries[-1]["id"]}) if more and entries else None
    actions = ("model.", "rollout.", "device.", "profile.", "token.", "capture.")
    return render(request, "audit.html", who, entries=entries, action=action, older=older, action_options=actions,
                  first_page=before_id is None)


def audit_target_link(target: str | None) -> str | None:
    kind, _, key = (target or "").partition(":")
    if kind == "device":
        return f"/devices/{quote(key)}"
    if kind == "rollout":
        return f"/rollouts/{key}"
    if kind == "capture":
        return f"/captures/{key}"
    if "@" in (target or ""):
        name, _, version = target.partition("@")  # type: ignore[union-attr]
        return f"/models/{quote(name)}?" + urlencode({"version": version})
    return None


env.globals.update(audit_target_link=audit_target_link, device_state=_device_state, now=lambda: dt.datetime.now(dt.UTC), parse_time=parse_time)

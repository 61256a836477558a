"""The fleet API over HTTP: one method per endpoint, plain dicts back, two exception types out.

Knows nothing of the terminal (no printing, no exit codes): the command layer decides what a failure means.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

UPLOAD_BLOCK = 256 * 1024


class ApiError(Exception):
    """The API answered with an error status; `message` is its own one-line explanation."""

    def __init__(self, status: int, message: str, method: str = "", path: str = "", ours: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.method = method
        self.path = path
        self.ours = ours  # False: not the fleet API's own {"error": …} (a missing route, a proxy, another server)


class Unreachable(Exception):
    """No answer at all: connection refused, DNS, TLS, timeout."""


def _is_ours(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "error" in body


def _message(response: httpx.Response) -> str:
    """The API's `{"error": ...}` (ours) or `{"detail": ...}` (FastAPI's own 404/405), else the reason phrase."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            return body["error"]
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):  # pydantic errors without our handler
            return "; ".join(f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg')}" for d in detail if isinstance(d, dict))
    if response.headers.get("content-type", "").startswith("text/plain") and response.text.strip():
        return response.text.strip().splitlines()[0][:200]
    return response.reason_phrase  # an HTML page or nothing: not an answer of the fleet API's own


class ApiClient:
    def __init__(self, server: str, token: str | None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise Unreachable(f"the fleet API at {self.server} did not answer in time ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach the fleet API at {self.server}: {exc}") from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, _message(response), method, path, _is_ours(response))
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return _decode(self.request(method, path, **kwargs), self.server)

    # --- auth, tokens, audit ------------------------------------------------------------------------------
    def whoami(self) -> dict:
        return self._json("GET", "/v1/whoami")

    def list_tokens(self) -> list[dict]:
        return self._json("GET", "/v1/tokens")

    def create_token(self, name: str, role: str) -> dict:
        return self._json("POST", "/v1/tokens", json={"name": name, "role": role})

    def revoke_token(self, token_id: int) -> dict:
        return self._json("DELETE", f"/v1/tokens/{token_id}")

    def audit(self, limit: int = 100, action: str | None = None, before_id: int | None = None) -> list[dict]:
        params = _params(limit=limit, action=action, before_id=before_id)
        return self._json("GET", "/v1/audit", params=params)

    # --- devices ------------------------------------------------------------------------------------------
    def list_devices(self) -> list[dict]:
        return self._json("GET", "/v1/devices")

    def get_device(self, device_id: str) -> dict:
        return self._json("GET", f"/v1/devices/{_seg(device_id)}")

    def register_device(self, device_id: str, labels: dict[str, str]) -> dict:
        return self._json("POST", "/v1/devices", json={"id": device_id, "labels": labels})

    def set_labels(self, device_id: str, changes: dict[str, str | None]) -> dict:
        """PATCH /v1/devices/{id}: the labels named are set, a None value removes one, the others are kept."""
        return self._json("PATCH", f"/v1/devices/{_seg(device_id)}", json={"labels": changes})

    def get_config(self, device_id: str) -> dict:
        return self._json("GET", f"/v1/devices/{_seg(device_id)}/config")

    def set_config(self, device_id: str, config: dict[str, Any]) -> dict:
        """PUT /v1/devices/{id}/config: the device's own configuration (runtime, cameras, …; it wins over profiles)."""
        return self._json("PUT", f"/v1/devices/{_seg(device_id)}/config", json=config)

    def get_desired(self, device_id: str) -> dict:
        return self._json("GET", f"/v1/devices/{_seg(device_id)}/desired")

    def assign_model(self, device_id: str, model: str, version: str, runtime: dict[str, Any] | None = None) -> dict:
        """PUT /v1/devices/{id}/models/{name}: that version of the model on this device, outside any rollout."""
        body: dict[str, Any] = {"version": version} | ({"runtime": runtime} if runtime is not None else {})
        return self._json("PUT", f"/v1/devices/{_seg(device_id)}/models/{_seg(model)}", json=body)

    def remove_model(self, device_id: str, model: str) -> dict:
        return self._json("DELETE", f"/v1/devices/{_seg(device_id)}/models/{_seg(model)}")

    def revoke_device(self, device_id: str) -> dict:
        return self._json("DELETE", f"/v1/devices/{_seg(device_id)}")

    def rotate_credentials(self, device_id: str) -> dict:
        return self._json("POST", f"/v1/devices/{_seg(device_id)}/credentials")

    def telemetry(self, device_id: str, since: dt.datetime | None = None, until: dt.datetime | None = None,
                  limit: int = 60, model: str | None = None) -> dict:
        params = _params(since=since.isoformat() if since else None, until=until.isoformat() if until else None, limit=limit,
                         model=model)
        return self._json("GET", f"/v1/devices/{_seg(device_id)}/telemetry", params=params)

    # --- models -------------------------------------------------------------------------------------------
    def list_models(self) -> list[dict]:
        return self._json("GET", "/v1/models")

    def upload_model(self, path: Path, progress: Callable[[int], None] | None = None) -> tuple[dict, bool]:
        """Stream the bundle from disk (never whole in memory); `progress(n)` after each block sent.
        → (the model version's view, True if it was new; False if the same bytes were there already)."""
        size = os.path.getsize(path)

        def blocks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while block := f.read(UPLOAD_BLOCK):
                    yield block
                    if progress:
                        progress(len(block))

        # A declared length lets the API refuse a bundle above its limit before a byte is sent.
        headers = {"content-type": "application/octet-stream", "content-length": str(size)}
        response = self.request("POST", "/v1/models", content=blocks(), headers=headers)
        return _decode(response, self.server), response.status_code == 201

    # --- profiles -----------------------------------------------------------------------------------------
    def list_profiles(self) -> list[dict]:
        return self._json("GET", "/v1/profiles")

    def get_profile(self, name: str) -> dict:
        return self._json("GET", f"/v1/profiles/{_seg(name)}")

    def put_profile(self, name: str, spec: dict[str, Any]) -> tuple[dict, bool]:
        """PUT /v1/profiles/{name}: create or replace; → (the profile, True if it was created)."""
        response = self.request("PUT", f"/v1/profiles/{_seg(name)}", json=spec)
        return _decode(response, self.server), response.status_code == 201

    def delete_profile(self, name: str) -> dict:
        return self._json("DELETE", f"/v1/profiles/{_seg(name)}")

    # --- alerts (fleet insight) ---------------------------------------------------------------------------
    def list_alerts(self, **filters: Any) -> dict:
        return self._json("GET", "/v1/alerts", params=_params(**filters))

    # --- captured samples ---------------------------------------------------------------------------------
    def list_captures(self, **filters: Any) -> dict:
        """GET /v1/captures: {total, limit, offset, captures}; filters device, model, version, reason, since, until."""
        return self._json("GET", "/v1/captures", params=_params(**filters))

    def get_capture(self, capture_id: int) -> dict:
        return self._json("GET", f"/v1/captures/{capture_id}")

    def capture_usage(self) -> dict:
        return self._json("GET", "/v1/captures/usage")

    def delete_capture(self, capture_id: int) -> dict:
        return self._json("DELETE", f"/v1/captures/{capture_id}")

    def delete_captures(self, **filters: Any) -> dict:
        return self._json("DELETE", "/v1/captures", params=_params(**filters))

    def download_capture(self, capture_id: int, dest: Path, progress: Callable[[int], None] | None = None) -> int:
        """The sample's data (JPEG or .npy) to `dest`; → bytes written."""
        return self.download(f"/v1/captures/{capture_id}/data", dest, progress=progress)

    def download_dataset(self, dest: Path, progress: Callable[[int], None] | None = None, **filters: Any) -> int:
        """The matching samples as a ZIP (data/, labels.json, labels.csv) to `dest`, streamed; → bytes written."""
        return self.download("/v1/captures/dataset", dest, params=_params(**filters), progress=progress)

    def download(self, path: str, dest: Path, params: dict[str, Any] | None = None,
                 progress: Callable[[int], None] | None = None) -> int:
        """GET `path` into `dest` a block at a time (never whole in memory); a partial file never takes its name."""
        part = dest.with_name(f".{dest.name}.part")
        written = 0
        try:
            with self.http.stream("GET", path, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(response.status_code, _message(response), "GET", path, _is_ours(response))
                with open(part, "wb") as f:
                    for block in response.iter_bytes(UPLOAD_BLOCK):
                        f.write(block)
                        written += len(block)
                        if progress:
                            progress(len(block))
            os.replace(part, dest)
        except httpx.TimeoutException as exc:
            raise Unreachable(f"the fleet API at {self.server} did not answer in time ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach the fleet API at {self.server}: {exc}") from None
        finally:
            part.unlink(missing_ok=True)
        return written

    # --- rollouts -----------------------------------------------------------------------------------------
    def create_rollout(self, model: str, version: str, selector: str = "", waves: str = "100%",
                       gates: dict[str, Any] | None = None) -> dict:
        body = {"model": model, "version": version, "selector": selector, "waves": waves, "gates": gates or {}}
        return self._json("POST", "/v1/rollouts", json=body)

    def list_rollouts(self) -> list[dict]:
        return self._json("GET", "/v1/rollouts")

    def get_rollout(self, rollout_id: int) -> dict:
        return self._json("GET", f"/v1/rollouts/{rollout_id}")

    def control_rollout(self, rollout_id: int, action: str, reason: str | None = None) -> dict:
        return self._json("POST", f"/v1/rollouts/{rollout_id}/{action}", json={"reason": reason} if reason else None)


def _decode(response: httpx.Response, server: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ApiError(response.status_code, f"{server}{response.request.url.path} did not answer JSON: is this a fleet API?",
                       response.request.method, response.request.url.path) from None


def _seg(value: str) -> str:
    """One path segment: a device id with '/' or '?' must not change the route."""
    from urllib.parse import quote

    return quote(value, safe="")


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}

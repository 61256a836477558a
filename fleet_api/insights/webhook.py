"""Alerts to a webhook, in the payload Alertmanager sends its webhook receivers (version 4), with retries.

So anything that takes Alertmanager's webhooks (alertmanager-webhook-logger, PagerDuty/Slack bridges, a small
HTTP handler) takes ours; one POST per alert, grouped by (alertname, device).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client import Counter

from .alerts import Alert, AlertState

log = logging.getLogger(__name__)

WEBHOOK = Counter("edgefleet_api_alert_notifications_total", "Alert notifications sent to the webhook, by outcome",
                  ["outcome"])
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "no end yet"
RECEIVER = "edgefleet"


def rfc3339(ts: float | None) -> str:
    if ts is None:
        return ZERO_TIME
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def labels_of(a: Alert) -> dict[str, str]:
    out = {"alertname": a.kind.value, "device": a.device_id, "severity": a.severity.value, "source": "edgefleet"}
    if a.model:
        out["model"] = a.model
    version = a.evidence.get("version")
    if version:
        out["version"] = str(version)
    return out


def annotations_of(a: Alert) -> dict[str, str]:
    out = {"summary": a.summary}
    if a.predicted_at is not None:
        out["predicted_crossing"] = rfc3339(a.predicted_at)
    evidence = {k: v for k, v in a.evidence.items() if k != "series"}  # the fit and the numbers; the series is in the API
    out["evidence"] = json.dumps(evidence, sort_keys=True, default=str)[:4000]
    return out


def payload(a: Alert, external_url: str = "") -> dict[str, Any]:
    lab = labels_of(a)
    group = {"alertname": lab["alertname"], "device": lab["device"]}
    status = "resolved" if a.state == AlertState.resolved else "firing"
    alert = {
        "status": status, "labels": lab, "annotations": annotations_of(a),
        "startsAt": rfc3339(a.fired_at or a.started_at),
        "endsAt": rfc3339(a.resolved_at) if status == "resolved" else ZERO_TIME,
        "generatorURL": f"{external_url.rstrip('/')}/v1/alerts/{a.id}" if external_url else "",
        "fingerprint": hashlib.sha256(a.fingerprint.encode()).hexdigest()[:16],
    }
    common = {k: v for k, v in lab.items()}
    return {
        "version": "4", "groupKey": "{}:" + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(group.items())) + "}",
        "truncatedAlerts": 0, "status": status, "receiver": RECEIVER, "groupLabels": group,
        "commonLabels": common, "commonAnnotations": {"summary": a.summary}, "externalURL": external_url,
        "alerts": [alert],
    }


class Webhook:
    """POSTs one payload; retries connection errors, 5xx and 429 with exponential backoff. `sleep` is injected
    so tests need not wait."""

    def __init__(self, url: str, *, retries: int = 3, backoff_s: float = 1.0, timeout_s: float = 5.0,
                 external_url: str = "", sleep: Callable[[float], None] = time.sleep) -> None:
        self.url, self.retries, self.backoff_s, self.external_url, self.sleep = url, retries, backoff_s, external_url, sleep
        self.client = httpx.Client(timeout=timeout_s)

    def send(self, a: Alert) -> bool:
        body = payload(a, self.external_url)
        for attempt in range(self.retries + 1):
            try:
                r = self.client.post(self.url, json=body)
                if r.status_code < 300:
                    WEBHOOK.labels("sent").inc()
                    return True
                if r.status_code != 429 and r.status_code < 500:
                    # The receiver refuses this payload: sending it again will not change its mind.
                    log.error("alert webhook refused %s (%d): %s", a.fingerprint, r.status_code, r.text[:200])
                    WEBHOOK.labels("refused").inc()
                    return True
                problem = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            WEBHOOK.labels("retried" if attempt < self.retries else "failed").inc()
            if attempt < self.retries:
                self.sleep(self.backoff_s * 2**attempt)
        log.warning("alert webhook %s unreachable for %s (%s); kept for the next round", self.url, a.fingerprint, problem)
        return False

    def close(self) -> None:
        self.client.close()

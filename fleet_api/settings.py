"""Settings of the fleet API (env prefix EDGEFLEET_API_; the database URL also as EDGEFLEET_DATABASE_URL)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet_protocol.encryption import b64d
from fleet_protocol.messages import DEFAULT_CHUNK_SIZE
from fleet_protocol.topics import DEFAULT_PREFIX

from .drift_monitor import DriftSettings


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_API_", populate_by_name=True)

    database_url: str = Field(
        default="sqlite:///fleet.db",
        validation_alias=AliasChoices("EDGEFLEET_API_DATABASE_URL", "EDGEFLEET_DATABASE_URL", "database_url"),
    )
    broker_url: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_tls_ca: Path | None = None
    mqtt_client_id: str = ""  # empty: a unique id per process, so replicas never kick each other off
    # MQTT 5 shared subscription group for fetch/telemetry/events, so API replicas split them instead of each
    # handling every message ("" subscribes plainly). reported/status stay plain: they are retained, and the
    # broker sends no retained messages to shared subscriptions.
    shared_subscription_group: str = "fleet-api"
    # Telemetry on a connection of its own with a lean MQTT reader (fleet_api/mqtt/telemetry_receiver.py), several
    # times cheaper per message than paho; false: telemetry comes through the paho client with everything else.
    telemetry_receiver: bool = True
    # Threads handling device messages (reported, status, hello, fetch, events), each device's on one of them in
    # order. None: 4 on PostgreSQL (a handler mostly waits for the database), 1 on SQLite (one writer at a time).
    mqtt_workers: int | None = Field(default=None, ge=1, le=64)
    # Per-device broker credentials through mosquitto's dynamic security plugin. The API's own MQTT user
    # (mqtt_username) must then be allowed `$CONTROL/dynamic-security/#` (e.g. the admin of `dynsec init`).
    dynsec: bool = False
    # Bearer token registered as an admin on start (for bootstrapping and the demo). Without it, and with no
    # token in the database yet, the API creates one on first start and logs it once.
    admin_token: str | None = None
    topic_prefix: str = DEFAULT_PREFIX
    host: str = "127.0.0.1"
    port: int = 8000
    artifact_dir: Path = Path("artifacts")
    trusted_keys: str = ""  # comma-separated PEM files of the keys whose bundles are accepted
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # Chunk requests for one artifact within this window are served by one publish each.
    chunk_coalesce_ms: float = 100.0
    # Fetch budget: each chunk of an artifact is published on one device's behalf at most this often per window.
    fetch_sends_per_chunk: int = Field(default=4, ge=1, le=255)
    fetch_budget_window_s: float = Field(default=600.0, gt=0)
    # An upload that sends no bytes for this long is cut off (408): a stalled client holds no request forever.
    upload_idle_timeout_s: float = Field(default=30.0, gt=0)
    # Chunks are retained this long (MQTT 5 expiry): devices that subscribe later, on the centre or behind a site
    # broker, take the broker's copy. A chunk is published again only for a device asking for it a second time,
    # and never within a hold of its last publish: chunk_resend_after_s, doubled after each such repeat publish.
    chunk_retain_s: int = Field(default=600, ge=0, le=86_400)
    chunk_resend_after_s: float = Field(default=10.0, ge=0, le=3600)
    max_bundle_mb: float = 2048.0
    # The `max_concurrent` gate of a rollout that does not set it (0: none, every wave told at once). 1,000 keeps
    # a site broker's share of the downloads in memory (~3 MB each, docs/scale.md) and waves of fewer devices
    # unchanged; a rollout can still say `"max_concurrent": null` for whole waves. Shadow rollouts never take it.
    rollout_max_concurrent: int = Field(default=1000, ge=0, le=10_000_000)
    # Captured samples (issue 14): their files live here (default: `captures/` under artifact_dir, the volume that
    # already persists bundles), and the whole fleet's may take at most this much; a sample beyond it is refused.
    capture_dir: Path | None = None
    capture_quota_mb: float = Field(default=1024.0, ge=0)
    tick_interval_s: float = 1.0
    # Telemetry minute rows older than this are deleted, checked every prune interval (0: kept forever). Two rows
    # per device per minute add up: ~2.9 M a day per 1,000 devices (docs/scale.md). Keep it at least as long as
    # the longest baseline_window_s a rollout gate uses.
    telemetry_retention_days: float = Field(default=30.0, ge=0, le=3650)
    telemetry_prune_interval_s: float = Field(default=3600.0, gt=0)
    # Master key (32 bytes, urlsafe base64) that seals model data keys at rest; or a file holding it (a k3s Secret).
    master_key: SecretStr | None = None
    master_key_file: Path | None = None
    # How a device's X25519 public key (for wrapped model keys) becomes trusted: "registration" (only the key
    # given in POST /v1/devices or PUT /v1/devices/{id}/public-key) or "first_contact" (also the key a device
    # reports while it has none: trust on first use, later changes refused).
    key_enrolment: Literal["registration", "first_contact"] = "registration"
    outbox_batch: int = 500  # desired states published (and acknowledged) per outbox transaction
    # drift per device: baseline and recent windows, PSI threshold (EDGEFLEET_API_DRIFT='{"threshold": 0.3}')
    drift: DriftSettings = Field(default_factory=DriftSettings)
    # Insights (fleet_api/insights): alerts are evaluated this often and sent to this webhook in Alertmanager's
    # payload format (empty: no webhook), retried with backoff this many times per round.
    alert_eval_interval_s: float = Field(default=30.0, gt=0)
    alert_webhook_url: str = ""
    alert_webhook_retries: int = Field(default=3, ge=0, le=20)
    alert_external_url: str = ""  # this API's URL as the webhook receiver should link to it
    alert_disk_used_ratio: float = Field(default=0.9, gt=0, le=1)
    alert_memory_used_ratio: float = Field(default=0.9, gt=0, le=1)
    alert_horizon_s: float = Field(default=24 * 3600, gt=0)  # crossings predicted further ahead are not alerted
    alert_for_s: float = Field(default=600, ge=0)  # a condition must hold this long before its alert fires
    # How much history a disk / memory trend needs (points, and half the span in seconds): the defaults suit
    # telemetry every 10 s; an end-to-end test with telemetry every fraction of a second lowers them.
    alert_trend_min_points: int = Field(default=20, ge=3)
    alert_trend_min_span_s: float = Field(default=1800, ge=0)

    def master_key_bytes(self) -> bytes | None:
        text = self.master_key.get_secret_value() if self.master_key else None
        if text is None and self.master_key_file is not None:
            text = self.master_key_file.read_text().strip()
        if text is None:
            return None
        key = b64d(text.strip())
        if len(key) != 32:
            raise ValueError(f"the master key must be 32 bytes (urlsafe base64), got {len(key)}")
        return key

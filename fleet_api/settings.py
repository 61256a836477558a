"""Settings of the fleet API (env prefix EDGEFLEET_API_; the database URL also as EDGEFLEET_DATABASE_URL)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet_protocol.messages import DEFAULT_CHUNK_SIZE
from fleet_protocol.signing import load_public_key
from fleet_protocol.topics import DEFAULT_PREFIX


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
    # Chunks are retained this long (MQTT 5 expiry): devices that subscribe later, on the centre or behind a site
    # broker, take the broker's copy. A chunk is published again only for a device asking for it a second time,
    # and never within chunk_resend_after_s of its last publish.
    chunk_retain_s: int = Field(default=600, ge=0, le=86_400)
    chunk_resend_after_s: float = Field(default=10.0, ge=0, le=3600)
    max_bundle_mb: float = 2048.0
    tick_interval_s: float = 1.0
    outbox_batch: int = 500  # desired states published (and acknowledged) per outbox transaction

    def public_keys(self) -> list:
        return [load_public_key(Path(p.strip()).read_bytes()) for p in self.trusted_keys.split(",") if p.strip()]

"""Tables. All rollout state lives here, so any API process can pick up where another stopped."""

from __future__ import annotations

import datetime as dt
from typing import Any, overload

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@overload
def aware(t: dt.datetime) -> dt.datetime: ...
@overload
def aware(t: None) -> None: ...
def aware(t: dt.datetime | None) -> dt.datetime | None:
    """A timestamp read from the database, UTC-aware: SQLite hands back naive ones."""
    return t.replace(tzinfo=dt.UTC) if t is not None and t.tzinfo is None else t


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # desired: what we want the device to do; revision grows with every change
    desired_revision: Mapped[int] = mapped_column(Integer, default=0)
    desired: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # the outbox: a desired revision is published once, after the commit that made it
    published_revision: Mapped[int] = mapped_column(Integer, default=0)
    # reported: the last thing the device said about itself
    reported: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    reported_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    online: Mapped[bool] = mapped_column(default=False)
    last_seen: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[bool] = mapped_column(default=False)
    # the device's broker username when the broker runs dynamic security (its password is never stored here)
    broker_username: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # the device's own configuration (desired.specs.DeviceConfig); None: profiles and defaults only
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # X25519 public key (urlsafe base64) that model data keys are wrapped for: enrolled at registration or pinned
    # at first contact (settings.key_enrolment). key_revoked: no key is wrapped for it, and none is pinned again.
    public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key_revoked: Mapped[bool] = mapped_column(default=False)


class DeviceModel(Base):
    """A model assigned to a device: by a rollout (rollout_id set) or directly. The desired state's `models`."""

    __tablename__ = "device_models"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    runtime: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # None: config / profiles decide
    rollout_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # a shadow candidate beside the bundle ({sha256, sample_rate, cpu_budget, rollout_id}); None: none
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Profile(Base):
    """Settings for every device whose labels match `selector` (desired.specs.ProfileSpec, stored in `spec`)."""

    __tablename__ = "profiles"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    selector: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Bundle(Base):
    """One signed bundle: a variant (hardware class) of one model version."""

    __tablename__ = "bundles"
    __table_args__ = (UniqueConstraint("name", "version", "hardware_class"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    hardware_class: Mapped[str] = mapped_column(String(64), default="generic")
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    task: Mapped[str] = mapped_column(String(32))
    signed_by: Mapped[str] = mapped_column(String(32))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    selector: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    waves: Mapped[list[Any]] = mapped_column(JSON)  # cumulative device counts per wave
    gates: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    runtime: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # carried to every device it moves
    # shadow mode ({sample_rate, cpu_budget}): each wave evaluates the candidate beside the live bundle first
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # rollouts.states.RolloutState
    current_wave: Mapped[int] = mapped_column(Integer, default=-1)
    wave_started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # when the current wave reached its success ratio: the soak runs from here
    soak_started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class RolloutDevice(Base):
    __tablename__ = "rollout_devices"

    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True)
    wave: Mapped[int] = mapped_column(Integer)
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    # the device's assignment of the rollout's model before it ({sha256, version, runtime, rollout_id}), so an
    # abort can give it back; None: the device had no such model, and an abort removes it
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    revision: Mapped[int | None] = mapped_column(Integer, nullable=True)  # desired revision that moved it
    state: Mapped[str] = mapped_column(String(16), default="waiting")  # rollouts.states.MemberState
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # shadow mode: the device's latest ShadowTelemetry of the candidate (cumulative since the shadow started)
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    succeeded_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class TelemetryMinute(Base):
    """Telemetry rolled up per device, minute, model and version: raw messages are never stored (a fleet sends too
    many). The row with model "" holds the device itself (messages, cpu, memory)."""

    __tablename__ = "telemetry_minutes"
    __table_args__ = (UniqueConstraint("device_id", "minute", "model", "model_version", name="uq_telemetry_minute"),
                      Index("ix_telemetry_minutes_minute", "minute"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    minute: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    model: Mapped[str] = mapped_column(String(128), default="")
    model_version: Mapped[str] = mapped_column(String(64), default="")
    provider: Mapped[str | None] = mapped_column(String(64), nullable=True)
    messages: Mapped[int] = mapped_column(Integer, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    # sums over the messages that carried latency (averages = sum / latency_messages); max of p95 for alerting
    latency_messages: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms_p50_sum: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms_p95_sum: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms_p99_sum: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms_p95_max: Mapped[float | None] = mapped_column(Float, nullable=True)
    cpu_percent_sum: Mapped[float] = mapped_column(Float, default=0.0)
    memory_mb_max: Mapped[float | None] = mapped_column(Float, nullable=True)


class ApiToken(Base):
    """A bearer token; only its sha256 is stored, the token itself is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))  # viewer, operator, admin
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(256), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ModelKey(Base):
    """A model's data key, sealed under the API's master key (never stored or logged in the clear)."""

    __tablename__ = "model_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelPolicy(Base):
    """What the fleet requires of a model's bundles (by model name), checked when a version is given to devices."""

    __tablename__ = "model_policies"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    require_encryption: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class AlertRow(Base):
    """An alert of the insights (fleet_api/insights): pending → firing → resolved. `active_key` is the alert's
    fingerprint (device|kind|model) while it is pending or firing and NULL once resolved, so the database itself
    keeps one active alert per fingerprint, whichever API process evaluated it."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(256), index=True)
    active_key: Mapped[str | None] = mapped_column(String(256), unique=True, nullable=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128), default="")  # "" for the device itself (disk, memory)
    state: Mapped[str] = mapped_column(String(16), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(Text)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    predicted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))  # pending since
    last_true: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    fired_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    notified: Mapped[str | None] = mapped_column(String(16), nullable=True)  # last state a webhook accepted


class CaptureRow(Base):
    """A captured sample (fleet_protocol.capture.Sample): its header here, its data a file under the capture
    folder (captures.store). One row per (device, sample id): a device resending after a lost ack changes nothing."""

    __tablename__ = "captures"
    # AUTOINCREMENT on SQLite too: an id is never given again after its sample was deleted (a browser may cache
    # /v1/captures/{id}/data; PostgreSQL sequences never reuse one anyway).
    __table_args__ = (UniqueConstraint("device_id", "sample_id", name="uq_captures_device_sample"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    sample_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    camera: Mapped[str | None] = mapped_column(String(64), nullable=True)
    taken_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reason: Mapped[str] = mapped_column(String(32))
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    shadow_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the live model's answer: provisional labels
    content_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    faces_blurred: Mapped[bool] = mapped_column(default=False)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))

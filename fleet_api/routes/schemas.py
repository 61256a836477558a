"""Request bodies (all StrictModel: unknown fields are a 422) and response models (so /openapi.json describes
every answer). The core returns plain dicts; FastAPI validates them against these on the way out."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from fleet_protocol.cameras import ModelName
from fleet_protocol.messages import DEVICE_ID_PATTERN, Runtime

from ..desired.specs import (
    PROFILE_NAME_PATTERN,
    LabelKey,
    Labels,
    LabelValue,
    ProfileSpec,
)
from ..rollouts.gates import Gates
from ..strict import StrictModel
from .alert_models import FailureAnalysisOut

# --- requests -----------------------------------------------------------------------------------------------
Selector = Annotated[str, Field(max_length=2048)] | dict[LabelKey, LabelValue]


PUBLIC_KEY_PATTERN = r"^[A-Za-z0-9_-]{43}=?$"


class DeviceIn(StrictModel):
    id: str = Field(max_length=64, description=f"device id: {DEVICE_ID_PATTERN}")
    labels: Labels = Field(default_factory=dict, description="e.g. {'site': 'plant-3', 'hw': 'jetson'}")
    public_key: str | None = Field(default=None, pattern=PUBLIC_KEY_PATTERN,
                                   description="the device's X25519 public key (urlsafe base64; the agent logs it and "
                                               "reports it): encrypted models' data keys are wrapped for it")


class PublicKeyIn(StrictModel):
    public_key: str = Field(pattern=PUBLIC_KEY_PATTERN, description="X25519 public key, urlsafe base64")


class DataKeyIn(StrictModel):
    """The NAME-VERSION.key file that `model-tools bundle --encrypt` writes."""

    key_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    cipher: Literal["AES-256-GCM"] = "AES-256-GCM"
    key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}=?$", description="the 32-byte data key, urlsafe base64")


class PolicyIn(StrictModel):
    require_encryption: bool = Field(description="refuse rollouts and assignments of plaintext bundles of this model")


class LabelsPatch(StrictModel):
    labels: dict[LabelKey, LabelValue | None] = Field(
        max_length=64, description="labels to set; a null value removes that label; labels not named are kept")


class ModelAssignIn(StrictModel):
    version: str = Field(min_length=1, max_length=64)
    runtime: Runtime | None = Field(default=None, description="None: the device config's or a profile's runtime")


class ProfileIn(ProfileSpec):
    name: str = Field(pattern=PROFILE_NAME_PATTERN)


class ShadowIn(StrictModel):
    sample_rate: float = Field(default=0.1, gt=0, le=1, description="share of live inputs mirrored to the candidate")
    cpu_budget: float = Field(default=0.1, gt=0, le=1, description="share of one core the candidate may use")


class RolloutIn(StrictModel):
    model: ModelName
    version: str = Field(min_length=1, max_length=64)
    selector: Selector = Field(default="", description="labels, e.g. 'site=plant-3,hw=jetson'; empty: all devices")
    waves: str | list[str | int] = Field(default="100%", description="cumulative, e.g. '1,10%,50%,100%'")
    gates: Gates = Field(default_factory=Gates)
    runtime: Runtime | None = Field(default=None, description="the model's runtime on every device it moves "
                                    "(e.g. require_provider, precision); None: config / profiles decide")
    shadow: ShadowIn | None = Field(default=None, description="shadow mode: each wave first evaluates the candidate "
                                    "beside the live bundle on the devices' own inputs (gates min_shadow_*)")


class ControlIn(StrictModel):
    reason: str | None = Field(default=None, max_length=500)


class TokenIn(StrictModel):
    name: str = Field(min_length=1, max_length=128)
    role: str = Field(max_length=16, description="viewer (read), operator (+ models, config, rollouts), admin (+ devices, tokens)")


# --- responses ----------------------------------------------------------------------------------------------
class ErrorOut(BaseModel):
    error: str


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    broker: bool
    database: bool


class BundleOut(BaseModel):
    name: str
    version: str
    hardware_class: str
    sha256: str
    size: int
    task: str
    signed_by: str
    created_at: str
    quantization: str | None = None
    encryption_key_id: str | None = Field(default=None, description="set when the model file is encrypted")


class DataKeyOut(BaseModel):
    name: str
    version: str
    key_id: str
    stored: bool


class PolicyOut(BaseModel):
    name: str
    require_encryption: bool


class ReportedModel(BaseModel):
    """One model as the device reports it."""

    state: str | None = None
    version: str | None = Field(default=None, description="the version serving now")
    sha256: str | None = None
    desired_version: str | None = Field(default=None, description="the version the device is working towards")
    provider: str | None = None
    precision: str | None = None
    progress: float | None = None
    golden_passed: bool | None = None
    error: str | None = None
    rollout_id: int | None = None


class Credentials(BaseModel):
    username: str
    password: str
    client_id: str
    broker_url_hint: str


class DeviceOut(BaseModel):
    id: str
    labels: dict[str, str]
    online: bool
    revoked: bool
    last_seen: str | None
    desired_revision: int
    published_revision: int
    reported_revision: int | None = None
    models: dict[str, ReportedModel] = Field(description="reported, per model name")
    cameras: dict[str, dict[str, Any]] = Field(description="reported, per camera name")
    error: str | None = Field(default=None, description="a desired state the device refused as a whole")
    desired: dict[str, Any] | None
    reported: dict[str, Any] | None
    broker_username: str | None
    public_key: str | None = Field(default=None, description="enrolled X25519 key that data keys are wrapped for")
    key_revoked: bool = False


class DeviceWithCredentials(DeviceOut):
    credentials: Credentials | None = Field(default=None, description="with broker dynamic security: shown once, here")


class DeviceConfigOut(BaseModel):
    device_id: str
    config: dict[str, Any]
    desired_revision: int


class DesiredOut(BaseModel):
    device_id: str
    revision: int
    published_revision: int
    desired: dict[str, Any] | None = Field(description="the composed desired state of the newest revision")
    sources: dict[str, Any] = Field(description="which input decided each part (device, profile:NAME, rollout:ID, ...)")
    problems: list[str] = Field(default_factory=list, description="what the device will report failed, e.g. a camera "
                                "naming a model it does not have")


class ProfileOut(BaseModel):
    name: str
    selector: dict[str, str]
    priority: int
    runtime: dict[str, dict[str, Any]]
    cameras: list[dict[str, Any]] | None
    capture: dict[str, Any] | None
    memory_budget_mb: int | None
    created_at: str
    updated_at: str
    devices_changed: list[str] | None = Field(default=None, description="devices that got a new desired revision")


class MemberOut(BaseModel):
    device_id: str
    wave: int
    state: str
    bundle_sha256: str
    revision: int | None
    error: str | None
    previous_version: str | None = None
    reported: ReportedModel | None = None
    shadow: dict[str, Any] | None = None  # shadow mode: the device's latest numbers of the candidate


class WaveOut(BaseModel):
    wave: int
    devices: int
    states: dict[str, int]


class RolloutOut(BaseModel):
    id: int
    model: str
    version: str
    selector: dict[str, str]
    waves: list[int]
    gates: dict[str, Any]
    runtime: dict[str, Any] | None
    shadow: dict[str, Any] | None = None
    state: str
    current_wave: int
    reason: str | None
    created_at: str
    devices: list[MemberOut] | None = None
    wave_progress: list[WaveOut] | None = None
    device_states: dict[str, int] | None = None
    failure_analysis: FailureAnalysisOut | None = None  # what the failed devices share (fleet insight)


class TelemetryMinuteOut(BaseModel):
    minute: str
    model: str | None
    model_version: str | None
    provider: str | None
    messages: int
    requests: int
    errors: int
    error_rate: float
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    latency_ms_p99: float | None
    latency_ms_p95_max: float | None
    cpu_percent: float | None
    memory_mb_max: float | None


class TelemetryOut(BaseModel):
    device_id: str
    minutes: list[TelemetryMinuteOut]


class TokenOut(BaseModel):
    id: int
    name: str
    role: str
    created_at: str
    created_by: str | None
    revoked_at: str | None


class TokenCreated(TokenOut):
    token: str = Field(description="the bearer token: shown once, here")


class WhoAmI(BaseModel):
    name: str
    role: str
    token_id: int | None


class AuditOut(BaseModel):
    id: int
    ts: str
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any]


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409)}

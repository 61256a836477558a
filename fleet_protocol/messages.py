"""JSON messages on the MQTT topics, as pydantic models. Unknown fields are refused, so a typo fails loudly."""

from __future__ import annotations

import time
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
DEFAULT_CHUNK_SIZE = 128 * 1024

DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]


class ProtocolError(ValueError):
    """A payload that is not a valid message of its topic."""


class Message(BaseModel):
    # NaN and Infinity are not numbers a device can mean; letting them in would poison every average downstream.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=False).encode()

    @classmethod
    def parse(cls, payload: bytes | str):
        """Parse a wire payload; every failure is a ProtocolError naming the message kind."""
        try:
            return cls.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
            raise ProtocolError(f"invalid {cls.__name__} message: {where}: {first.get('msg')}") from None


class ModelRef(Message):
    """The exact bundle a device should serve; `sha256` is the bundle file's digest."""

    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    sha256: Sha256
    size: int = Field(gt=0)
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, gt=0, le=16 * 1024 * 1024)

    @property
    def chunk_count(self) -> int:
        return -(-self.size // self.chunk_size)


class Batching(Message):
    enabled: bool = False
    max_batch_size: int = Field(default=8, ge=1, le=1024)
    max_delay_ms: float = Field(default=2.0, ge=0, le=1000)


class RuntimeConfig(Message):
    # Preference order; the agent intersects it with what its onnxruntime offers.
    providers: list[str] = Field(
        default_factory=lambda: [
            "TensorrtExecutionProvider",
            "CUDAExecutionProvider",
            "OpenVINOExecutionProvider",
            "CPUExecutionProvider",
        ]
    )
    # When set, the device must run on this provider or report failed: no silent CPU fallback.
    require_provider: str | None = None
    intra_op_threads: int = Field(default=1, ge=0, le=256)
    batching: Batching = Field(default_factory=Batching)
    sources: list[dict[str, Any]] = Field(default_factory=list)


class Desired(Message):
    """api → device, retained. A higher revision supersedes a lower one."""

    revision: int = Field(ge=0)
    model: ModelRef | None = None
    # None: the device keeps its own runtime configuration (its local settings); the fleet sets one only on purpose.
    runtime: RuntimeConfig | None = None
    rollout_id: int | None = None
    issued_at: float = Field(default_factory=time.time)


class DeviceState(str, Enum):
    idle = "idle"
    downloading = "downloading"
    verifying = "verifying"
    loading = "loading"
    serving = "serving"
    failed = "failed"
    rolled_back = "rolled_back"


class ServingModel(Message):
    name: str
    version: str
    sha256: Sha256


class Reported(Message):
    """device → api, retained. What the device does now, and how far it got with `revision`."""

    revision: int = Field(ge=0)
    state: DeviceState
    model: ServingModel | None = None
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    error: str | None = None
    provider: str | None = None
    providers_available: list[str] = Field(default_factory=list)
    golden_passed: bool | None = None
    hardware: dict[str, Any] = Field(default_factory=dict)
    agent_version: str = ""
    ts: float = Field(default_factory=time.time)


class Fetch(Message):
    """device → api: the chunks of an artifact the device still misses (its resume point)."""

    sha256: Sha256
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=1024, le=16 * 1024 * 1024)
    missing: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=100_000)


class Telemetry(Message):
    model: ServingModel | None = None
    provider: str | None = None
    window_s: float = Field(gt=0)
    requests: int = Field(ge=0)
    errors: int = Field(ge=0)
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    fps: float | None = None
    cpu_percent: float | None = None
    memory_mb: float | None = None
    ts: float = Field(default_factory=time.time)


class Detection(Message):
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the source frame


class Event(Message):
    kind: Literal["detections", "lifecycle"]
    source: str | None = None
    frame_ts: float | None = None
    detections: list[Detection] = Field(default_factory=list)
    detail: dict[str, Any] = Field(default_factory=dict)
    ts: float = Field(default_factory=time.time)


class Status(Message):
    """device → api, retained, and the device's last will."""

    online: bool
    agent_version: str = ""
    ts: float = Field(default_factory=time.time)


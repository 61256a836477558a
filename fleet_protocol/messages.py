"""JSON messages on the MQTT topics, as pydantic models.

Unknown fields are refused, so a typo fails loudly; every number and string is bounded, so one device cannot
make the API store or compute on something absurd; NaN and Infinity are refused everywhere.

Schema 2: a device's desired state is everything it runs — several models by name (each with its bundle, its
runtime and, optionally, a shadow candidate) and its camera pipelines — and its reported state answers per
model and per camera. A device that meets a schema it does not know reports that and keeps what it runs.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from .cameras import MODEL_NAME_PATTERN, Camera, ModelName

SCHEMA = 2
KNOWN_SCHEMAS = frozenset({SCHEMA})
MAX_MESSAGE_BYTES = 256 * 1024  # any JSON message larger than this is refused before parsing

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
DEFAULT_CHUNK_SIZE = 128 * 1024
MAX_COUNT = 2**53  # counters: exact in a float64 and in every database's BIGINT
MAX_ERROR_CHARS = 2000
MAX_MODELS = 32
MAX_CAMERAS = 16

DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Revision = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Millis = Annotated[float, Field(ge=0, le=3_600_000)]
Percent = Annotated[float, Field(ge=0, le=100 * 1024)]  # CPU percent may exceed 100 on many cores
Timestamp = Annotated[float, Field(ge=0, le=32503680000)]  # up to year 3000
ErrorText = Annotated[str, Field(max_length=MAX_ERROR_CHARS)]
ProviderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,64}ExecutionProvider$")]
Version = Annotated[str, Field(min_length=1, max_length=64)]
Scalar = str | int | float | bool | None


class ProtocolError(ValueError):
    """A payload that is not a valid message of its topic."""


class UnknownSchema(ProtocolError):
    """A well-formed message of a schema this side does not know; `revision` is known when it could be read."""

    def __init__(self, schema: Any, revision: int | None) -> None:
        super().__init__(f"unknown schema {schema!r} (this side knows {sorted(KNOWN_SCHEMAS)})")
        self.schema = schema
        self.revision = revision


def _bounded_scalars(value: dict[str, Any], limit: int = 64, chars: int = 256) -> dict[str, Any]:
    if len(value) > limit:
        raise ValueError(f"at most {limit} entries")
    for k, v in value.items():
        if len(k) > 64:
            raise ValueError(f"key {k[:20]!r}… longer than 64 characters")
        if isinstance(v, str) and len(v) > chars:
            raise ValueError(f"value of {k!r} longer than {chars} characters")
    return value


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def parse(cls, payload: bytes | str):
        """Parse a wire payload; every failure is a ProtocolError naming the message kind."""
        if len(payload) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"invalid {cls.__name__} message: {len(payload)} bytes, more than {MAX_MESSAGE_BYTES}")
        try:
            return cls.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
            raise ProtocolError(f"invalid {cls.__name__} message: {where}: {first.get('msg')}") from None


class Versioned(Message):
    """A message that carries `schema`; parsing one of another schema raises UnknownSchema, not a field error."""

    schema_: int = Field(default=SCHEMA, alias="schema")

    @classmethod
    def parse(cls, payload: bytes | str):
        if len(payload) <= MAX_MESSAGE_BYTES:
            schema, revision = peek(payload)
            # not an int (a list, a string) is no schema this side knows either, and must not reach the set lookup
            known = isinstance(schema, int) and not isinstance(schema, bool) and schema in KNOWN_SCHEMAS
            if schema is not None and not known:
                raise UnknownSchema(schema, revision)
        return super().parse(payload)

    @field_validator("schema_")
    @classmethod
    def _known(cls, v: int) -> int:
        if v not in KNOWN_SCHEMAS:
            raise ValueError(f"unknown schema {v} (known: {sorted(KNOWN_SCHEMAS)})")
        return v


def peek(payload: bytes | str) -> tuple[Any, int | None]:
    """`schema` and `revision` of a JSON object, read without validating the rest (None where absent)."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes; parse() refuses it
        return None, None
    if not isinstance(data, dict):
        return None, None
    rev = data.get("revision")
    schema = data.get("schema", 1 if "revision" in data else None)  # schema 1 messages carried no `schema`
    return schema, rev if isinstance(rev, int) and not isinstance(rev, bool) and 0 <= rev <= MAX_COUNT else None


# --- desired: api → device ----------------------------------------------------------------------------------


class BundleRef(Message):
    """The exact bundle a device should hold; `sha256` is the bundle file's digest (its identity)."""

    name: ModelName
    version: Version
    sha256: Sha256
    size: int = Field(gt=0, le=64 * 1024**3)
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=1024, le=16 * 1024 * 1024)

    @property
    def chunk_count(self) -> int:
        return -(-self.size // self.chunk_size)


class Batching(Message):
    enabled: bool = False
    max_batch_size: int = Field(default=8, ge=1, le=1024)
    max_delay_ms: float = Field(default=2.0, ge=0, le=1000)


class Precision(StrEnum):
    """The arithmetic the provider may use; the golden check's tolerance follows it."""

    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


DEFAULT_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)


class Runtime(Message):
    """How one model runs on the device."""

    # Preference order; the agent intersects it with what its onnxruntime offers.
    providers: list[ProviderName] = Field(default_factory=lambda: list(DEFAULT_PROVIDERS), min_length=1, max_length=16)
    # When set, the device must run on this provider or report the model failed: no silent CPU fallback.
    require_provider: ProviderName | None = None
    precision: Precision = Precision.fp32
    intra_op_threads: int = Field(default=1, ge=0, le=256)
    batching: Batching = Field(default_factory=Batching)


class WrappedKey(Message):
    """A model's data key, wrapped for one device's X25519 public key (ephemeral X25519 + HKDF-SHA256 + AES-GCM)."""

    key_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    ephemeral_public_key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}=?$")  # 32 bytes, urlsafe base64
    nonce: str = Field(pattern=r"^[A-Za-z0-9_-]{16}$")  # 12 bytes, urlsafe base64
    ciphertext: str = Field(pattern=r"^[A-Za-z0-9_-]{64}$")  # 32-byte key + 16-byte tag, urlsafe base64


class Shadow(Message):
    """A candidate that receives a sample of the live inputs off the request path, never answering a client."""

    bundle: BundleRef
    sample_rate: float = Field(default=0.1, gt=0, le=1)
    cpu_budget: float = Field(default=0.1, gt=0, le=1)  # share of one core the candidate may use
    key: WrappedKey | None = None


class ModelSpec(Message):
    bundle: BundleRef
    runtime: Runtime = Field(default_factory=Runtime)
    rollout_id: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    key: WrappedKey | None = None  # present when the bundle's model file is encrypted
    shadow: Shadow | None = None


class Capture(Message):
    """Opt-in data capture: inputs with low confidence or shadow disagreement, capped."""

    enabled: bool = False
    max_per_hour: int = Field(default=60, ge=0, le=100_000)
    max_bytes_per_day: int = Field(default=100 * 1024**2, ge=0, le=1024**4)
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    blur_faces: bool = True


class Desired(Versioned):
    """api → device. Everything the device should run; a higher revision supersedes a lower one."""

    revision: Revision
    models: dict[ModelName, ModelSpec] = Field(default_factory=dict, max_length=MAX_MODELS)
    cameras: list[Camera] = Field(default_factory=list, max_length=MAX_CAMERAS)
    # What models may take in memory on the device (MiB); None: the agent's own setting.
    memory_budget_mb: int | None = Field(default=None, ge=1, le=16 * 1024 * 1024)
    capture: Capture = Field(default_factory=Capture)
    issued_at: Timestamp = Field(default_factory=time.time)

    @model_validator(mode="after")
    def _cameras_consistent(self) -> Desired:
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        return self


# --- reported: device → api ---------------------------------------------------------------------------------


class ModelState(StrEnum):
    pending = "pending"  # desired, not started (e.g. waiting for a download slot)
    downloading = "downloading"
    verifying = "verifying"
    building = "building"  # the provider builds its engine (TensorRT: minutes); progress says how far
    loading = "loading"
    serving = "serving"
    failed = "failed"  # the desired bundle could not be applied; `serving` tells what still serves
    removing = "removing"


class CameraState(StrEnum):
    starting = "starting"
    running = "running"
    reconnecting = "reconnecting"
    failed = "failed"


class ServingModel(Message):
    name: ModelName
    version: Version
    sha256: Sha256


class ShadowReport(Message):
    bundle: ServingModel
    state: ModelState
    error: ErrorText | None = None


class ModelReport(Message):
    """One model on the device: where it is with its desired bundle, and what serves meanwhile."""

    state: ModelState
    desired: ServingModel | None = None  # the bundle the desired state asks for
    serving: ServingModel | None = None  # the bundle that answers requests now (the previous one after a failure)
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    error: ErrorText | None = None
    provider: ProviderName | None = None  # the provider the session really uses
    precision: Precision | None = None
    golden_passed: bool | None = None
    rollout_id: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    shadow: ShadowReport | None = None


class CameraReport(Message):
    state: CameraState
    source: str = Field(default="", max_length=2048)  # described, credentials redacted
    models: list[ModelName] = Field(default_factory=list, max_length=8)
    error: ErrorText | None = None


class Reported(Versioned):
    """device → api, retained. `revision` is the newest desired revision the device has taken up."""

    revision: Revision
    models: dict[ModelName, ModelReport] = Field(default_factory=dict, max_length=MAX_MODELS)
    cameras: dict[Annotated[str, Field(max_length=64)], CameraReport] = Field(default_factory=dict, max_length=MAX_CAMERAS)
    error: ErrorText | None = None  # a desired state refused as a whole (unknown schema, invalid)
    providers_available: list[ProviderName] = Field(default_factory=list, max_length=16)
    hardware: dict[str, Scalar] = Field(default_factory=dict)
    agent_version: str = Field(default="", max_length=64)
    onnxruntime_version: str = Field(default="", max_length=64)
    public_key: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{43}=?$")  # X25519, for wrapped keys
    ts: Timestamp = Field(default_factory=time.time)

    _hardware = field_validator("hardware")(_bounded_scalars)


class Hello(Versioned):
    """device → api on every connect: 'send me my desired state'; the API answers from its database."""

    revision: Revision = 0  # the newest desired revision the device holds (0: none)
    agent_version: str = Field(default="", max_length=64)


# --- the rest -----------------------------------------------------------------------------------------------


class Fetch(Message):
    """device → api: the chunks of an artifact the device still misses (its resume point)."""

    sha256: Sha256
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=1024, le=16 * 1024 * 1024)
    missing: list[Annotated[int, Field(ge=0, le=MAX_COUNT)]] = Field(min_length=1, max_length=100_000)


HISTOGRAM_BINS = 10  # fixed bins over [0, 1]: confidence and normalised input statistics


class Histogram(Message):
    counts: list[Count] = Field(min_length=HISTOGRAM_BINS, max_length=HISTOGRAM_BINS)


class ShadowTelemetry(Message):
    version: Version
    samples: Count
    agreement: float | None = Field(default=None, ge=0, le=1)  # task-aware: top-1, box F1, characters
    max_abs_diff: float | None = Field(default=None, ge=0, le=1e30)
    mean_abs_diff: float | None = Field(default=None, ge=0, le=1e30)
    latency_ms_p50: Millis | None = None
    latency_ms_p95: Millis | None = None
    dropped: Count = 0  # samples skipped to stay within the CPU budget


class ModelTelemetry(Message):
    version: Version
    provider: ProviderName | None = None
    requests: Count = 0
    errors: Count = 0
    latency_ms_p50: Millis | None = None
    latency_ms_p95: Millis | None = None
    latency_ms_p99: Millis | None = None
    confidence: Histogram | None = None
    input_mean: Histogram | None = None  # mean brightness of inputs, in [0, 1]
    shadow: ShadowTelemetry | None = None


class CameraTelemetry(Message):
    fps: float = Field(ge=0, le=10_000)
    frames: Count = 0
    dropped: Count = 0


class Health(Message):
    """The device itself: what predicts trouble before it happens."""

    disk_free_bytes: Count | None = None  # of the model store's file system
    disk_total_bytes: Count | None = None
    memory_used_mb: float | None = Field(default=None, ge=0, le=1e9)
    memory_total_mb: float | None = Field(default=None, ge=0, le=1e9)
    agent_rss_mb: float | None = Field(default=None, ge=0, le=1e9)
    cpu_percent: Percent | None = None
    load1: float | None = Field(default=None, ge=0, le=1e6)
    temperature_c: float | None = Field(default=None, ge=-100, le=300)
    uptime_s: float | None = Field(default=None, ge=0, le=1e10)
    agent_restarts: Count | None = None


class Telemetry(Versioned):
    """device → api, QoS 0, one per window."""

    window_s: float = Field(gt=0, le=86_400)
    models: dict[ModelName, ModelTelemetry] = Field(default_factory=dict, max_length=MAX_MODELS)
    cameras: dict[Annotated[str, Field(max_length=64)], CameraTelemetry] = Field(default_factory=dict, max_length=MAX_CAMERAS)
    health: Health | None = None
    ts: Timestamp = Field(default_factory=time.time)


class Detection(Message):
    label: str = Field(max_length=128)
    score: float = Field(ge=0, le=1)
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the source frame
    text: str | None = Field(default=None, max_length=1024)  # what a later stage read (OCR)


class Event(Message):
    kind: Literal["detections", "lifecycle"]
    source: str | None = Field(default=None, max_length=128)  # the camera's name
    frame_ts: Timestamp | None = None
    detections: list[Detection] = Field(default_factory=list, max_length=1000)
    detail: dict[str, Scalar] = Field(default_factory=dict)
    ts: Timestamp = Field(default_factory=time.time)

    _detail = field_validator("detail")(_bounded_scalars)


class Status(Message):
    """device → api, retained, and the device's last will."""

    online: StrictBool
    agent_version: str = Field(default="", max_length=64)
    ts: Timestamp = Field(default_factory=time.time)


__all__ = [
    "MODEL_NAME_PATTERN", "SCHEMA", "BundleRef", "Batching", "Camera", "CameraReport", "CameraState",
    "CameraTelemetry", "Capture", "Desired", "Detection", "Event", "Fetch", "Health", "Hello", "Histogram",
    "ModelReport", "ModelSpec", "ModelState", "ModelTelemetry", "Precision", "ProtocolError", "Reported",
    "Runtime", "ServingModel", "Shadow", "ShadowReport", "ShadowTelemetry", "Status", "Telemetry",
    "UnknownSchema", "WrappedKey", "peek",
]

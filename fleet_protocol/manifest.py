"""The bundle manifest: what a model is, how to feed it, and the digest of every file in its bundle."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST_SCHEMA_VERSION = 1
SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")

Task = Literal["classification", "detection", "ocr-recognition", "ocr-detection", "ocr-orientation", "regression", "other"]
Quantization = Literal["none", "dynamic-int8", "static-qdq-int8", "fp16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Strict):
    name: str
    dtype: str  # numpy dtype name: float32, int64, uint8 …
    shape: list[int | str]  # symbolic dims are strings ("batch")


class Preprocessing(_Strict):
    size: tuple[int, int] | None = None  # width, height
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["RGB", "BGR", "GRAY"] = "RGB"
    scale: float = 1.0  # applied first: x * scale
    mean: list[float] = Field(default_factory=list)  # then (x - mean) / std per channel
    std: list[float] = Field(default_factory=list)


class QuantizationInfo(_Strict):
    method: Quantization = "none"
    calibration: str | None = None
    calibration_size: int | None = None


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Golden(_Strict):
    """How a device checks the model against its golden outputs.

    `tolerance`: |actual - expected| <= atol + rtol * |expected| elementwise; atol/rtol are for fp32 and the
    device widens them to what the runtime's precision can hold (fp16, int8). Task-aware checks compare what
    the task needs instead: `top1` the same class per item (last axis), `boxes` every golden box matched by a
    box with IoU >= `iou` (rows of the last axis, x1 y1 x2 y2 first), `text` the same symbol sequence (argmax
    over the last axis, repeats and index 0 kept: the CTC decoding is the same on both sides).
    """

    atol: float = Field(default=1e-4, ge=0, le=1e6)
    rtol: float = Field(default=1e-3, ge=0, le=1e6)
    compare: Literal["tolerance", "top1", "boxes", "text"] = "tolerance"
    iou: float = Field(default=0.5, gt=0, le=1)


class Encryption(_Strict):
    """The model file is ciphertext: `cipher` under the data key `key_id` (see fleet_protocol.encryption)."""

    cipher: Literal["AES-256-GCM"] = "AES-256-GCM"
    key_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")


class Manifest(_Strict):
    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: str
    version: str
    task: Task = "other"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: Preprocessing | None = None
    labels: list[str] = Field(default_factory=list)
    quantization: QuantizationInfo = Field(default_factory=QuantizationInfo)
    hardware_class: str = "generic"
    measurements: dict[str, Any] = Field(default_factory=dict)  # accuracy, latency per provider
    golden: Golden = Field(default_factory=Golden)
    encryption: Encryption | None = None  # None: model.onnx is plaintext
    files: dict[str, FileEntry]
    created_at: str = ""
    extra: dict[str, Any] = Field(default_factory=dict)  # task-specific settings (anchors, thresholds …)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("model name must be lower-case letters, digits, '.', '_' or '-' (max 128)")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not SEMVER.match(v):
            raise ValueError(f"version {v!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return v

    def canonical_bytes(self) -> bytes:
        """The exact bytes that are signed: sorted keys, no whitespace, so every side agrees."""
        import json

        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

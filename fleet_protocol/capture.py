"""Captured samples on the wire: device → api on `capture`, acknowledged api → device on `capture_ack`.

A sample is one MQTT message (QoS 1): a JSON header (`Sample`) and the data it describes (a JPEG of a camera
frame, or an `.npy` of an HTTP request's input tensor) in one binary envelope:

    b"EFC1" | header length (4 bytes, big-endian) | header JSON | data

The header names the data's size and sha256, so a cut or altered message is refused whole. Uploads resume at
sample granularity: the device keeps a sample in its spool until the API acknowledges it (`SampleAck`), and
sends it again after a reconnect or when the ack does not come; the API stores a sample once by (device, id),
and acknowledges a repeat again without storing it twice. A sample fits in one message (`MAX_SAMPLE_BYTES`):
the device re-encodes a frame smaller before it sends it, so nothing needs reassembly.
"""

from __future__ import annotations

import hashlib
import time
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from .cameras import ModelName
from .messages import MAX_MESSAGE_BYTES, Message, ProtocolError, Sha256, Timestamp, Version

MAGIC = b"EFC1"
MAX_HEADER_BYTES = 16 * 1024  # the model's outputs (provisional labels) included
MAX_SAMPLE_BYTES = MAX_MESSAGE_BYTES - MAX_HEADER_BYTES - 8  # the data: one message, whole
SAMPLE_ID_PATTERN = r"^[0-9a-f]{32}$"

SampleId = Annotated[str, Field(pattern=SAMPLE_ID_PATTERN)]
Reason = Literal["low_confidence", "shadow_disagrees"]
ContentType = Literal["image/jpeg", "application/x-npy"]
# Why the API did not keep a sample: its fleet's quota is full, or the sample itself is bad. Either way the device
# drops it from its spool (sending it again would not change the answer) and counts it.
Refusal = Literal["quota", "invalid", "unknown_model"]


class Sample(Message):
    """The header of one captured input: what the model said about it (provisional labels) and why it was kept."""

    id: SampleId
    model: ModelName
    version: Version
    camera: str | None = Field(default=None, max_length=64)  # None: an HTTP request's input
    taken_at: Timestamp
    reason: Reason
    confidence: float | None = Field(default=None, ge=0, le=1)
    shadow_version: Version | None = None  # the candidate that disagreed, when that is why
    # The live model's answer in the task's terms: {"label", "score"} for classification, {"detections": [...]}
    # for detection, {"text"} for text; bounded by MAX_HEADER_BYTES as a whole.
    outputs: dict[str, Any] = Field(default_factory=dict, max_length=64)
    content_type: ContentType
    width: int | None = Field(default=None, ge=1, le=16384)
    height: int | None = Field(default=None, ge=1, le=16384)
    faces_blurred: bool = False
    size: int = Field(ge=1, le=MAX_SAMPLE_BYTES)
    sha256: Sha256

    @field_validator("outputs")
    @classmethod
    def _plain_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if len(key) > 64:
                raise ValueError(f"output name {key[:20]!r}… longer than 64 characters")
        return value


class SampleAck(Message):
    """api → device, QoS 1: the sample is stored (or was already), or refused and why."""

    id: SampleId
    stored: bool
    refused: Refusal | None = None
    ts: Timestamp = Field(default_factory=time.time)


def pack(header: Sample, data: bytes) -> bytes:
    if len(data) != header.size or hashlib.sha256(data).hexdigest() != header.sha256:
        raise ValueError("the header does not describe the data (size or sha256)")
    head = header.to_bytes()
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError(f"sample header of {len(head)} bytes, more than {MAX_HEADER_BYTES}: outputs too large")
    return MAGIC + len(head).to_bytes(4, "big") + head + data


def describe(data: bytes, **fields: Any) -> Sample:
    """The header for `data`: its size and sha256 filled in."""
    return Sample(size=len(data), sha256=hashlib.sha256(data).hexdigest(), **fields)


def unpack(payload: bytes) -> tuple[Sample, bytes]:
    """→ (header, data); ProtocolError for anything that is not one whole, intact sample."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"invalid Sample message: {len(payload)} bytes, more than {MAX_MESSAGE_BYTES}")
    if len(payload) < 8 or payload[:4] != MAGIC:
        raise ProtocolError("invalid Sample message: not a sample envelope (magic EFC1)")
    length = int.from_bytes(payload[4:8], "big")
    if length > MAX_HEADER_BYTES or 8 + length > len(payload):
        raise ProtocolError(f"invalid Sample message: header length {length} out of range")
    header = Sample.parse(payload[8:8 + length])
    data = payload[8 + length:]
    if len(data) != header.size:
        raise ProtocolError(f"invalid Sample message: {len(data)} bytes of data, the header says {header.size}")
    if hashlib.sha256(data).hexdigest() != header.sha256:
        raise ProtocolError("invalid Sample message: the data's sha256 differs from the header's")
    return header, data


__all__ = ["MAGIC", "MAX_HEADER_BYTES", "MAX_SAMPLE_BYTES", "Sample", "SampleAck", "describe", "pack", "unpack"]

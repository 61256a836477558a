"""Query and response models of the captured samples (fleet_api/captures)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet_protocol.capture import ContentType, Reason

from ..captures.store import Filters
from ..strict import StrictModel


class CaptureFilters(StrictModel):
    """Which samples (query parameters; an unknown one is a 422, not silently a filter that matches everything)."""

    device: str | None = Field(default=None, max_length=64, description="device id")
    model: str | None = Field(default=None, max_length=128)
    version: str | None = Field(default=None, max_length=64)
    reason: Reason | None = None
    since: dt.datetime | None = Field(default=None, description="taken at or after (ISO 8601)")
    until: dt.datetime | None = Field(default=None, description="taken before (ISO 8601)")

    def filters(self) -> Filters:
        return Filters(device=self.device, model=self.model, version=self.version, reason=self.reason,
                       since=self.since, until=self.until)


class CaptureListQuery(CaptureFilters):
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=2**31 - 1)


class CaptureDeleteQuery(CaptureFilters):
    all: bool = Field(default=False, description="required to delete every sample (no filter given)")


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaptureOut(Out):
    id: int
    device_id: str
    sample_id: str
    model: str
    version: str
    camera: str | None
    taken_at: dt.datetime
    received_at: dt.datetime
    reason: Reason
    confidence: float | None
    shadow_version: str | None
    outputs: dict[str, Any] = Field(description="the live model's answer: provisional labels")
    content_type: ContentType
    width: int | None
    height: int | None
    faces_blurred: bool
    size: int
    sha256: str
    file: str = Field(description="its path in a dataset ZIP, under data/")


class CapturesOut(Out):
    total: int = Field(description="samples matching the filters, all pages")
    limit: int
    offset: int
    captures: list[CaptureOut]


class DeletedOut(Out):
    deleted: int


class DeviceUsageOut(Out):
    device_id: str
    count: int
    bytes: int


class ModelUsageOut(Out):
    model: str
    count: int
    bytes: int


class UsageOut(Out):
    count: int
    bytes_used: int
    quota_bytes: int
    devices: list[DeviceUsageOut]
    models: list[ModelUsageOut]

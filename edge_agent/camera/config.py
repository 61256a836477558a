"""Camera settings as pydantic models. A source is chosen by its `type`, the way the runtime config names it.

A device's runtime config carries `sources: [{...}, ...]`; each entry is a `CameraConfig`. Unknown fields are
refused so that a typo in the fleet's desired state is reported instead of silently ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SourceBase(_Strict):
    max_fps: float | None = Field(default=None, gt=0)  # cap on frames handed to the detector
    # Reconnect backoff: starts at `retry_s`, doubles up to `retry_max_s`; a live source resets it.
    retry_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=5.0, gt=0)

    def describe(self) -> str:
        raise NotImplementedError


class DeviceSourceConfig(_SourceBase):
    type: Literal["device"] = "device"
    index: int = Field(ge=0)
    width: int | None = None
    height: int | None = None

    def describe(self) -> str:
        return f"camera {self.index}"


class FileSourceConfig(_SourceBase):
    type: Literal["file"] = "file"
    path: Path
    loop: bool = False
    # A file stands in for a live camera: by default it plays at its own frame rate. `realtime: false` reads
    # as fast as the pipeline takes frames (benchmarks).
    realtime: bool = True

    def describe(self) -> str:
        return str(self.path)


class RtspSourceConfig(_SourceBase):
    type: Literal["rtsp"] = "rtsp"
    url: str = Field(pattern=r"^rtsps?://")
    timeout_s: float = Field(default=5.0, gt=0)

    def describe(self) -> str:
        return self.url


class MjpegSourceConfig(_SourceBase):
    type: Literal["mjpeg"] = "mjpeg"
    url: str = Field(pattern=r"^https?://")
    timeout_s: float = Field(default=5.0, gt=0)

    def describe(self) -> str:
        return self.url


SourceConfig = Annotated[
    Union[DeviceSourceConfig, FileSourceConfig, RtspSourceConfig, MjpegSourceConfig], Field(discriminator="type")
]


class EventsConfig(_Strict):
    min_score: float = Field(default=0.5, ge=0, le=1)
    min_interval_s: float = Field(default=1.0, ge=0)  # at most one detections event per source per interval


class CameraConfig(_Strict):
    """One camera: where frames come from, how they are post-processed, what is reported."""

    name: str = Field(default="cam0", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    source: SourceConfig
    # 1: the detector always gets the newest frame. Longer only to score a file frame by frame.
    queue_size: int = Field(default=1, ge=1, le=4096)
    resize: Literal["stretch", "letterbox"] | None = None  # None: the model's own (manifest extra), else stretch
    postprocess: dict[str, Any] = Field(default_factory=dict)  # overrides of the plug-in's settings
    events: EventsConfig = Field(default_factory=EventsConfig)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `source: "rtsp://…"` or `source: 0` in a desired state is the same as the CLI's --source.
        if isinstance(data, dict) and isinstance(data.get("source"), (str, int)):
            data = {**data, "source": parse_source(str(data["source"])).model_dump()}
        return data


_SOURCE = TypeAdapter(SourceConfig)


def parse_source(text: str, **options: Any) -> DeviceSourceConfig | FileSourceConfig | RtspSourceConfig | MjpegSourceConfig:
    """The CLI's SRC: a camera index, an rtsp:// or http(s):// MJPEG URL, or a video file."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        spec: dict[str, Any] = {"type": "device", "index": int(text)}
    elif re.match(r"^rtsps?://", text):
        spec = {"type": "rtsp", "url": text}
    elif re.match(r"^https?://", text):
        spec = {"type": "mjpeg", "url": text}
    else:
        spec = {"type": "file", "path": text}
    allowed = _SOURCE_FIELDS[spec["type"]]
    spec.update({k: v for k, v in options.items() if v is not None and k in allowed})
    return _SOURCE.validate_python(spec)


_SOURCE_FIELDS = {
    cls.model_fields["type"].default: set(cls.model_fields)
    for cls in (DeviceSourceConfig, FileSourceConfig, RtspSourceConfig, MjpegSourceConfig)
}


def parse_cameras(entries: list[dict[str, Any]]) -> list[CameraConfig]:
    """Validate a runtime config's `sources`; names default to cam0, cam1 … and must be unique."""
    cameras = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"sources[{i}]: expected an object, got {type(entry).__name__}")
        entry = dict(entry)
        entry.setdefault("name", f"cam{i}")
        try:
            cameras.append(CameraConfig.model_validate(entry))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"sources[{i}] ({entry['name']}): {where}: {first['msg']}") from None
    names = [c.name for c in cameras]
    if len(set(names)) != len(names):
        raise ValueError(f"camera names must be unique, got {names}")
    return cameras

"""Camera pipelines as the fleet declares them: a source (plug-in chosen by `type`), a detector, later stages.

They live in the contract because the fleet API sets them (per device or per profile) and the agent runs them;
both validate the same models, so a typo is refused where it is typed, not discovered on a camera box.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

CAMERA_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"

ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***`: what logs, events and pages may show of a source."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}" if user else f"***@{host}", parts.path, parts.query, parts.fragment))


class _SourceBase(_Strict):
    max_fps: float | None = Field(default=None, gt=0, le=1000)  # cap on frames handed to the detector
    # Reconnect backoff: starts at `retry_s`, doubles up to `retry_max_s`; a live source resets it.
    retry_s: float = Field(default=0.5, gt=0, le=3600)
    retry_max_s: float = Field(default=5.0, gt=0, le=3600)

    def describe(self) -> str:
        """How the source may be shown to people: never with credentials."""
        raise NotImplementedError


class DeviceSource(_SourceBase):
    type: Literal["device"] = "device"
    index: int = Field(ge=0, le=255)
    width: int | None = Field(default=None, ge=1, le=16384)
    height: int | None = Field(default=None, ge=1, le=16384)

    def describe(self) -> str:
        return f"camera {self.index}"


class FileSource(_SourceBase):
    type: Literal["file"] = "file"
    path: str = Field(min_length=1, max_length=4096)
    loop: bool = False
    # A file stands in for a live camera: by default it plays at its own frame rate. `realtime: false` reads
    # as fast as the pipeline takes frames (benchmarks).
    realtime: bool = True

    def describe(self) -> str:
        return str(PurePath(self.path))


class RtspSource(_SourceBase):
    type: Literal["rtsp"] = "rtsp"
    url: str = Field(pattern=r"^rtsps?://", max_length=2048)
    timeout_s: float = Field(default=5.0, gt=0, le=600)

    def describe(self) -> str:
        return redact_url(self.url)


class MjpegSource(_SourceBase):
    type: Literal["mjpeg"] = "mjpeg"
    url: str = Field(pattern=r"^https?://", max_length=2048)
    timeout_s: float = Field(default=5.0, gt=0, le=600)

    def describe(self) -> str:
        return redact_url(self.url)


Source = Annotated[DeviceSource | FileSource | RtspSource | MjpegSource, Field(discriminator="type")]


def source_from_text(text: str) -> dict[str, Any]:
    """A CLI-style SRC (camera index, rtsp:// or http(s):// URL, video file) as a source object."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return {"type": "device", "index": int(text)}
    if re.match(r"^rtsps?://", text):
        return {"type": "rtsp", "url": text}
    if re.match(r"^https?://", text):
        return {"type": "mjpeg", "url": text}
    return {"type": "file", "path": text}


class CameraEvents(_Strict):
    min_score: float = Field(default=0.5, ge=0, le=1)
    max_per_s: float = Field(default=1.0, gt=0, le=100)  # detections events per camera per second, at most


class Camera(_Strict):
    """One camera pipeline: frames from `source`, the `detector` model, then each of `stages` on what it found.

    Models are named as in the desired state's `models`; a camera naming a model the device does not serve
    is reported failed (the rest of the device is unaffected).
    """

    name: str = Field(pattern=CAMERA_NAME_PATTERN)
    source: Source
    detector: ModelName
    # Later stages run on the detector's crops, in order (e.g. ocr-det → [ocr-cls, ocr-rec]).
    stages: list[ModelName] = Field(default_factory=list, max_length=4)
    fps: float | None = Field(default=None, gt=0, le=1000)
    # 1: the detector always gets the newest frame. Longer only to score a file frame by frame.
    queue_size: int = Field(default=1, ge=1, le=4096)
    resize: Literal["stretch", "letterbox"] | None = None  # None: the model's own (manifest extra)
    postprocess: dict[str, float | int | str | bool] = Field(default_factory=dict, max_length=32)
    events: CameraEvents = Field(default_factory=CameraEvents)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `source: "rtsp://…"` or `source: 0` is the same as the CLI's --source.
        if isinstance(data, dict) and isinstance(data.get("source"), (str, int)) and not isinstance(data.get("source"), bool):
            data = {**data, "source": source_from_text(str(data["source"]))}
        return data

    def models(self) -> list[str]:
        return [self.detector, *self.stages]

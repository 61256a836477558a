"""What operators set, validated with the contract's own models: a device's configuration and profiles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from fleet_protocol.cameras import Camera, ModelName
from fleet_protocol.messages import MAX_CAMERAS, MAX_MODELS, Capture, Runtime

from ..strict import StrictModel

LABEL_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$"
PROFILE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MAX_LABELS = 32

LabelKey = Annotated[str, Field(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, Field(max_length=128)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]


def parse_selector(selector: str | dict[str, str]) -> dict[str, str]:
    """`site=plant-3,hw=jetson` → {"site": "plant-3", "hw": "jetson"}; a dict is taken as it is."""
    if isinstance(selector, dict):
        return {str(k): str(v) for k, v in selector.items()}
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in selector.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"selector term {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def matches(selector: Mapping[str, str], labels: Mapping[str, Any]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class Layer(StrictModel):
    """One source of device settings. A field left None says nothing: the next source down decides."""

    # Runtime per model name; it applies to that model whenever the device has it.
    runtime: dict[ModelName, Runtime] = Field(default_factory=dict, max_length=MAX_MODELS)
    # The whole list of camera pipelines; [] means "no cameras", None "not set here".
    cameras: list[Camera] | None = Field(default=None, max_length=MAX_CAMERAS)
    capture: Capture | None = None
    memory_budget_mb: int | None = Field(default=None, ge=1, le=16 * 1024 * 1024)

    @model_validator(mode="after")
    def _unique_cameras(self) -> Layer:
        names = [c.name for c in self.cameras or []]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        return self


class DeviceConfig(Layer):
    """A device's own configuration (`PUT /v1/devices/{id}/config`): it wins over every profile."""


class ProfileSpec(Layer):
    """Settings for every device whose labels match `selector`; a higher `priority` wins over a lower one."""

    selector: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=MAX_LABELS)
    priority: int = Field(default=0, ge=-1000, le=1000)

    @field_validator("selector", mode="before")
    @classmethod
    def _selector_text(cls, v: Any) -> Any:
        return parse_selector(v) if isinstance(v, str) else v

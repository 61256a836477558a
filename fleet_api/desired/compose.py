"""The one pure function that makes a device's desired state from its inputs. No database, no clock.

Precedence, field by field (the first source that sets a field decides it, wholesale):
- models: exactly the models assigned to the device — by a rollout (its bundle and rollout id) or directly
  (`PUT /v1/devices/{id}/models/{name}`). Profiles and the device configuration never add or remove a model.
- a model's runtime: the runtime its assignment carries (a rollout's or a direct assignment's `runtime`: it
  belongs to that bundle, e.g. its precision), else the device configuration's `runtime[name]`, else the
  `runtime[name]` of the matching profile with the highest priority (ties: name order), else the contract default.
- cameras, capture, memory budget: the device configuration, else the matching profile with the highest
  priority that sets it, else the default (no cameras, capture off, the agent's own memory setting).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet_protocol.messages import BundleRef, Capture, Desired, ModelSpec, Runtime

from .specs import Layer, ProfileSpec, matches


@dataclass(frozen=True)
class Assignment:
    """A model on a device: its bundle, and where it came from."""

    bundle: BundleRef
    runtime: Runtime | None = None
    rollout_id: int | None = None


@dataclass(frozen=True)
class NamedProfile:
    name: str
    spec: ProfileSpec


@dataclass
class Composed:
    desired: Desired  # revision 0 and issued_at 0: the caller numbers it
    sources: dict[str, Any] = field(default_factory=dict)  # which input decided each part (GET .../desired)
    # What the device will report failed, said ahead (it is not refused: a model may be assigned next).
    problems: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        """What a revision is about: equal bodies need no new revision."""
        return self.desired.model_dump(mode="json", by_alias=True, exclude={"revision", "issued_at"})


def ordered(profiles: Iterable[NamedProfile], labels: Mapping[str, Any]) -> list[NamedProfile]:
    """The profiles matching `labels`, the one that wins first."""
    return sorted((p for p in profiles if matches(p.spec.selector, labels)), key=lambda p: (-p.spec.priority, p.name))


def compose(labels: Mapping[str, Any], config: Layer | None, profiles: Iterable[NamedProfile],
            assignments: Mapping[str, Assignment]) -> Composed:
    layers: list[tuple[str, Layer]] = ([("device", config)] if config is not None else []) + [
        (f"profile:{p.name}", p.spec) for p in ordered(profiles, labels)]
    sources: dict[str, Any] = {"models": {}, "profiles": [name.removeprefix("profile:") for name, _ in layers
                                                        if name != "device"]}

    def first(attr: str, default: Any) -> Any:
        for name, layer in layers:
            value = getattr(layer, attr)
            if value is not None:
                sources[attr] = name
                return value
        sources[attr] = "default"
        return default

    models: dict[str, ModelSpec] = {}
    for name in sorted(assignments):
        a = assignments[name]
        runtime, runtime_from = a.runtime, "rollout" if a.rollout_id is not None else "assignment"
        if runtime is None:
            runtime_from = next((src for src, layer in layers if name in layer.runtime), "default")
            runtime = next((layer.runtime[name] for _, layer in layers if name in layer.runtime), Runtime())
        models[name] = ModelSpec(bundle=a.bundle, runtime=runtime, rollout_id=a.rollout_id)
        sources["models"][name] = {"bundle": f"rollout:{a.rollout_id}" if a.rollout_id is not None else "assignment",
                                   "runtime": runtime_from}
    desired = Desired(
        revision=0, issued_at=0, models=models, cameras=first("cameras", []), capture=first("capture", Capture()),
        memory_budget_mb=first("memory_budget_mb", None),
    )
    problems = [f"camera {cam.name!r} names model {name!r}, which the device does not have"
                for cam in desired.cameras for name in cam.models() if name not in desired.models]
    return Composed(desired, sources, problems)


EMPTY_BODY = compose({}, None, (), {}).body()

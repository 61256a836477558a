"""Execution providers as plug-ins: each kind knows its onnxruntime name and its session options.

The agent walks the preference list, keeps the kinds the installed onnxruntime offers, and after creating a
session reads back which providers it really uses, so a silent fallback to the CPU is seen and reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar


class Provider:
    name: ClassVar[str]
    short: ClassVar[str]

    def options(self, cache_dir: Path) -> dict[str, str]:
        return {}


class TensorRT(Provider):
    name = "TensorrtExecutionProvider"
    short = "tensorrt"

    def options(self, cache_dir: Path) -> dict[str, str]:
        # Engine builds take minutes on a Jetson; cache them beside the model so a restart reuses them.
        return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir / "trt"), "trt_fp16_enable": "True"}


class CUDA(Provider):
    name = "CUDAExecutionProvider"
    short = "cuda"


class OpenVINO(Provider):
    name = "OpenVINOExecutionProvider"
    short = "openvino"

    def options(self, cache_dir: Path) -> dict[str, str]:
        return {"cache_dir": str(cache_dir / "openvino")}


class CPU(Provider):
    name = "CPUExecutionProvider"
    short = "cpu"


KNOWN: dict[str, type[Provider]] = {cls.name: cls for cls in (TensorRT, CUDA, OpenVINO, CPU)}
for _cls in list(KNOWN.values()):
    KNOWN[_cls.short] = _cls


class ProviderError(RuntimeError):
    """No usable provider, or a required provider the device cannot use."""


def resolve(preference: list[str], available: list[str], require: str | None = None) -> list[Provider]:
    """Preference ∩ available, in preference order; CPU is always the last resort unless a provider is required."""
    unknown = [p for p in preference if p not in KNOWN]
    if unknown:
        raise ProviderError(f"unknown execution provider(s) {unknown}; known: {sorted(c.name for c in set(KNOWN.values()))}")
    if require is not None:
        if require not in KNOWN:
            raise ProviderError(f"unknown required execution provider {require!r}")
        name = KNOWN[require].name
        if name not in available:
            raise ProviderError(f"{name} is required but this device's onnxruntime offers only {available}")
        return [KNOWN[require]()]
    chosen: list[Provider] = []
    for p in preference:
        cls = KNOWN[p]
        if cls.name in available and all(c.name != cls.name for c in chosen):
            chosen.append(cls())
    if all(c.name != CPU.name for c in chosen) and CPU.name in available:
        chosen.append(CPU())
    if not chosen:
        raise ProviderError(f"none of {preference} is available (onnxruntime offers {available})")
    return chosen

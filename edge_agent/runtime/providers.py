"""Execution providers as plug-ins: each kind knows its onnxruntime name, the precisions it can run and the
session options that ask for them.

The agent walks the preference list, keeps the kinds the installed onnxruntime offers, and after creating a
session reads back which providers it really uses, so a silent fallback to the CPU is seen and reported.

Precision is explicit: a provider reduces precision only when the runtime says so (TensorRT runs fp32 unless
asked for fp16 or int8). On the CPU and CUDA providers the arithmetic is the model file's own (an fp16- or
int8-converted bundle), so they accept every precision and the golden check judges it.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from fleet_protocol.messages import Precision

from .errors import ProviderError

__all__ = ["CPU", "CUDA", "KNOWN", "OpenVINO", "Provider", "ProviderError", "TensorRT", "resolve"]


class Provider:
    name: ClassVar[str]
    short: ClassVar[str]
    precisions: ClassVar[frozenset[Precision]] = frozenset(Precision)
    # Whether creating a session compiles an engine (minutes on a Jetson): the model reports `building`.
    builds_engine: ClassVar[bool] = False

    def options(self, cache_dir: Path, precision: Precision) -> dict[str, str]:  # noqa: ARG002 - the signature every provider implements; most need no options
        return {}


class TensorRT(Provider):
    name = "TensorrtExecutionProvider"
    short = "tensorrt"
    builds_engine = True

    def options(self, cache_dir: Path, precision: Precision) -> dict[str, str]:
        # Engine builds take minutes on a Jetson; cache them beside the model so a restart reuses them. The
        # precision is part of the engine, so each one has its own cache folder.
        return {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache_dir / "trt" / precision.value),
            "trt_fp16_enable": "True" if precision in (Precision.fp16, Precision.int8) else "False",
            "trt_int8_enable": "True" if precision == Precision.int8 else "False",
        }


class CUDA(Provider):
    name = "CUDAExecutionProvider"
    short = "cuda"


class OpenVINO(Provider):
    name = "OpenVINOExecutionProvider"
    short = "openvino"
    precisions = frozenset({Precision.fp32, Precision.fp16})
    builds_engine = True

    def options(self, cache_dir: Path, precision: Precision) -> dict[str, str]:
        return {"cache_dir": str(cache_dir / "openvino"), "precision": precision.value.upper()}


class CPU(Provider):
    name = "CPUExecutionProvider"
    short = "cpu"


KNOWN: dict[str, type[Provider]] = {cls.name: cls for cls in (TensorRT, CUDA, OpenVINO, CPU)}
for _cls in list(KNOWN.values()):
    KNOWN[_cls.short] = _cls


def resolve(preference: list[str], available: list[str], require: str | None = None,
            precision: Precision = Precision.fp32) -> list[Provider]:
    """Preference ∩ available, in preference order; CPU is always the last resort unless a provider is required.
    A provider that cannot run `precision` is skipped (or refused, when it is the required one)."""
    unknown = [p for p in preference if p not in KNOWN]
    if unknown:
        raise ProviderError(f"unknown execution provider(s) {unknown}; known: {sorted(c.name for c in set(KNOWN.values()))}")
    if require is not None:
        if require not in KNOWN:
            raise ProviderError(f"unknown required execution provider {require!r}")
        cls = KNOWN[require]
        if cls.name not in available:
            raise ProviderError(f"{cls.name} is required but this device's onnxruntime offers only {available}")
        if precision not in cls.precisions:
            raise ProviderError(f"{cls.name} is required but cannot run precision {precision.value}")
        return [cls()]
    chosen: list[Provider] = []
    for p in preference:
        cls = KNOWN[p]
        if cls.name in available and precision in cls.precisions and all(c.name != cls.name for c in chosen):
            chosen.append(cls())
    if all(c.name != CPU.name for c in chosen) and CPU.name in available:
        chosen.append(CPU())
    if not chosen:
        raise ProviderError(f"none of {preference} is available for {precision.value} (onnxruntime offers {available})")
    return chosen

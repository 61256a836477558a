"""Facts about this device that the fleet sees in `reported`."""

from __future__ import annotations

import os
import platform

import onnxruntime as ort


def facts() -> dict[str, str | int | float | bool | None]:
    try:
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError, AttributeError):
        memory_mb = None
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "cpus": os.cpu_count(),
        "memory_mb": memory_mb,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }

"""The one place model_tools creates onnxruntime sessions, so every command sets its options alike."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnxruntime as ort


def create(model: Path | str | bytes, *, provider: str = "CPUExecutionProvider", threads: int | None = None,
           **options: Any) -> ort.InferenceSession:
    """A session for `model` (a path or the serialized model).

    `threads` pins the intra-op threads and one inter-op thread (what timing and memory measure); `options` sets
    further `SessionOptions` attributes (graph_optimization_level, optimized_model_filepath, enable_profiling …).
    onnxruntime's own exceptions pass through: each caller says in its own terms what could not be loaded.
    """
    import onnxruntime as ort  # late: `model-tools --help` should not pay for it

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: its warnings are noise next to the message the caller gives
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    for name, value in options.items():
        setattr(so, name, value)
    return ort.InferenceSession(str(model) if isinstance(model, Path) else model, so, providers=[provider])

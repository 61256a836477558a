"""Golden data: sample inputs and the outputs the model must reproduce on every device."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fleet_protocol.golden import INPUT_PREFIX, OUTPUT_PREFIX, to_npz

from .errors import UsageError

__all__ = ["compute", "load_inputs", "to_npz"]  # the file format itself: fleet_protocol.golden


def load_inputs(path: Path, input_names: list[str]) -> dict[str, np.ndarray]:
    """Read an .npz of sample inputs keyed by input name (a single-input model may use any key)."""
    try:
        data = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable .npz file ({exc})") from None
    data = {k.removeprefix(INPUT_PREFIX): v for k, v in data.items() if not k.startswith(OUTPUT_PREFIX)}
    if len(input_names) == 1 and len(data) == 1:
        return {input_names[0]: next(iter(data.values()))}
    missing = [n for n in input_names if n not in data]
    if missing:
        raise UsageError(f"{path}: no array for model input(s) {missing}; it has {sorted(data)}")
    return {n: data[n] for n in input_names}


def compute(model_bytes: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from .session import create as create_session

    try:
        session = create_session(model_bytes)
        names = [o.name for o in session.get_outputs()]
        outputs = session.run(names, inputs)
    except Exception as exc:  # onnxruntime raises its own exception types for shape/dtype errors
        # onnxruntime's messages span lines ("… for the following indices\n index: 1 Got: 3 Expected: 1"):
        # joined into one line, whole, rather than cut after the first.
        raise UsageError(f"the model cannot run on the golden inputs: {' '.join(str(exc).split())[:400]}") from None
    return dict(zip(names, outputs, strict=True))


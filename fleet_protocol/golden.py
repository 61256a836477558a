"""The bundle's golden file (`golden.npz`): sample inputs and the outputs the model must reproduce on a device.

One .npz; every array's key is `input:<tensor name>` or `output:<tensor name>`. The tools write it and the
agent reads it through these two functions, so the layout lives here only. numpy is imported when a function
runs, not with this module: the contract's own dependencies stay pydantic and cryptography.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

INPUT_PREFIX = "input:"
OUTPUT_PREFIX = "output:"


def to_npz(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> bytes:
    """(inputs, expected outputs) by tensor name → the golden file's bytes."""
    import numpy as np

    # Any: numpy's stubs match `**arrays` against savez's keyword `allow_pickle: bool` as well.
    arrays: dict[str, Any] = {f"{INPUT_PREFIX}{k}": v for k, v in inputs.items()}
    arrays.update({f"{OUTPUT_PREFIX}{k}": v for k, v in outputs.items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def from_npz(data: bytes | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The golden file (its bytes or its path) → (inputs, expected outputs) by tensor name."""
    import numpy as np

    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with np.load(src, allow_pickle=False) as z:
        inputs = {k.removeprefix(INPUT_PREFIX): z[k] for k in z.files if k.startswith(INPUT_PREFIX)}
        outputs = {k.removeprefix(OUTPUT_PREFIX): z[k] for k in z.files if k.startswith(OUTPUT_PREFIX)}
    return inputs, outputs

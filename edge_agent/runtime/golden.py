"""The golden check: before a model serves, it must reproduce its bundle's golden outputs on this device.

The tolerance follows the runtime's precision: the manifest's atol/rtol are made for fp32, and an fp16 or
int8 engine is held to what that arithmetic can keep (a correct fp16 model passes as fp16 and fails as
fp32; a broken one fails both). Where the bundle says so, the check is task-aware instead (same top-1 class,
IoU-matched boxes, same text), which is what the application sees whatever the precision.
"""

from __future__ import annotations

import time

import numpy as np

from fleet_protocol.golden import from_npz
from fleet_protocol.manifest import Golden
from fleet_protocol.messages import Precision

from ..boxes import greedy_matches
from .errors import GoldenCheckError, first_line
from .model import LoadedModel

# The least atol/rtol each precision can hold: fp16 keeps ~3 decimal digits, int8 ~2.
PRECISION_TOLERANCE: dict[Precision, tuple[float, float]] = {
    Precision.fp32: (0.0, 0.0),  # the manifest's own (made for fp32)
    Precision.fp16: (1e-2, 1e-2),
    Precision.int8: (5e-2, 5e-2),
}


def tolerance(golden: Golden, precision: Precision) -> tuple[float, float]:
    least_atol, least_rtol = PRECISION_TOLERANCE[precision]
    return max(golden.atol, least_atol), max(golden.rtol, least_rtol)


def check(model: LoadedModel) -> None:
    """Run the golden inputs (which also warms the session up) and compare; GoldenCheckError if they differ."""
    path = model.stored.golden_path
    if not path.exists():
        raise GoldenCheckError("bundle has no golden data")
    inputs, expected = from_npz(path)
    try:
        model.validate(inputs)
        model.run_checked(inputs)  # the first run pays for lazy allocations: warm-up, not what requests see
        started = time.perf_counter()
        actual = model.run_checked(inputs)
        model.run_ms = (time.perf_counter() - started) * 1000 / max(1, len(next(iter(inputs.values()))))
    except Exception as exc:  # onnxruntime errors are not typed
        raise GoldenCheckError(f"golden inputs fail to run: {first_line(exc)}") from None
    compare(actual, expected, model.manifest.golden, model.precision)
    model.golden_passed = True


def compare(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], golden: Golden, precision: Precision) -> None:
    for name, want in expected.items():
        got = actual.get(name)
        if got is None or got.shape != want.shape:
            raise GoldenCheckError(f"output {name!r}: shape {None if got is None else got.shape}, golden {want.shape}")
        if golden.compare == "tolerance":
            _within(name, got, want, *tolerance(golden, precision), precision)
        elif golden.compare == "top1":
            _same_argmax(name, got, want, "class")
        elif golden.compare == "text":
            _same_argmax(name, got, want, "symbol")
        else:
            _boxes_match(name, got, want, golden.iou)


def _within(name: str, got: np.ndarray, want: np.ndarray, atol: float, rtol: float, precision: Precision) -> None:
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    if not np.allclose(got64, want64, atol=atol, rtol=rtol, equal_nan=True):
        worst = float(np.nanmax(np.abs(got64 - want64)))
        raise GoldenCheckError(f"output {name!r} differs from the golden output by up to {worst:.3g} "
                               f"(precision {precision.value}: atol {atol:g}, rtol {rtol:g})")


def _same_argmax(name: str, got: np.ndarray, want: np.ndarray, what: str) -> None:
    a, b = np.argmax(got, axis=-1), np.argmax(want, axis=-1)
    wrong = int(np.count_nonzero(a != b))
    if wrong:
        raise GoldenCheckError(f"output {name!r}: {wrong} of {a.size} {what}es differ from the golden output"
                               if what == "class" else f"output {name!r}: the {what} sequence differs from the golden output at {wrong} of {a.size} positions")


def _boxes_match(name: str, got: np.ndarray, want: np.ndarray, threshold: float) -> None:
    if got.shape[-1] < 4:
        # Scores and the like beside the boxes: they only have to pick the same best candidate.
        _same_argmax(name, got, want, "class")
        return
    a = got.reshape(-1, got.shape[-1])[:, :4].astype(np.float64)
    b = want.reshape(-1, want.shape[-1])[:, :4].astype(np.float64)
    unmatched = len(b) - greedy_matches(b, a, threshold)  # each golden box takes its best free match
    if unmatched:
        raise GoldenCheckError(f"output {name!r}: {unmatched} of {len(b)} golden boxes have no match with IoU >= {threshold}")

"""onnxruntime sessions and the hot swap.

`Engine.current` is one reference. A request reads it once and runs on that model to the end; a swap replaces
the reference after the new model was built, warmed up and golden-checked beside the old one. Requests in
flight finish on the old session, which is freed when the last of them drops its reference. No lock on the
request path: reading and rebinding an attribute are atomic in CPython.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .providers import Provider, ProviderError
from .store import StoredModel

log = logging.getLogger(__name__)

GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class InputError(ValueError):
    """A request whose tensors do not fit the model; the message names the input and what was expected."""


class NotReady(RuntimeError):
    """No model is loaded yet."""


class GoldenCheckError(RuntimeError):
    """The model does not reproduce its golden outputs on this device."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]  # None: any size

    def check(self, value: np.ndarray) -> None:
        if value.dtype != self.dtype:
            raise InputError(f"input {self.name!r}: dtype {value.dtype.name}, expected {self.dtype.name}")
        if value.ndim != len(self.shape):
            raise InputError(f"input {self.name!r}: rank {value.ndim} (shape {list(value.shape)}), expected rank {len(self.shape)} {self.shape_text}")
        for got, want in zip(value.shape, self.shape):
            if want is not None and got != want:
                raise InputError(f"input {self.name!r}: shape {list(value.shape)}, expected {self.shape_text}")

    @property
    def shape_text(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}


def _tensor_info(arg) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorInfo(arg.name, np.dtype(_ORT_TYPES.get(arg.type, np.float32)), shape)


@dataclass
class LoadedModel:
    stored: StoredModel
    session: ort.InferenceSession
    provider: str  # the provider the session really runs on (its first)
    providers: list[str]
    inputs: dict[str, TensorInfo]
    output_names: list[str]
    loaded_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.stored.manifest.name

    @property
    def version(self) -> str:
        return self.stored.manifest.version

    @property
    def sha256(self) -> str:
        return self.stored.sha256

    def validate(self, inputs: dict[str, np.ndarray]) -> None:
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise InputError(f"missing input(s) {missing}; the model takes {list(self.inputs)}")
        extra = [n for n in inputs if n not in self.inputs]
        if extra:
            raise InputError(f"unknown input(s) {extra}; the model takes {list(self.inputs)}")
        for name, info in self.inputs.items():
            info.check(inputs[name])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.validate(inputs)
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))


def load(stored: StoredModel, providers: list[Provider], *, threads: int, optimization: str, cache_dir: Path,
         require: str | None = None) -> LoadedModel:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = GRAPH_LEVELS[optimization]
    options.log_severity_level = 3  # onnxruntime's own warnings go to stderr unformatted; we log what matters
    cache_dir.mkdir(parents=True, exist_ok=True)
    session = ort.InferenceSession(
        str(stored.model_path), sess_options=options,
        providers=[(p.name, p.options(cache_dir)) if p.options(cache_dir) else p.name for p in providers],
    )
    used = session.get_providers()
    wanted = providers[0].name
    if require is not None and used[0] != wanted:
        raise ProviderError(f"{wanted} is required but the session runs on {used[0]} (the model or the driver refused it)")
    if used[0] != wanted:
        log.warning("%s: preferred %s, but the session runs on %s", stored.manifest.name, wanted, used[0])
    return LoadedModel(
        stored=stored, session=session, provider=used[0], providers=used,
        inputs={i.name: _tensor_info(i) for i in session.get_inputs()},
        output_names=[o.name for o in session.get_outputs()],
    )


def golden_check(model: LoadedModel) -> None:
    """Run the bundle's golden inputs (which also warms the session up) and compare with its outputs."""
    from fleet_protocol.bundle import GOLDEN

    path = model.stored.directory / GOLDEN
    if not path.exists():
        raise GoldenCheckError("bundle has no golden data")
    with np.load(path, allow_pickle=False) as z:
        inputs = {k[len("input:"):]: z[k] for k in z.files if k.startswith("input:")}
        expected = {k[len("output:"):]: z[k] for k in z.files if k.startswith("output:")}
    tol = model.stored.manifest.golden
    try:
        actual = model.run(inputs)
    except Exception as exc:  # onnxruntime errors are not typed
        raise GoldenCheckError(f"golden inputs fail to run: {str(exc).splitlines()[0]}") from None
    for name, want in expected.items():
        got = actual.get(name)
        if got is None or got.shape != want.shape:
            raise GoldenCheckError(f"output {name!r}: shape {None if got is None else got.shape}, golden {want.shape}")
        if not np.allclose(got, want, atol=tol.atol, rtol=tol.rtol, equal_nan=True):
            worst = float(np.max(np.abs(got.astype(np.float64) - want)))
            raise GoldenCheckError(f"output {name!r} differs from the golden output by up to {worst:.3g} (atol {tol.atol}, rtol {tol.rtol})")


class Engine:
    def __init__(self) -> None:
        self._current: LoadedModel | None = None
        self._previous: LoadedModel | None = None
        self._swap_lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def model(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise NotReady("no model loaded yet")
        return model

    def predict(self, inputs: dict[str, np.ndarray]) -> tuple[LoadedModel, dict[str, np.ndarray]]:
        model = self.model()  # one read: the whole request runs on this model
        return model, model.run(inputs)

    def swap(self, new: LoadedModel) -> LoadedModel | None:
        """Serve `new` from now on; keep the old one as `previous` for a fast rollback."""
        with self._swap_lock:
            old, self._current = self._current, new
            if old is not None and old.sha256 != new.sha256:
                self._previous = old
            return old

    @property
    def previous(self) -> LoadedModel | None:
        return self._previous


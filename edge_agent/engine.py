"""onnxruntime sessions and the hot swap.

`Engine.current` is one reference. A request reads it once and runs on that model to the end; a swap replaces
the reference after the new model was built, warmed up and golden-checked beside the old one. Requests in
flight finish on the old session, which is freed when the last of them drops its reference. No lock on the
request path: reading and rebinding an attribute are atomic in CPython.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from fleet_protocol.messages import Batching, RuntimeConfig

from .batching import Batcher
from .providers import CPU, Provider, ProviderError
from .store import StoredModel
from .telemetry import ModelMetrics, Stats

log = logging.getLogger(__name__)

GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# KServe v2 datatype names, so an error message speaks the client's language.
WIRE_NAMES = {
    np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "UINT8", np.dtype(np.int8): "INT8", np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64", np.dtype(np.uint16): "UINT16", np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64", np.dtype(np.float16): "FP16", np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
}


class InputError(ValueError):
    """A request whose tensors do not fit the model; the message names the input and what was expected."""


class InferenceError(RuntimeError):
    """The session failed on inputs that passed validation."""


class ModelLoadError(RuntimeError):
    """onnxruntime refused to build a session for the model (corrupt file, unsupported operator, …)."""


class NotReady(RuntimeError):
    """No model is loaded yet."""


class GoldenCheckError(RuntimeError):
    """The model does not reproduce its golden outputs on this device."""


def wire_name(dtype: np.dtype) -> str:
    return WIRE_NAMES.get(dtype, dtype.name)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]  # None: any size

    def check(self, value: np.ndarray) -> None:
        if value.dtype != self.dtype:
            raise InputError(f"input {self.name!r}: datatype {wire_name(value.dtype)}, expected {wire_name(self.dtype)} with shape {self.shape_text}")
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


def _has_batch_axis(args) -> bool:
    return all(len(a.shape) > 0 and not (isinstance(a.shape[0], int) and a.shape[0] > 0) for a in args)


@dataclass(eq=False)
class LoadedModel:
    stored: StoredModel
    session: ort.InferenceSession
    provider: str  # the provider the session really runs on (its first)
    providers: list[str]
    inputs: dict[str, TensorInfo]
    output_names: list[str]
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    batchable: bool = False  # every input and output has a free first (batch) axis
    from_cache: bool = False  # the session came from the optimized-model cache
    metrics: ModelMetrics | None = None  # bound by the Engine that serves it
    run_ms: float | None = None  # one warm session run of a single item, measured by the golden check
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
        if len(inputs) != len(self.inputs) or any(n not in self.inputs for n in inputs):
            missing = [n for n in self.inputs if n not in inputs]
            if missing:
                raise InputError(f"missing input(s) {missing}; the model takes {self.signature()}")
            extra = [n for n in inputs if n not in self.inputs]
            raise InputError(f"unknown input(s) {extra}; the model takes {self.signature()}")
        for name, info in self.inputs.items():
            info.check(inputs[name])

    def signature(self) -> str:
        return ", ".join(f"{t.name} {wire_name(t.dtype)} {t.shape_text}" for t in self.inputs.values())

    def run_checked(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run inputs that passed `validate`."""
        try:
            return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))
        except InvalidArgument as exc:  # what validation cannot see, e.g. two inputs that disagree on a free dim
            raise InputError(f"inputs rejected by the model: {_first_line(exc)}") from None
        except Exception as exc:  # onnxruntime's other errors are untyped RuntimeErrors
            raise InferenceError(f"inference failed: {_first_line(exc)}") from None

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.validate(inputs)
        return self.run_checked(inputs)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _session_options(threads: int, optimization: str) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = GRAPH_LEVELS[optimization]
    options.log_severity_level = 3  # onnxruntime's own warnings go to stderr unformatted; we log what matters
    return options


def optimized_cache_path(cache_dir: Path, stored: StoredModel, threads: int, optimization: str) -> Path:
    # The optimized graph depends on the onnxruntime version and (at level "all") on this CPU's kernels;
    # the cache is local to the device, so the version and settings are the only keys it needs.
    return cache_dir / "optimized" / f"{stored.sha256}-ort{ort.__version__}-{optimization}-t{threads}.onnx"


def _create(path: Path, options: ort.SessionOptions, providers: list[Provider], cache_dir: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(path), sess_options=options,
            providers=[(p.name, o) if (o := p.options(cache_dir)) else p.name for p in providers],
        )
    except Exception as exc:  # onnxruntime's errors share no base class beyond Exception
        raise ModelLoadError(f"onnxruntime cannot load {path.name}: {_first_line(exc)}") from None


def load(stored: StoredModel, providers: list[Provider], *, threads: int, optimization: str, cache_dir: Path,
         require: str | None = None, runtime: RuntimeConfig | None = None) -> LoadedModel:
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Only a CPU-only session can be saved: graphs compiled by TensorRT/OpenVINO are cached by those providers.
    cacheable = optimization != "disable" and [p.name for p in providers] == [CPU.name]
    cached = optimized_cache_path(cache_dir, stored, threads, optimization)
    session, from_cache = None, False
    if cacheable and cached.exists():
        try:
            session = _create(cached, _session_options(threads, "disable"), providers, cache_dir)
            from_cache = True
        except Exception as exc:  # a cache that does not load is rebuilt, never trusted
            log.warning("optimized cache %s unusable (%s); rebuilding", cached.name, _first_line(exc))
            cached.unlink(missing_ok=True)
    if session is None:
        options = _session_options(threads, optimization)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        if cacheable:
            cached.parent.mkdir(parents=True, exist_ok=True)
            options.optimized_model_filepath = str(tmp)
        try:
            session = _create(stored.model_path, options, providers, cache_dir)
            if cacheable and tmp.exists():
                os.replace(tmp, cached)  # whole or absent: a kill -9 mid-write leaves only a .tmp
        finally:
            tmp.unlink(missing_ok=True)
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
        runtime=runtime or RuntimeConfig(),
        batchable=_has_batch_axis(session.get_inputs()) and _has_batch_axis(session.get_outputs()),
        from_cache=from_cache,
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
        model.run(inputs)  # the first run pays for lazy allocations: warm-up, and not what requests will see
        started = time.perf_counter()
        actual = model.run(inputs)
        model.run_ms = (time.perf_counter() - started) * 1000 / max(1, len(next(iter(inputs.values()))))
    except Exception as exc:  # onnxruntime errors are not typed
        raise GoldenCheckError(f"golden inputs fail to run: {_first_line(exc)}") from None
    for name, want in expected.items():
        got = actual.get(name)
        if got is None or got.shape != want.shape:
            raise GoldenCheckError(f"output {name!r}: shape {None if got is None else got.shape}, golden {want.shape}")
        if not np.allclose(got, want, atol=tol.atol, rtol=tol.rtol, equal_nan=True):
            worst = float(np.max(np.abs(got.astype(np.float64) - want)))
            raise GoldenCheckError(f"output {name!r} differs from the golden output by up to {worst:.3g} (atol {tol.atol}, rtol {tol.rtol})")


class _Waiter:
    """Blocks a synchronous caller until the batcher answered."""

    __slots__ = ("event", "outputs", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None

    def done(self, outputs, error) -> None:
        self.outputs, self.error = outputs, error
        self.event.set()


class Engine:
    """Serves one model at a time; swaps it without dropping a request."""

    def __init__(self, stats: Stats | None = None, keep_previous_loaded: bool = False, batch_workers: int = 1) -> None:
        self.stats = stats or Stats()
        self.keep_previous_loaded = keep_previous_loaded
        self.batch_workers = batch_workers
        self._current: LoadedModel | None = None
        self._previous: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        self._batcher: Batcher | None = None
        self._batching = Batching()

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def previous(self) -> LoadedModel | None:
        """The model served before the current one, when it is still loaded (see `keep_previous_loaded`)."""
        return self._previous

    def model(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise NotReady("no model loaded yet")
        return model

    # --- request path -------------------------------------------------------------------------------------
    def predict(self, inputs: dict[str, np.ndarray]) -> tuple[LoadedModel, dict[str, np.ndarray]]:
        model = self.model()  # one read: the whole request runs on this model
        return model, self.run_on(model, inputs)

    def run_on(self, model: LoadedModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate, run (batched when batching is on) and record; blocks the calling thread."""
        batcher = self.batched(model)
        if batcher is not None:
            waiter = _Waiter()
            self.submit_batched(model, batcher, inputs, waiter.done)
            waiter.event.wait()
            if waiter.error is not None:
                raise waiter.error
            return waiter.outputs  # type: ignore[return-value]
        started = time.perf_counter()
        metrics = model.metrics
        try:
            model.validate(inputs)
            outputs = model.run_checked(inputs)
        except InputError:
            self.stats.failed(metrics, bad_request=True)
            raise
        except Exception:
            self.stats.failed(metrics, bad_request=False)
            raise
        if metrics is not None:
            self.stats.observe(metrics, time.perf_counter() - started)
        return outputs

    def batched(self, model: LoadedModel) -> Batcher | None:
        """The batcher this model's requests go through now, if any (see `submit_batched`)."""
        batcher = self._batcher
        return batcher if batcher is not None and model.batchable else None

    def submit_batched(self, model: LoadedModel, batcher: Batcher, inputs: dict[str, np.ndarray],
                       done: Callable[[dict[str, np.ndarray] | None, BaseException | None], None]) -> None:
        """The batched request path, for blocking and async callers alike: validate, queue on `batcher` (from
        `batched`), and when the batch ran record the request, then call `done(outputs, error)` on the
        batcher's thread. Inputs the model refuses are recorded and raise InputError here; `done` is not called."""
        try:
            model.validate(inputs)
        except InputError as exc:
            self.record(model, 0.0, 0.0, exc)
            raise
        started = time.perf_counter()

        def finished(outputs, error, queued: float) -> None:
            self.record(model, time.perf_counter() - started, queued, error)
            done(outputs, error)

        batcher.submit(model, inputs, finished)

    def record(self, model: LoadedModel | None, seconds: float, queued: float, error: BaseException | None) -> None:
        """Account for a request that a transport ran itself (e.g. through `batched`) or refused while parsing."""
        metrics = model.metrics if model is not None else None
        if error is not None:
            self.stats.failed(metrics, bad_request=isinstance(error, InputError))
        elif metrics is not None:
            metrics.queue.observe(queued)
            self.stats.observe(metrics, seconds)

    # --- control --------------------------------------------------------------------------------------------
    def swap(self, new: LoadedModel) -> LoadedModel | None:
        """Serve `new` from now on. Returns the model it replaced (freed once the last request drops it)."""
        if new.metrics is None:
            new.metrics = self.stats.for_model(new.name, new.version, new.provider)
        with self._swap_lock:
            old, self._current = self._current, new
            if old is not None and old.sha256 != new.sha256:
                self._previous = old if self.keep_previous_loaded else None
            elif self._previous is not None and self._previous.sha256 == new.sha256:
                self._previous = None
            self.stats.serving(new.name, new.version, new.sha256, new.providers)
        return old

    def configure_batching(self, config: Batching) -> None:
        """Turn dynamic batching on, off or retune it; queued requests finish on the old batcher."""
        with self._swap_lock:
            if config == self._batching and (self._batcher is not None) == config.enabled:
                return
            old = self._batcher
            self._batching = config
            self._batcher = Batcher(config, on_batch=self.stats.batch_size.observe, workers=self.batch_workers) if config.enabled else None
        if old is not None:
            old.close()

    @property
    def batching(self) -> Batching:
        return self._batching

    def close(self) -> None:
        self.configure_batching(Batching(enabled=False))

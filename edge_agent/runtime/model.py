"""One loaded model: its session, its tensors, its batcher, and the request path that counts every call.

A LoadedModel never changes after it is served: a hot swap replaces the reference in the ModelHost, so a
request that got this object finishes on it, and the session is freed when the last such request drops it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from fleet_protocol.manifest import Manifest
from fleet_protocol.messages import Precision, Runtime

from ..drift import confidence
from .errors import InferenceError, InputError, first_line

if TYPE_CHECKING:
    from ..drift import ModelDrift
    from ..sampler import Sampler
    from ..shadow.runner import ShadowRunner
    from ..store import StoredModel
    from ..telemetry import ModelMetrics
    from .batching import Batcher

log = logging.getLogger(__name__)

# KServe v2 datatype names, so an error message speaks the client's language.
WIRE_NAMES = {
    np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "UINT8", np.dtype(np.int8): "INT8", np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64", np.dtype(np.uint16): "UINT16", np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64", np.dtype(np.float16): "FP16", np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
}

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}

Done = Callable[[dict[str, np.ndarray] | None, BaseException | None], None]


_camera = threading.local()


@contextmanager
def camera_run() -> Iterator[None]:
    """Runs inside are a camera's: the camera offers the whole frame for capture itself, so the tap does not
    offer the model's input tensor (drift and the shadow see them as any other)."""
    _camera.on = True
    try:
        yield
    finally:
        _camera.on = False


def in_camera_run() -> bool:
    return getattr(_camera, "on", False)


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
        for got, want in zip(value.shape, self.shape, strict=True):
            if want is not None and got != want:
                raise InputError(f"input {self.name!r}: shape {list(value.shape)}, expected {self.shape_text}")

    @property
    def shape_text(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


def tensor_info(arg) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorInfo(arg.name, np.dtype(_ORT_TYPES.get(arg.type, np.float32)), shape)


def has_batch_axis(args) -> bool:
    return all(len(a.shape) > 0 and not (isinstance(a.shape[0], int) and a.shape[0] > 0) for a in args)


class _Waiter:
    """Blocks a synchronous caller until the batcher answered."""

    __slots__ = ("error", "event", "outputs")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None

    def done(self, outputs, error) -> None:
        self.outputs, self.error = outputs, error
        self.event.set()


@dataclass(eq=False)
class LoadedModel:
    stored: StoredModel
    session: ort.InferenceSession
    provider: str  # the provider the session really runs on (its first)
    providers: list[str]
    inputs: dict[str, TensorInfo]
    output_names: list[str]
    runtime: Runtime = field(default_factory=Runtime)
    batchable: bool = False  # every input and output has a free first (batch) axis
    metrics: ModelMetrics | None = None  # bound by the ModelHost that serves it
    batcher: Batcher | None = None  # set by the ModelHost when the runtime turns batching on
    run_ms: float | None = None  # one warm session run of a single item, measured by the golden check
    golden_passed: bool | None = None
    # Taps after the live answer (bound by the ModelHost / the shadow worker): all cost O(1) on the request path.
    drift: ModelDrift | None = None
    shadow: ShadowRunner | None = None
    sampler: Sampler | None = None  # data capture (edge_agent/sampler.py)

    @classmethod
    def from_session(cls, stored: StoredModel, session: ort.InferenceSession, runtime: Runtime) -> LoadedModel:
        used = session.get_providers()
        return cls(
            stored=stored, session=session, provider=used[0], providers=used,
            inputs={i.name: tensor_info(i) for i in session.get_inputs()},
            output_names=[o.name for o in session.get_outputs()], runtime=runtime,
            batchable=has_batch_axis(session.get_inputs()) and has_batch_axis(session.get_outputs()),
        )

    @property
    def name(self) -> str:
        return self.stored.manifest.name

    @property
    def version(self) -> str:
        return self.stored.manifest.version

    @property
    def sha256(self) -> str:
        return self.stored.sha256

    @property
    def manifest(self) -> Manifest:
        return self.stored.manifest

    @property
    def precision(self) -> Precision:
        return self.runtime.precision

    def with_runtime(self, runtime: Runtime) -> LoadedModel:
        """The same session under a runtime that differs only in batching (a new batcher, new metrics)."""
        return replace(self, runtime=runtime, batcher=None, metrics=None, drift=None, shadow=None, sampler=None)

    # --- validation ---------------------------------------------------------------------------------------
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
        """Run inputs that passed `validate`; not counted (the golden check and the batcher use it)."""
        try:
            return dict(zip(self.output_names, self.session.run(self.output_names, inputs), strict=True))
        except InvalidArgument as exc:  # what validation cannot see, e.g. two inputs that disagree on a free dim
            raise InputError(f"inputs rejected by the model: {first_line(exc)}") from None
        except Exception as exc:  # onnxruntime's other errors are untyped RuntimeErrors
            raise InferenceError(f"inference failed: {first_line(exc)}") from None

    # --- the request path ---------------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Validate, run (batched when this model's runtime says so) and count; safe from any thread."""
        outputs = self.infer(feeds)
        return [outputs[n] for n in self.output_names]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`run`, answered by output name."""
        batcher = self.batcher if self.batchable else None
        if batcher is not None:
            waiter = _Waiter()
            self.submit(feeds, waiter.done)
            waiter.event.wait()
            if waiter.error is not None:
                raise waiter.error
            return waiter.outputs  # type: ignore[return-value]
        started = time.perf_counter()
        try:
            self.validate(feeds)
            outputs = self.run_checked(feeds)
        except Exception as exc:
            self.record(0.0, None, exc)
            raise
        self.record(time.perf_counter() - started, None, None)
        self.tap(feeds, outputs)
        return outputs

    def tap(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], camera: bool | None = None) -> None:
        """After the live answer: the drift histograms, the shadow candidate and data capture see the sample (HTTP
        requests and camera frames alike run through here; `camera`: whether a camera's run, when asked on
        another thread than the camera's). The confidence is computed once, for drift and capture. Never raises
        into the request."""
        drift, shadow, sampler = self.drift, self.shadow, self.sampler
        if drift is not None and not drift.wants():
            drift = None
        capture = False
        if sampler is not None and not (in_camera_run() if camera is None else camera):
            capture = sampler.enabled
            if not capture:
                sampler.not_opted_in()
        if drift is None and shadow is None and not capture:
            return
        outs = [outputs[n] for n in self.output_names]
        try:
            conf = confidence(self.manifest.task, outs) if drift is not None or capture else None
            if drift is not None:
                drift.add(feeds, conf)
            if shadow is not None:
                shadow.offer(feeds, outs)
            if capture and sampler is not None:
                sampler.offer_tensor(self, feeds, outs, conf)
        except Exception as exc:  # a tap must never fail a request that was answered
            log.warning("tap on %s failed: %s", self.name, exc)

    def submit(self, feeds: dict[str, np.ndarray], done: Done) -> None:
        """The batched request path, for blocking and async callers alike: validate, queue on the batcher,
        and when the batch ran, count the request and call `done(outputs, error)` on the batcher's thread.
        Inputs the model refuses are counted and raise InputError here; `done` is not called."""
        batcher = self.batcher
        assert batcher is not None, "submit() needs a batcher (see `batched`)"
        try:
            self.validate(feeds)
        except InputError as exc:
            self.record(0.0, None, exc)
            raise
        started = time.perf_counter()
        camera = in_camera_run()  # asked here: the batch finishes on the batcher's thread

        def finished(outputs, error, queued: float) -> None:
            self.record(time.perf_counter() - started, queued, error)
            done(outputs, error)
            if error is None and outputs is not None:
                self.tap(feeds, outputs, camera)  # after the answer went out

        batcher.submit(self, feeds, finished)

    @property
    def batched(self) -> bool:
        return self.batcher is not None and self.batchable

    def record(self, seconds: float, queued: float | None, error: BaseException | None) -> None:
        """Count a request that a transport ran itself or refused while parsing."""
        metrics = self.metrics
        if metrics is None:
            return
        if error is not None:
            metrics.failed(bad_request=isinstance(error, InputError))
        else:
            metrics.observe(seconds, queued)


def load(stored: StoredModel, runtime: Runtime, *, optimization: str = "all", cache_dir=None,
         providers=None, plaintext: bytes | None = None) -> LoadedModel:
    """A session for a stored bundle, built from its file (never from a copy of its bytes); for an encrypted
    bundle, from `plaintext`, the model decrypted into memory (and then no engine cache is written either)."""
    from .session import create_session

    source = stored.model_path if plaintext is None else plaintext
    session = create_session(source, runtime, providers=providers, optimization=optimization, cache_dir=cache_dir,
                             disk_cache=plaintext is None)
    return LoadedModel.from_session(stored, session, runtime)

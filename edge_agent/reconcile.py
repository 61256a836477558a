"""The agent's core loop: bring what the device serves in line with the desired state, one model at a time.

Each model name has its own worker thread, so one model's download, engine build or failure never holds up
another's: desired → (already serving this bundle with this runtime? report) → memory check → download the
missing chunks → verify → memory check → load (`building` while a provider compiles) → golden check → swap
→ promote on disk with the runtime it applied with → report serving. Any failure keeps that model's previous
version serving and reports `failed` with the reason; the other models are untouched. A model no longer
desired is unloaded.

A desired revision seen again (the hello answer, a duplicate delivery) is only acknowledged: a worker already
on that bundle and runtime goes on where it is, so nothing is downloaded twice.

The MQTT shell only submits valid desired states, refusals and chunks; the HTTP shell asks for rollbacks.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any, Protocol, Self

import onnxruntime as ort

from fleet_protocol.bundle import BundleError
from fleet_protocol.encryption import EncryptionError
from fleet_protocol.messages import (
    BundleRef,
    Desired,
    ModelReport,
    ModelSpec,
    ModelState,
    Reported,
    Runtime,
    ServingModel,
    Shadow,
    ShadowReport,
    WrappedKey,
)
from fleet_protocol.signing import public_keys

from . import __version__, hardware
from .drift import confidence
from .keys import ModelKeys
from .runtime import golden
from .runtime.errors import (
    GoldenCheckError,
    MemoryBudgetError,
    ModelLoadError,
    ProviderError,
)
from .runtime.host import ModelHost
from .runtime.model import LoadedModel, load
from .runtime.session import providers_for
from .settings import AgentSettings
from .shadow.compare import comparer_for
from .shadow.runner import ShadowRunner
from .store import DigestMismatch, ModelStore, PartialDownload, StoredModel

DOWNLOAD_ATTEMPTS = 3
# Errors that refuse one bundle (reported `failed`, the previous version keeps serving).
REFUSALS = (BundleError, EncryptionError, GoldenCheckError, MemoryBudgetError, ModelLoadError, ProviderError, TimeoutError,
            OSError)

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What the core needs from the network (the MQTT shell implements it)."""

    # Called again for an artifact already watched, it must subscribe again (the broker then delivers the
    # retained chunks again), not do nothing.
    def watch_artifact(self, sha256: str) -> None: ...
    def unwatch_artifact(self, sha256: str) -> None: ...
    def request_chunks(self, sha256: str, chunk_size: int, missing: list[int]) -> None: ...
    def report(self, reported: Reported) -> None: ...


class Cameras(Protocol):
    """The camera manager as the reconciler uses it (edge_agent/camera/manager.py)."""

    def apply(self, cameras: list) -> None: ...
    def report(self) -> dict: ...
    def check(self, models: dict) -> dict[str, str]: ...


class Superseded(Exception):
    """The desired state of this model changed while we worked on the previous one."""


class Busy(RuntimeError):
    """The worker is applying a desired state and did not get to a command in time; the command was dropped."""


class ModelRejected(RuntimeError):
    """A model that loaded and passed its golden check, refused by the cameras that name it."""


@dataclass(frozen=True)
class Target:
    """What one model should be: a bundle with the runtime it runs with (`explicit`: set by the fleet, so it is
    persisted; otherwise the device's own settings)."""

    bundle: BundleRef
    runtime: Runtime
    explicit: bool
    rollout_id: int | None = None
    key: WrappedKey | None = None  # the data key of an encrypted bundle, wrapped for this device
    shadow: Shadow | None = None  # a candidate evaluated beside the live bundle

    @classmethod
    def of(cls, spec: ModelSpec, default: Runtime) -> Target:
        explicit = "runtime" in spec.model_fields_set
        return cls(spec.bundle, spec.runtime if explicit else default, explicit, spec.rollout_id, spec.key,
                   spec.shadow)

    def same_work(self, other: Target | None) -> bool:
        """Whether `other` asks for exactly this work (the rollout that asks does not matter; a key that came or
        went does: a model refused for want of its key is tried again when it comes; so does a shadow candidate,
        which is reported)."""
        return other is not None and (self.bundle, self.runtime, self.explicit, self.key, self.shadow) == \
            (other.bundle, other.runtime, other.explicit, other.key, other.shadow)


REMOVE = object()  # a worker's target when its model left the desired state


def same_session(a: Runtime, b: Runtime) -> bool:
    """Whether a session built under `a` is what `b` asks for (batching is the model's batcher, not the session)."""
    return (a.providers, a.require_provider, a.intra_op_threads, a.precision) == \
        (b.providers, b.require_provider, b.intra_op_threads, b.precision)


def _serving(model: LoadedModel | None) -> ServingModel | None:
    return ServingModel(name=model.name, version=model.version, sha256=model.sha256) if model is not None else None


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1900]


class Reconciler:
    def __init__(self, settings: AgentSettings, store: ModelStore, host: ModelHost, transport: Transport | None = None,
                 cameras: Cameras | None = None, keys: ModelKeys | None = None) -> None:
        self.settings = settings
        self.keys = keys or ModelKeys(settings.data_dir)  # the device key pair is made here on first start
        self.store = store
        self.host = host
        self.transport = transport
        self.cameras = cameras
        self.trusted_keys = public_keys(settings.trusted_keys)
        self.workers: dict[str, ModelWorker] = {}
        self._desired: Desired | None = None
        self._error: str | None = None
        self._reports: dict[str, ModelReport] = {}
        self._lock = threading.RLock()
        self._started = False
        self._last: Reported | None = None
        self._hardware = hardware.facts()

    # --- lifecycle ----------------------------------------------------------------------------------------
    def boot(self) -> list[LoadedModel]:
        """Serve every model the store holds, as it last applied, before any network is tried."""
        self.store.collect_garbage(boot=True)  # whatever a kill -9 left half-done
        served = []
        for name in self.store.names():
            model = self._worker(name).boot()
            if model is not None:
                served.append(model)
        return served

    def start(self) -> None:
        with self._lock:
            self._started = True
            for worker in self.workers.values():
                worker.start()

    def stop(self) -> None:
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.stop()

    def settle(self) -> None:
        """Run every worker's pending work on the calling thread (workers not started: tests, tools)."""
        assert not self._started, "settle() is for a reconciler whose workers do not run"
        for worker in list(self.workers.values()):
            worker.step()

    def _worker(self, name: str) -> ModelWorker:
        with self._lock:
            worker = self.workers.get(name)
            if worker is None:
                worker = self.workers[name] = ModelWorker(name, self)
                if self._started:
                    worker.start()
            return worker

    # --- from the shells ----------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        """The newest desired revision taken up (0: none), what the device says in its hello."""
        desired = self._desired
        return desired.revision if desired is not None else 0

    @property
    def desired(self) -> Desired | None:
        return self._desired

    def submit(self, desired: Desired) -> None:
        with self._lock:
            current = self._desired
            if current is not None and desired.revision <= current.revision:
                # A duplicate (the hello answer, a re-publication) or an older one: acknowledge, change nothing.
                log.info("desired revision %d acknowledged (have %d)", desired.revision, current.revision)
                self._error = None if desired.revision == current.revision else self._error
                self.publish()
                return
            self._desired = desired
            self._error = None
            if self.host.sampler is not None:
                self.host.sampler.update(desired.capture)
            default = self.settings.runtime()
            for name, spec in desired.models.items():
                self._worker(name).submit(Target.of(spec, default))
            for name, worker in list(self.workers.items()):
                if name not in desired.models:
                    worker.submit(REMOVE)
            if self.cameras is not None:
                try:
                    self.cameras.apply(list(desired.cameras))
                except Exception as exc:  # the camera manager reports per camera; never lose the models over it
                    log.error("cameras not applied: %s", exc)
            self.publish()

    def refuse(self, reason: str) -> None:
        """A desired state refused as a whole (unknown schema, invalid): say so, keep running what runs."""
        with self._lock:
            self._error = reason[:1900]
            self.publish()

    def on_chunk(self, sha256: str, index: int, data: bytes) -> bool:
        """Hand a chunk to the worker downloading that artifact; False when none is."""
        for worker in list(self.workers.values()):
            if worker.downloading == sha256:
                worker.on_chunk(sha256, index, data)
                return True
        return False

    def rollback(self, name: str, timeout: float = 60.0) -> str:
        worker = self.workers.get(name)
        if worker is None:
            raise RuntimeError(f"model {name!r} is not on this device")
        return worker.rollback(timeout)

    # --- what the workers share -------------------------------------------------------------------------
    def budget_mb(self) -> float | None:
        desired = self._desired
        if desired is not None and desired.memory_budget_mb is not None:
            return float(desired.memory_budget_mb)
        return float(self.settings.memory_budget_mb) or None

    def update(self, name: str, report: ModelReport | None) -> None:
        with self._lock:
            if report is None:
                self._reports.pop(name, None)
            else:
                self._reports[name] = report
            self.publish()

    def refresh(self) -> None:
        """Publish again if what the cameras report changed since the last publication (their states change on
        their own: a source that drops, a pipeline that recovers)."""
        if self.cameras is None:
            return
        with self._lock:
            last = self._last
            try:
                now = self.cameras.report()
            except Exception as exc:
                log.error("camera report failed: %s", exc)
                return
            if last is None or now != last.cameras:
                self.publish()

    @property
    def last_reported(self) -> Reported | None:
        return self._last

    def reported(self) -> Reported:
        with self._lock:
            cameras = {}
            if self.cameras is not None:
                try:
                    cameras = self.cameras.report()
                except Exception as exc:
                    log.error("camera report failed: %s", exc)
            return Reported(
                revision=self.revision, models=dict(self._reports), cameras=cameras, error=self._error,
                providers_available=ort.get_available_providers(), hardware=self._hardware,
                agent_version=__version__, onnxruntime_version=ort.__version__, public_key=self.keys.public_key,
            )

    def publish(self) -> None:
        with self._lock:
            reported = self.reported()
            self._last = reported
            if self.transport is not None:
                self.transport.report(reported)


class _Building:
    """While a provider compiles its engine: report `building` with a progress that grows towards (never to) 1."""

    def __init__(self, worker: ModelWorker, expected_s: float, interval_s: float = 2.0) -> None:
        self.worker = worker
        self.expected_s = expected_s
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"building-{worker.name}", daemon=True)

    def __enter__(self) -> Self:
        self.worker.say(ModelState.building, progress=0.0)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self.interval_s):
            elapsed = time.monotonic() - started
            self.worker.say(ModelState.building, progress=min(0.95, 1 - math.exp(-elapsed / self.expected_s)))


class ModelWorker:
    """Everything about one model name: its target, its download, its report; one thread."""

    def __init__(self, name: str, reconciler: Reconciler) -> None:
        self.name = name
        self.r = reconciler
        self.settings = reconciler.settings
        self.store = reconciler.store
        self.host = reconciler.host
        self._target: Any = None  # Target, REMOVE or None (nothing asked: serve what booted)
        self._applied: Any = None  # the target last worked on to its end (served or refused)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._chunks: queue.Queue[tuple[str, int, bytes]] = queue.Queue(maxsize=4096)
        self._thread = threading.Thread(target=self._run, name=f"model-{name}", daemon=True)
        self._rollback: Future[str] | None = None
        self.downloading: str | None = None  # the artifact whose chunks this worker takes
        self.busy_with: str | None = None  # the bundle this worker is downloading or loading (kept by the GC)
        self._report = ModelReport(state=ModelState.pending)
        # The shadow candidate: its spec, its session (held here, never served) and what it reports.
        self._shadow_spec: Shadow | None = None
        self._shadow_model: LoadedModel | None = None
        self._shadow_runner: ShadowRunner | None = None
        self._shadow_report: ShadowReport | None = None
        self._shadow_claimed: str | None = None

    # --- other threads ------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._end_shadow()

    def submit(self, target: Any) -> None:
        current = self._target
        if isinstance(target, Target) and target.same_work(current if isinstance(current, Target) else None):
            # Same bundle, same runtime in a newer revision: keep going (a download in progress is not
            # restarted; chunks on disk stay). Only a failed attempt is tried again: the fleet asked anew, and
            # what refused it may have changed (memory budget, a timed-out download resumes).
            failed = self._report.state == ModelState.failed
            self._target = target
            if self._applied is current and not failed and target.shadow == current.shadow:
                self._applied = target
            self._wake.set()
            return
        self._target = target
        self._wake.set()

    def on_chunk(self, sha256: str, index: int, data: bytes) -> None:
        try:
            self._chunks.put_nowait((sha256, index, data))
        except queue.Full:
            log.warning("chunk queue full; dropping chunk %d (it will be asked for again)", index)

    def rollback(self, timeout: float = 60.0) -> str:
        """Serve the previous version again, on the worker thread (so it never races a rollout)."""
        future: Future[str] = Future()
        self._rollback = future
        self._wake.set()
        if not self._thread.is_alive():
            self._do_rollback()
        try:
            return future.result(timeout=timeout)
        except FuturesTimeout:
            # Cancelled, it never runs: a rollback done later would roll back whatever was swapped in meanwhile.
            if future.cancel():
                revision = self.r.revision
                raise Busy(f"the agent is busy applying desired revision {revision}; rollback not done, try again") from None
            return future.result()  # it had already started: its outcome is the answer

    # --- reports ------------------------------------------------------------------------------------------
    def say(self, state: ModelState, *, progress: float = 0.0, error: str | None = None) -> None:
        target = self._target if isinstance(self._target, Target) else None
        serving = self.host.get(self.name)
        report = ModelReport(
            state=state, progress=min(max(progress, 0.0), 1.0), error=error,
            desired=ServingModel(name=self.name, version=target.bundle.version, sha256=target.bundle.sha256) if target else None,
            serving=_serving(serving),
            provider=serving.provider if serving is not None else None,
            precision=serving.precision if serving is not None else None,
            golden_passed=serving.golden_passed if serving is not None else None,
            rollout_id=target.rollout_id if target else None,
            shadow=self._shadow_report if target is not None and target.shadow is not None else None,
        )
        self._report = report
        self.r.update(self.name, report)

    # --- boot -----------------------------------------------------------------------------------------------
    def boot(self) -> LoadedModel | None:
        current = self.store.current(self.name)
        for which, stored in (("current", current), ("previous", self.store.previous(self.name))):
            if stored is None:
                continue
            runtime = self.store.runtime(self.name, which) or self.settings.runtime()
            try:
                model = self._load_checked(stored, runtime)
            except (*REFUSALS, RuntimeError) as exc:
                log.error("stored model %s %s does not load: %s", stored.manifest.name, stored.manifest.version, exc)
                continue
            self.host.swap(model)
            if current is not None and stored.sha256 != current.sha256:
                self.store.fall_back(self.name, stored.sha256, current.sha256)
            log.info("serving %s %s from disk on %s", model.name, model.version, model.provider)
            self.say(ModelState.serving)
            return model
        return None

    # --- the worker -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            self.step()

    def step(self) -> None:
        """One round: a pending rollback, then the target if it changed."""
        if self._rollback is not None:
            self._do_rollback()
        target = self._target
        if target is None or target is self._applied:
            return
        try:
            if target is REMOVE:
                self._end_shadow()
                self._remove()
            else:
                self._apply(target)
                self._apply_shadow(target)
            self._applied = target
        except Superseded:
            return
        except Exception as exc:  # a failed apply must leave the agent serving and reporting
            log.exception("applying %s failed", self.name)
            self.say(ModelState.failed, error=f"internal error: {_short(exc)}")
            self._applied = target
        finally:
            if self.busy_with is not None:
                self.store.release(self.busy_with)
            self.busy_with = None

    def _remove(self) -> None:
        if self.host.get(self.name) is not None:
            self.say(ModelState.removing)
        self.host.remove(self.name)
        self.store.forget(self.name)
        log.info("%s is no longer desired: unloaded", self.name)
        self.r.update(self.name, None)

    def _do_rollback(self) -> None:
        future, self._rollback = self._rollback, None
        if future is None or not future.set_running_or_notify_cancel():
            return
        try:
            stored = self.store.previous(self.name)
            if stored is None:
                raise RuntimeError(f"no previous version of {self.name} to roll back to")
            runtime = self.store.runtime(self.name, "previous")
            model = self._load_checked(stored, runtime or self.settings.runtime())
        except Exception as exc:
            log.error("rollback of %s failed: %s", self.name, exc)
            future.set_exception(exc)
            return
        self.host.swap(model)
        self.store.promote(self.name, model.sha256, runtime)
        log.info("rolled back to %s %s", model.name, model.version)
        self.say(ModelState.serving, error="rolled back on command")
        future.set_result(f"serving {model.name} {model.version}")

    def _check_superseded(self, target: Target) -> None:
        if self._target is not target and not target.same_work(self._target if isinstance(self._target, Target) else None):
            raise Superseded()

    def _apply(self, target: Target) -> None:
        ref, runtime = target.bundle, target.runtime
        current = self.host.get(self.name)
        try:
            if current is not None and current.sha256 == ref.sha256 and same_session(current.runtime, runtime):
                if current.runtime != runtime:  # only batching changed: the same session, a new batcher
                    self.host.swap(current.with_runtime(runtime))
                self.store.promote(self.name, ref.sha256, runtime if target.explicit else None)
                self.say(ModelState.serving)
                return
            self.store.claim(ref.sha256)  # kept by the store's garbage collection until this apply ends
            self.busy_with = ref.sha256
            self.r.keys.remember(ref.sha256, target.key)
            stored = self.store.get(ref.sha256)
            if stored is None:
                self.host.check_memory(self.name, ref.size, self.r.budget_mb())
                stored = self._download(target)
            self.host.check_memory(self.name, stored.model_path.stat().st_size, self.r.budget_mb())
            self._check_superseded(target)
            model = self._load_checked(stored, runtime)
            self._check_superseded(target)
            self._admit(model)
        except REFUSALS + (ModelRejected,) as exc:
            log.error("%s %s refused: %s", ref.name, ref.version, exc)
            self.say(ModelState.failed, error=_short(exc))
            return
        self.host.swap(model)
        self.store.promote(self.name, model.sha256, runtime if target.explicit else None)
        self.r.keys.forget_except({p.name for p in self.store.models.iterdir()})
        log.info("now serving %s %s on %s (%s)", model.name, model.version, model.provider, model.precision.value)
        self.say(ModelState.serving)

    # --- the shadow candidate ---------------------------------------------------------------------------------
    def _apply_shadow(self, target: Target) -> None:
        """Load, keep or drop the shadow candidate so it matches `target.shadow`, and tap the live model.

        The candidate comes through the same path as a served bundle (memory check, download, verify, load,
        golden check) but is never swapped in: it only gets the samples the live model's tap offers."""
        spec = target.shadow
        live = self.host.get(self.name)
        if spec is None:
            self._end_shadow()
            return
        same = self._shadow_spec is not None and self._shadow_spec.bundle.sha256 == spec.bundle.sha256
        if same and self._shadow_runner is not None and self._shadow_spec == spec:
            if live is not None and live.shadow is not self._shadow_runner:
                live.shadow = self._shadow_runner  # the live model was swapped (e.g. a runtime change)
            return
        if same and self._shadow_model is not None and live is not None:  # only the rate or the budget changed
            self._start_runner(spec, self._shadow_model, live)
            return
        self._end_shadow()
        ref = spec.bundle
        self._shadow_spec = spec
        self._shadow_report = ShadowReport(bundle=ServingModel(name=ref.name, version=ref.version, sha256=ref.sha256),
                                           state=ModelState.loading)
        try:
            if live is None:
                raise ModelRejected(f"no live {self.name} serves here to compare the candidate with")
            if spec.key is not None:
                raise BundleError("the candidate's model file is encrypted, which this agent version cannot decrypt")
            self.store.claim(ref.sha256)  # kept while the shadow runs (and for the promotion that may follow)
            self._shadow_claimed = ref.sha256
            stored = self.store.get(ref.sha256)
            if stored is None:
                # The candidate loads beside everything served: the same check as for a new version.
                self.host.check_memory(self.name, ref.size, self.r.budget_mb())
                self._shadow_report = self._shadow_report.model_copy(update={"state": ModelState.downloading})
                stored = self._download(target, ref)
            self.host.check_memory(self.name, stored.model_path.stat().st_size, self.r.budget_mb())
            candidate = load(stored, target.runtime, providers=providers_for(target.runtime),
                             optimization=self.settings.graph_optimization, cache_dir=self.store.cache)
            golden.check(candidate)
        except REFUSALS + (ModelRejected,) as exc:
            log.error("shadow candidate %s %s refused: %s", ref.name, ref.version, exc)
            self._shadow_report = self._shadow_report.model_copy(
                update={"state": ModelState.failed, "error": _short(exc)})
            self.say(self._report.state, progress=self._report.progress, error=self._report.error)
            return
        self._shadow_model = candidate
        self._start_runner(spec, candidate, live)
        log.info("shadow: %s %s evaluates beside %s (sample rate %g, cpu budget %g)", ref.name, ref.version,
                 live.version, spec.sample_rate, spec.cpu_budget)

    def _start_runner(self, spec: Shadow, candidate: LoadedModel, live: LoadedModel) -> None:
        if self._shadow_runner is not None:
            live.shadow = None
            self._shadow_runner.stop()
        names = candidate.output_names

        def run(feeds) -> list:
            out = candidate.run_checked(dict(feeds))  # the live model validated these inputs
            return [out[n] for n in names]

        runner = ShadowRunner(
            candidate.version, run,
            comparer_for(candidate.manifest.task), sample_rate=spec.sample_rate, cpu_budget=spec.cpu_budget,
        )
        runner.on_disagree = self._disagreed(candidate.version)
        runner.start()
        self._shadow_spec, self._shadow_runner = spec, runner
        live.shadow = runner
        self._shadow_report = ShadowReport(
            bundle=ServingModel(name=spec.bundle.name, version=spec.bundle.version, sha256=spec.bundle.sha256),
            state=ModelState.serving)
        self.say(self._report.state, progress=self._report.progress, error=self._report.error)

    def _disagreed(self, version: str):
        """A sample the candidate disagreed on, offered for capture with the live model that answered it."""
        def offer(feeds, live_outputs) -> None:
            model, sampler = self.host.get(self.name), self.host.sampler
            if model is not None and sampler is not None:
                conf = confidence(model.manifest.task, live_outputs)
                sampler.offer_tensor(model, feeds, live_outputs, conf, shadow_version=version)
        return offer

    def shadow_telemetry(self):
        runner = self._shadow_runner
        return runner.telemetry() if runner is not None else None

    def _end_shadow(self) -> None:
        runner, self._shadow_runner = self._shadow_runner, None
        live = self.host.get(self.name)
        if live is not None and live.shadow is runner:
            live.shadow = None
        if runner is not None:
            runner.stop()
        claimed = self._shadow_claimed
        if claimed is not None:
            self.store.release(claimed)
            self._shadow_claimed = None
        self._shadow_model = None
        self._shadow_spec = None
        self._shadow_report = None

    def _admit(self, model: LoadedModel) -> None:
        cameras = self.r.cameras
        if cameras is None:
            return
        manifests = {n: m.manifest for n, m in self.host.models().items()}
        manifests[self.name] = model.manifest
        reasons = cameras.check(manifests)
        desired = self.r.desired
        users = {c.name for c in (desired.cameras if desired is not None else []) if self.name in c.models()}
        refused = {cam: why for cam, why in reasons.items() if cam in users}
        if refused:
            raise ModelRejected("; ".join(f"camera {cam!r}: {why}" for cam, why in sorted(refused.items())))

    def _load_checked(self, stored: StoredModel, runtime: Runtime) -> LoadedModel:
        providers = providers_for(runtime)
        # An encrypted bundle (already verified: its signature covers the ciphertext) is decrypted into memory
        # only; the session is built from those bytes and they are dropped once it holds its own copy.
        plaintext = None
        if stored.manifest.encryption is not None:
            plaintext = self.r.keys.decrypt(stored.sha256, stored.manifest, stored.model_path)
        if providers[0].builds_engine:
            with _Building(self, expected_s=60.0):
                model = load(stored, runtime, providers=providers, optimization=self.settings.graph_optimization,
                             cache_dir=self.store.cache, plaintext=plaintext)
        else:
            self.say(ModelState.loading, progress=1.0)
            model = load(stored, runtime, providers=providers, optimization=self.settings.graph_optimization,
                         cache_dir=self.store.cache, plaintext=plaintext)
        del plaintext
        golden.check(model)
        return model

    def _download(self, target: Target, ref: BundleRef | None = None) -> StoredModel:
        ref = ref or target.bundle
        transport = self.r.transport
        if transport is None:
            raise TimeoutError("no network transport to download from")
        partial = self.store.partial(ref)
        if ref is target.bundle:
            self.say(ModelState.downloading, progress=partial.progress)
        self.downloading = ref.sha256
        transport.watch_artifact(ref.sha256)
        try:
            for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
                self._fetch(target, partial, ref)
                if ref is target.bundle:
                    self.say(ModelState.verifying, progress=1.0)
                try:
                    return self.store.install(partial, self.r.trusted_keys)
                except DigestMismatch as exc:
                    if attempt == DOWNLOAD_ATTEMPTS:
                        raise
                    log.warning("%s; fetching it again (attempt %d)", exc, attempt + 1)
            raise AssertionError("unreachable")
        finally:
            self.downloading = None
            transport.unwatch_artifact(ref.sha256)

    def _fetch(self, target: Target, partial: PartialDownload, ref: BundleRef | None = None) -> None:
        """Take the artifact's chunks until it is complete. When none came for a while, first subscribe again:
        the (site) broker delivers its retained chunks again, at no cost on the link to the centre. Only when
        that brought nothing new either is the fleet asked again: a second ask of this device makes the API
        publish the chunk again, to every device of every site. Each quiet round without a new chunk doubles
        the wait (up to `chunk_wait_max_s`): a slow broker queue is waited for, not flooded."""
        ref = ref or target.bundle
        transport = self.r.transport
        assert transport is not None
        settings = self.settings
        deadline = time.monotonic() + settings.download_timeout_s
        reported_progress = partial.progress
        wait = settings.chunk_timeout_s
        ask = True  # the first round asks; then re-subscribing and asking alternate while nothing new comes
        while missing := partial.missing():
            if time.monotonic() > deadline:
                raise TimeoutError(f"download of {ref.name} {ref.version} timed out ({len(missing)} chunks missing)")
            if ask:
                transport.request_chunks(ref.sha256, ref.chunk_size, missing)
            else:
                transport.watch_artifact(ref.sha256)  # sends SUBSCRIBE again: the retained chunks come again
            # Take chunks until none of this artifact came for `wait`. Duplicates (a re-subscription's replay)
            # keep the round going, but only new chunks are progress.
            before, quiet_until = partial.received, time.monotonic() + wait
            while not partial.complete:
                self._check_superseded(target)
                if self._stop.is_set():
                    raise Superseded()
                now = time.monotonic()
                if now >= min(quiet_until, deadline):
                    break
                try:  # in slices of chunk_timeout_s at most, so that a new target or a stop is seen soon
                    sha, index, data = self._chunks.get(timeout=min(quiet_until - now, deadline - now,
                                                                    settings.chunk_timeout_s))
                except queue.Empty:
                    continue
                if sha != ref.sha256:
                    continue
                quiet_until = time.monotonic() + wait
                if not partial.put(index, data):
                    log.warning("chunk %d of %s has a wrong size or index; ignored", index, ref.sha256[:12])
                if ref is target.bundle and partial.progress - reported_progress >= 0.1:
                    reported_progress = partial.progress
                    self.say(ModelState.downloading, progress=partial.progress)
            new = partial.received > before
            # A round that brought chunks: the stream flows, some did not come; the broker's retained copies
            # may hold them. A re-subscription that brought nothing: the broker holds no more, ask the fleet.
            ask = not ask and not new
            wait = settings.chunk_timeout_s if new else max(settings.chunk_timeout_s,
                                                            min(wait * 2, settings.chunk_wait_max_s))

__all__ = ["Busy", "ModelRejected", "ModelWorker", "Reconciler", "Superseded", "Target", "Transport"]

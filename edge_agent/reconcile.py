"""The agent's core loop: bring what the device serves in line with the desired state.

desired → (already serving? report) → download missing chunks → verify → load → golden check → swap →
promote on disk → report serving. Any failure keeps the old model serving and reports `failed` with the
reason. Runs on one worker thread; the MQTT shell only submits desired states and chunks to it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, TimeoutError as FuturesTimeout
from collections.abc import Callable
from typing import Protocol

import onnxruntime as ort

from fleet_protocol.bundle import BundleError
from fleet_protocol.messages import Desired, DeviceState, ModelRef, Reported, RuntimeConfig, ServingModel

from . import __version__, hardware
from .engine import Engine, GoldenCheckError, LoadedModel, ModelLoadError, golden_check, load
from .providers import ProviderError, resolve
from .settings import AgentSettings
from .store import DigestMismatch, ModelStore, PartialDownload, StoredModel

DOWNLOAD_ATTEMPTS = 3

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What the core needs from the network (the MQTT shell implements it)."""

    def watch_artifact(self, sha256: str) -> None: ...
    def unwatch_artifact(self, sha256: str) -> None: ...
    def request_chunks(self, sha256: str, chunk_size: int, missing: list[int]) -> None: ...
    def report(self, reported: Reported) -> None: ...


class Superseded(Exception):
    """A newer desired state arrived while we worked on an older one."""


class Busy(RuntimeError):
    """The worker is applying a desired state and did not get to a command in time; the command was dropped."""


class ModelRejected(RuntimeError):
    """An admission check refused a model that loaded and passed its golden check (e.g. no camera plug-in)."""


# Called with the new model and its runtime config before it is swapped in; raises ModelRejected to refuse it.
AdmissionCheck = Callable[[LoadedModel, RuntimeConfig], None]


class Reconciler:
    def __init__(self, settings: AgentSettings, store: ModelStore, engine: Engine, transport: Transport | None = None) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.transport = transport
        self.trusted_keys = settings.public_keys()
        self._desired: Desired | None = None
        self._wake = threading.Event()
        self._chunks: queue.Queue[tuple[str, int, bytes]] = queue.Queue(maxsize=4096)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._last: Reported | None = None
        self._hardware = hardware.facts()
        self._rollback: Future[str] | None = None
        self._applying: int | None = None  # the desired revision the worker is applying now
        self.runtime = store.load_runtime() or settings.runtime()
        self.admission_checks: list[AdmissionCheck] = []

    # --- called from other threads ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def submit(self, desired: Desired) -> None:
        current = self._desired
        if current is not None and desired.revision < current.revision:
            log.info("ignoring desired revision %d (have %d)", desired.revision, current.revision)
            return
        self._desired = desired
        self._wake.set()

    def on_chunk(self, sha256: str, index: int, data: bytes) -> None:
        try:
            self._chunks.put_nowait((sha256, index, data))
        except queue.Full:
            log.warning("chunk queue full; dropping chunk %d (it will be asked for again)", index)

    @property
    def last_reported(self) -> Reported | None:
        return self._last

    def rollback(self, timeout: float = 60.0) -> str:
        """Serve the previous model again, on the worker thread (so it never races a rollout). → what happened."""
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
                applying = self._applying
                doing = f" applying desired revision {applying}" if applying is not None else ""
                raise Busy(f"the agent is busy{doing}; rollback not done, try again") from None
            return future.result()  # it had already started: its outcome is the answer

    # --- boot: serve the last good model without any network ----------------------------------------------
    def boot(self) -> LoadedModel | None:
        self.store.collect_garbage()  # whatever a kill -9 left half-done
        self.engine.configure_batching(self.runtime.batching)
        current = self.store.current()
        for stored in (current, self.store.previous()):
            if stored is None:
                continue
            try:
                model = self._load_checked(stored, self.runtime)
            except (GoldenCheckError, ProviderError, BundleError, OSError, RuntimeError) as exc:
                log.error("stored model %s %s does not load: %s", stored.manifest.name, stored.manifest.version, exc)
                continue
            self.engine.swap(model)
            if current is not None and stored.sha256 != current.sha256:
                self.store.fall_back(stored.sha256, current.sha256)
            log.info("serving %s %s from disk on %s", model.name, model.version, model.provider)
            return model
        return None

    # --- the worker ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        applied = -1
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self._rollback is not None:
                self._do_rollback()
            desired = self._desired
            if desired is None or desired.revision == applied:
                continue
            self._applying = desired.revision
            try:
                self._apply(desired)
                applied = desired.revision
            except Superseded:
                continue
            except Exception as exc:  # a failed apply must leave the agent serving and reporting
                log.exception("applying desired revision %d failed", desired.revision)
                self._report(desired.revision, DeviceState.failed, error=f"internal error: {exc}")
                applied = desired.revision
            finally:
                self._applying = None

    def _do_rollback(self) -> None:
        future, self._rollback = self._rollback, None
        if future is None or not future.set_running_or_notify_cancel():
            return
        revision = self._desired.revision if self._desired is not None else 0
        try:
            previous = self.engine.previous
            stored = previous.stored if previous is not None else self.store.previous()
            if stored is None:
                raise RuntimeError("no previous model to roll back to")
            model = previous if previous is not None and _same_session(previous.runtime, self.runtime) else \
                self._load_checked(stored, self.runtime)
        except Exception as exc:
            log.error("rollback failed: %s", exc)
            future.set_exception(exc)
            return
        self.engine.swap(model)
        self.store.promote(model.sha256)
        log.info("rolled back to %s %s", model.name, model.version)
        self._report(revision, DeviceState.rolled_back, golden_passed=True)
        future.set_result(f"serving {model.name} {model.version}")

    def _apply(self, desired: Desired) -> None:
        # The fleet's runtime config when it sends one, else the device's own settings.
        runtime = desired.runtime or self.settings.runtime()
        self.runtime = runtime
        self.store.save_runtime(desired.runtime)
        self.engine.configure_batching(runtime.batching)
        ref = desired.model
        current = self.engine.current
        if ref is None:
            self._report(desired.revision, DeviceState.serving if current else DeviceState.idle)
            return
        if current is not None and current.sha256 == ref.sha256 and _same_session(current.runtime, runtime):
            self._report(desired.revision, DeviceState.serving)
            return
        previous = self.engine.previous
        try:
            if previous is not None and previous.sha256 == ref.sha256 and _same_session(previous.runtime, runtime):
                model = previous  # rollback: still loaded and already checked
            elif current is not None and current.sha256 == ref.sha256:
                self._report(desired.revision, DeviceState.loading, progress=1.0)
                model = self._load_checked(current.stored, runtime)  # same model, new session settings
            else:
                stored = self.store.get(ref.sha256) or self._download(desired, ref)
                self._report(desired.revision, DeviceState.loading, progress=1.0)
                model = self._load_checked(stored, runtime)
            for check in self.admission_checks:
                check(model, runtime)
        except (BundleError, GoldenCheckError, ModelLoadError, ModelRejected, ProviderError, TimeoutError, OSError) as exc:
            log.error("%s %s rejected: %s", ref.name, ref.version, exc)
            self._report(desired.revision, DeviceState.failed, error=f"{type(exc).__name__}: {exc}")
            return
        self.engine.swap(model)
        self.store.promote(model.sha256)
        log.info("now serving %s %s on %s", model.name, model.version, model.provider)
        self._report(desired.revision, DeviceState.serving, golden_passed=True)

    def _load_checked(self, stored: StoredModel, runtime: RuntimeConfig) -> LoadedModel:
        providers = resolve(runtime.providers, ort.get_available_providers(), runtime.require_provider)
        model = load(
            stored, providers, threads=runtime.intra_op_threads, optimization=self.settings.graph_optimization,
            cache_dir=self.store.cache, require=runtime.require_provider, runtime=runtime,
        )
        golden_check(model)
        return model

    def _download(self, desired: Desired, ref: ModelRef) -> StoredModel:
        if self.transport is None:
            raise TimeoutError("no network transport to download from")
        partial = self.store.partial(ref)
        self._report(desired.revision, DeviceState.downloading, progress=partial.progress)
        self.transport.watch_artifact(ref.sha256)
        try:
            for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
                self._fetch(desired, ref, partial)
                self._report(desired.revision, DeviceState.verifying, progress=1.0)
                try:
                    return self.store.install(partial, self.trusted_keys)
                except DigestMismatch as exc:
                    if attempt == DOWNLOAD_ATTEMPTS:
                        raise
                    log.warning("%s; fetching it again (attempt %d)", exc, attempt + 1)
            raise AssertionError("unreachable")
        finally:
            self.transport.unwatch_artifact(ref.sha256)

    def _fetch(self, desired: Desired, ref: ModelRef, partial: PartialDownload) -> None:
        assert self.transport is not None
        deadline = time.monotonic() + self.settings.download_timeout_s
        reported_progress = partial.progress
        while missing := partial.missing():
            if time.monotonic() > deadline:
                raise TimeoutError(f"download of {ref.name} {ref.version} timed out ({len(missing)} chunks missing)")
            self.transport.request_chunks(ref.sha256, ref.chunk_size, missing)
            # Take chunks until none came for a while, then ask again for whatever is still missing.
            while not partial.complete:
                if self._desired is not desired:
                    raise Superseded()
                try:
                    sha, index, data = self._chunks.get(timeout=self.settings.chunk_timeout_s)
                except queue.Empty:
                    break
                if sha != ref.sha256:
                    continue
                if not partial.put(index, data):
                    log.warning("chunk %d of %s has a wrong size or index; ignored", index, ref.sha256[:12])
                if partial.progress - reported_progress >= 0.1:
                    reported_progress = partial.progress
                    self._report(desired.revision, DeviceState.downloading, progress=partial.progress)

    def _report(self, revision: int, state: DeviceState, *, progress: float = 0.0, error: str | None = None,
                golden_passed: bool | None = None) -> None:
        model = self.engine.current
        reported = Reported(
            revision=revision,
            state=state,
            model=ServingModel(name=model.name, version=model.version, sha256=model.sha256) if model else None,
            progress=progress,
            error=error,
            provider=model.provider if model else None,
            providers_available=ort.get_available_providers(),
            golden_passed=golden_passed,
            hardware=self._hardware,
            agent_version=__version__,
        )
        self._last = reported
        if self.transport is not None:
            self.transport.report(reported)


def _same_session(a: RuntimeConfig, b: RuntimeConfig) -> bool:
    """Whether a session built under `a` is what `b` asks for (batching is the engine's, not the session's)."""
    return (a.providers, a.require_provider, a.intra_op_threads) == (b.providers, b.require_provider, b.intra_op_threads)

"""ModelHost: the models a device serves, by name, each swapped on its own without dropping a request.

`host.get(name)` is one dict read. A request reads it once and runs on that model to the end; a swap
replaces the entry after the new model was built, warmed up and golden-checked beside the old one. Requests
in flight finish on the old session, which is freed when the last of them drops its reference. No lock on
the request path: reading and rebinding a dict entry are atomic in CPython.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from fleet_protocol.messages import Batching

from ..drift import ModelDrift
from ..telemetry import Stats
from .batching import Batcher
from .errors import MemoryBudgetError
from .model import LoadedModel

if TYPE_CHECKING:
    from ..sampler import Sampler

# What a CPU session costs in RSS per byte of its model file, at the peak of its creation and after it:
# benchmarks/agent_overhead.py measured 1.7–1.9× for both with onnxruntime 1.32 (initializers plus the
# weights MLAS prepacks for MatMul), so 2× is budgeted for each.
LOAD_FACTOR = 2.0
STEADY_FACTOR = 2.0
OVERHEAD_MB = 8.0  # per session: kernels, arenas, thread pool


def load_cost_mb(model_bytes: int) -> float:
    return model_bytes * LOAD_FACTOR / 2**20 + OVERHEAD_MB


def steady_cost_mb(model_bytes: int) -> float:
    return model_bytes * STEADY_FACTOR / 2**20 + OVERHEAD_MB


class ModelHost:
    def __init__(self, stats: Stats | None = None, batch_workers: int = 1) -> None:
        self.stats = stats or Stats()
        self.batch_workers = batch_workers
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        # Per model name, the drift histograms of the current telemetry window (they span a hot swap, like the
        # request counts; telemetry names the version serving when the window closes).
        self.drift: dict[str, ModelDrift] = {}
        # Data capture (edge_agent/sampler.py), tapped into every model served; None: the device captures nothing.
        self.sampler: Sampler | None = None

    # --- request path -------------------------------------------------------------------------------------
    def get(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def names(self) -> list[str]:
        return sorted(self._models)

    def models(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    # --- control --------------------------------------------------------------------------------------------
    def swap(self, new: LoadedModel) -> LoadedModel | None:
        """Serve `new` under its name from now on. Returns the model it replaced (freed once its requests end);
        queued batched requests of the old one finish on it."""
        if new.metrics is None:
            new.metrics = self.stats.for_model(new.name, new.version, new.provider)
        if new.drift is None:
            drift = self.drift.get(new.name)
            if drift is None or drift.task != new.manifest.task:
                drift = self.drift[new.name] = ModelDrift(new.manifest.task)
            new.drift = drift
        if new.sampler is None:
            new.sampler = self.sampler
        batching = new.runtime.batching
        if new.batcher is None and batching.enabled and new.batchable:
            new.batcher = Batcher(batching, on_batch=self.stats.batch_size.observe, workers=self.batch_workers)
        with self._lock:
            old = self._models.get(new.name)
            self._models = {**self._models, new.name: new}
            self.stats.serving(self._models.values())
        if old is not None and old is not new and old.batcher is not None and old.batcher is not new.batcher:
            old.batcher.close()
        return old

    def remove(self, name: str) -> LoadedModel | None:
        with self._lock:
            models = dict(self._models)
            old = models.pop(name, None)
            self._models = models
            self.stats.serving(self._models.values())
        if old is not None and old.batcher is not None:
            old.batcher.close()
        return old

    def check_memory(self, name: str, model_bytes: int, budget_mb: float | None) -> None:
        """Refuse, before anything is allocated, a model that would not fit the budget while it loads beside
        everything served (including the version of `name` it replaces, which serves until the swap)."""
        if budget_mb is None:
            return
        serving = sum(steady_cost_mb(m.stored.model_path.stat().st_size if m.stored.model_path.exists() else 0)
                      for m in self._models.values())
        need = load_cost_mb(model_bytes)
        if serving + need > budget_mb:
            raise MemoryBudgetError(
                f"{name} needs ~{need:.0f} MiB to load ({model_bytes / 2**20:.1f} MiB model) and the models served "
                f"take ~{serving:.0f} MiB of the {budget_mb:g} MiB memory budget")

    def close(self) -> None:
        for model in list(self._models.values()):
            if model.batcher is not None:
                model.batcher.close()


__all__ = ["Batching", "LoadedModel", "ModelHost"]

"""Dynamic batching: requests that arrive within `max_delay_ms` of each other share one session run.

One worker thread. Each queued item carries the model it was read with, so a hot swap never mixes versions
in one batch: items are grouped by model and by their per-item shapes, concatenated along the batch axis,
run once and split again. An answer is always computed by one complete model version.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fleet_protocol.messages import Batching

if TYPE_CHECKING:
    from .model import LoadedModel

log = logging.getLogger(__name__)

Done = Callable[[dict[str, np.ndarray] | None, BaseException | None, float], None]  # outputs, error, queue seconds


class _Item:
    __slots__ = ("done", "enqueued", "inputs", "model", "rows")

    def __init__(self, model: LoadedModel, inputs: dict[str, np.ndarray], done: Done) -> None:
        self.model = model
        self.inputs = inputs
        self.done = done
        self.enqueued = time.perf_counter()
        self.rows = next(iter(inputs.values())).shape[0]


class Batcher:
    def __init__(self, config: Batching, on_batch: Callable[[int], None] | None = None, workers: int = 1) -> None:
        self.config = config
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        # More than one worker lets batches run on several cores at once (each session run uses one thread).
        self._threads = [threading.Thread(target=self._run, name=f"batcher-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, model: LoadedModel, inputs: dict[str, np.ndarray], done: Done) -> None:
        item = _Item(model, inputs, done)
        with self._lock:  # closing and queueing exclude each other, so nothing is queued after the stop mark
            if not self._closed:
                self._queue.put(item)
                return
        _run_group([item])  # a request that raced with a reconfiguration runs unbatched, in its own thread

    def close(self) -> None:
        """Finish what is queued, then stop."""
        with self._lock:
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)

    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, limit = [first], self.config.max_batch_size
        deadline = first.enqueued + self.config.max_delay_ms / 1000
        rows = first.rows
        while rows < limit:
            timeout = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # the stop mark of another worker: hand it on after this batch
                return batch, True
            batch.append(item)
            rows += item.rows
        return batch, False

    def _run(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            if first is None:
                return
            batch, closing = self._collect(first)
            for group in _groups(batch):
                _run_group(group)
                if self.on_batch is not None:
                    self.on_batch(len(group))


def _groups(batch: list[_Item]) -> list[list[_Item]]:
    groups: dict[tuple, list[_Item]] = {}
    for item in batch:
        key = (id(item.model), tuple((n, a.shape[1:], a.dtype.str) for n, a in item.inputs.items()))
        groups.setdefault(key, []).append(item)
    return list(groups.values())


def _run_group(group: list[_Item]) -> None:
    started = time.perf_counter()
    model = group[0].model
    try:
        if len(group) == 1:
            outputs = model.run_checked(group[0].inputs)
            results = [outputs]
        else:
            joined = {name: np.concatenate([it.inputs[name] for it in group]) for name in group[0].inputs}
            outputs = model.run_checked(joined)
            results = _split(outputs, [it.rows for it in group])
    except Exception as exc:  # one bad batch fails its own requests, never the worker
        if len(group) > 1:
            for item in group:  # run alone, so one request's error does not fail its neighbours
                _run_group([item])
            return
        group[0].done(None, exc, started - group[0].enqueued)
        return
    for item, result in zip(group, results, strict=True):
        item.done(result, None, started - item.enqueued)


def _split(outputs: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]]:
    total = sum(rows)
    bad = [n for n, a in outputs.items() if a.ndim == 0 or a.shape[0] != total]
    if bad:
        raise ValueError(f"output(s) {bad} have no batch axis; this model cannot be batched")
    bounds = np.cumsum(rows)[:-1]
    per_output = {n: np.split(a, bounds) for n, a in outputs.items()}
    return [{n: parts[i] for n, parts in per_output.items()} for i in range(len(rows))]

"""Serves artifact chunks over MQTT, coalescing requests.

Devices of a wave ask for the same chunks at about the same time. Requests for one artifact that arrive
within a short window are merged, and each chunk is published once on `artifacts/{sha256}/{index}`, which
every downloading device subscribes to: a wave costs about one copy of the model, not one per device.

A request is also merged into a publish still on its way: a device subscribes before it asks, and the broker
handles one connection's packets in order, so a chunk whose acknowledgement has not yet reached us when we
handle the request reaches the broker after the device's subscription, and the device gets it. Only chunks
the broker already acknowledged are sent again. Devices of a wave that ask over a few seconds thus share one
pass instead of one per window.

A fetch budget per device and artifact bounds what one device can make the API publish: each chunk it asks for
is published on its behalf at most `sends_per_chunk` times per `budget_window_s` (a download needs one, a
lost connection or a restart one more). Asks merged into a publish already on its way cost nothing; asks over
the budget, like indices outside the artifact, are refused and counted. So a device repeating a fetch of
chunk 0, or of the whole bundle, costs a few copies at most, not one per message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from prometheus_client import Counter

from fleet_protocol.topics import Topics

from .publisher import Delivery, Publisher
from .registry.artifacts import ArtifactStore

log = logging.getLogger(__name__)

CHUNKS_SENT = Counter("edgefleet_api_chunks_sent_total", "Artifact chunks published")
CHUNK_BYTES = Counter("edgefleet_api_chunk_bytes_sent_total", "Artifact bytes published")
CHUNKS_REQUESTED = Counter("edgefleet_api_chunks_requested_total", "Chunk indices devices asked for")
CHUNKS_REFUSED = Counter("edgefleet_api_chunks_refused_total", "Chunk indices not served", ["reason"])


class FetchBudget:
    """How often each chunk of an artifact was published on one device's behalf, in windows that expire."""

    def __init__(self, sends_per_chunk: int, window_s: float, clock: Callable[[], float]) -> None:
        self.sends_per_chunk = max(1, min(sends_per_chunk, 255))
        self.window_s = window_s
        self.clock = clock
        self._used: dict[tuple[str, str, int], tuple[float, bytearray]] = {}
        self._pruned = clock()

    def take(self, device: str, sha256: str, chunk_size: int, count: int, indices: set[int]) -> set[int]:
        """Charge the indices that are within the budget; → those. Call under the server's lock."""
        now = self.clock()
        if now - self._pruned > self.window_s:  # forget devices whose window has passed
            self._used = {k: v for k, v in self._used.items() if now - v[0] < self.window_s}
            self._pruned = now
        key = (device, sha256, chunk_size)
        started, used = self._used.get(key, (now, bytearray()))
        if now - started >= self.window_s or len(used) != count:
            started, used = now, bytearray(count)
            self._used[key] = (started, used)
        allowed = {i for i in indices if used[i] < self.sends_per_chunk}
        for i in allowed:
            used[i] += 1
        return allowed


class ChunkServer:
    def __init__(self, store: ArtifactStore, publisher: Publisher, topics: Topics, window_s: float = 0.1,
                 sends_per_chunk: int = 4, budget_window_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.publisher = publisher
        self.topics = topics
        self.window_s = window_s
        self._pending: dict[tuple[str, int], set[int]] = defaultdict(set)
        self._cond = threading.Condition()
        self._first_request: dict[tuple[str, int], float] = {}
        self._in_flight: dict[tuple[str, int], dict[int, Delivery]] = defaultdict(dict)
        self._budget = FetchBudget(sends_per_chunk, budget_window_s, clock)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="chunk-server", daemon=True)
        self._thread.start()

    def request(self, sha256: str, size: int, chunk_size: int, indices: list[int], *, device: str) -> int:
        """Queue chunk indices of a known artifact for `device`; returns how many will be published for it."""
        count = -(-size // chunk_size)
        asked = set(indices)
        valid = {i for i in asked if 0 <= i < count}
        if len(valid) < len(asked):
            CHUNKS_REFUSED.labels("out_of_range").inc(len(asked) - len(valid))
        if not valid:
            return 0
        CHUNKS_REQUESTED.inc(len(valid))
        key = (sha256, chunk_size)
        with self._cond:
            in_flight = self._in_flight[key]
            for i in [i for i, d in in_flight.items() if d.is_published()]:
                del in_flight[i]
            valid -= in_flight.keys()  # on its way already: free
            valid -= self._pending.get(key, set())
            if not valid:
                return 0
            allowed = self._budget.take(device, sha256, chunk_size, count, valid)
            if len(allowed) < len(valid):
                CHUNKS_REFUSED.labels("budget").inc(len(valid) - len(allowed))
                log.debug("device %s: fetch budget of artifact %s spent: %d chunk(s) not sent again",
                            device, sha256[:12], len(valid) - len(allowed))
            if not allowed:
                return 0
            self._pending[key] |= allowed
            self._first_request.setdefault(key, time.monotonic())
            self._cond.notify()
        return len(allowed)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _due(self) -> tuple[list[tuple[tuple[str, int], set[int]]], float | None]:
        now = time.monotonic()
        due, wait = [], None
        for key, first in list(self._first_request.items()):
            left = first + self.window_s - now
            if left <= 0:
                due.append((key, self._pending.pop(key)))
                del self._first_request[key]
            else:
                wait = left if wait is None else min(wait, left)
        return due, wait

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stop:
                        return
                    due, wait = self._due()
                    if due:
                        break
                    self._cond.wait(timeout=wait)
            for (sha256, chunk_size), indices in due:
                self._send(sha256, chunk_size, sorted(indices))

    def _send(self, sha256: str, chunk_size: int, indices: list[int]) -> None:
        key = (sha256, chunk_size)
        try:
            for i in indices:
                data = self.store.read_chunk(sha256, i, chunk_size)
                delivery = self.publisher.publish_tracked(self.topics.artifact_chunk(sha256, i), data, qos=1)
                if delivery is not None:
                    with self._cond:
                        self._in_flight[key][i] = delivery
                CHUNKS_SENT.inc()
                CHUNK_BYTES.inc(len(data))
        except OSError as exc:
            log.error("artifact %s: cannot read chunks: %s", sha256[:12], exc)

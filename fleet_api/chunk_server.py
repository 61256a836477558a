"""Serves artifact chunks over MQTT, coalescing requests.

Devices of a wave ask for the same chunks at about the same time. Requests for one artifact that arrive
within a short window are merged, and each chunk is published once on `artifacts/{sha256}/{index}`, which
every downloading device subscribes to: a wave costs about one copy of the model, not one per device.

A request is also merged into a publish still on its way: a device subscribes before it asks, and the broker
handles one connection's packets in order, so a chunk whose acknowledgement has not yet reached us when we
handle the request reaches the broker after the device's subscription, and the device gets it. Only chunks
the broker already acknowledged are sent again. Devices of a wave that ask over a few seconds thus share one
pass instead of one per window.

Chunks are published retained, with an MQTT 5 message expiry (`retain_s`): a device that subscribes after a
chunk went by gets it from its own broker (a site broker bridged to the centre keeps its retained copy). So a
chunk sent while its retained copy lives is not published again for a device's first request (the copy serves
it), only when that same device asks again (the copy did not reach it) or when `resend_after_s` has passed for
a request that names no device. Every device of a wave, on every site, is thus served from about one copy per
link. After the API reconnects to its broker (which may have restarted without its retained messages) every
chunk is sent again on request.

A chunk is never published again within a hold after its last publish: `resend_after_s` after a first
publish, and twice the previous hold after each publish a repeat ask caused (10, 20, 40 s ..., up to the
retained copy's life). A slow site broker makes many devices ask twice at once; each such burst costs one copy
on every link, and the copies of a wave grow with the log of its length, not with the number of slow devices.
A device whose copy truly did not come keeps its mark as having asked, so its next ask after the hold is
served.

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
                 sends_per_chunk: int = 4, budget_window_s: float = 600.0, resend_after_s: float = 10.0,
                 retain_s: int = 600, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self.resend_after_s = resend_after_s
        self.retain_s = retain_s
        self._published: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)  # chunk index → sent at
        # chunk index → how long after its last publish a repeat ask may publish it again (resend_after_s if absent)
        self._hold: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
        # devices that asked for a chunk since it was last sent (their first ask is served by the retained copy)
        self._asked: dict[tuple[str, int], dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
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
            in_flight, now = self._in_flight[key], self.clock()
            for i in [i for i, d in in_flight.items() if d.is_published()]:
                del in_flight[i]
            valid -= in_flight.keys()  # on its way already: free
            valid -= self._pending.get(key, set())
            repeats: set[int] = set()
            valid -= {i for i in valid if not self._resend(key, i, now, device, repeats)}
            if not valid:
                return 0
            allowed = self._budget.take(device, sha256, chunk_size, count, valid)
            hold = self._hold[key]
            for i in allowed:  # a fresh publish starts a new wave's hold; a repeat ask's one doubles it
                hold[i] = min(hold.get(i, self.resend_after_s) * 2, self._max_hold()) if i in repeats \
                    else self.resend_after_s
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

    def _max_hold(self) -> float:
        return max(self.resend_after_s, self.retain_s * 0.9)  # past it the retained copy expires: published anyway

    def _resend(self, key: tuple[str, int], i: int, now: float, device: str, repeats: set[int]) -> bool:
        """Whether chunk i must be published again for this request (under the lock); adds i to `repeats` when
        only a repeat ask makes it so."""
        sent = self._published[key].get(i)
        if sent is None or now - sent >= self.retain_s * 0.9:  # never sent, or its retained copy expires
            return True
        asked = self._asked[key][i]
        if device and device not in asked:
            asked.add(device)  # a first ask since the last publish: the retained copy serves it
            return False
        if now - sent < self._hold[key].get(i, self.resend_after_s):
            return False  # sent not long ago: live, retained or still queued at its broker, it reaches the device
        repeats.add(i)  # asked again (or by no device) after the hold: the copy did not reach it
        return True

    def forget_sent(self) -> None:
        """The broker connection was re-established: the broker may have restarted and lost its retained chunks,
        so the next request for any chunk publishes it again."""
        with self._cond:
            self._published.clear()
            self._asked.clear()
            self._hold.clear()

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
                delivery = self.publisher.publish_tracked(self.topics.artifact_chunk(sha256, i), data, qos=1,
                                                          retain_s=self.retain_s)
                if delivery is not None:
                    with self._cond:
                        self._in_flight[key][i] = delivery
                        self._published[key][i] = self.clock()
                        self._asked[key].pop(i, None)
                CHUNKS_SENT.inc()
                CHUNK_BYTES.inc(len(data))
        except OSError as exc:
            log.error("artifact %s: cannot read chunks: %s", sha256[:12], exc)

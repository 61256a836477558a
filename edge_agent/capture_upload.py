"""The upload of kept samples: the spool drained over the device's MQTT link, one sample a message, resumable.

A plain class with an injected clock and a `publish` callable (the MQTT shell hands in its QoS 1 publish on
`capture`): at most `window` samples are in flight, oldest first; the API's `SampleAck` (stored, or refused and
why) deletes a sample from the spool; one not acknowledged within `timeout_s` is sent again, and after a
reconnect everything unacknowledged is (the broker may have lost it with the session). The API stores a sample
once by (device, id), so sending one twice costs bandwidth, never a duplicate. The spool is on disk: what an agent
restart finds is uploaded after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from fleet_protocol.capture import SampleAck

from .capture import Spool

log = logging.getLogger(__name__)

# (sample id, envelope) → whether the message was handed to the network (False: not connected, try later).
Publish = Callable[[str, bytes], bool]


class Uploader:
    def __init__(self, spool: Spool, publish: Publish, *, window: int = 4, timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spool = spool
        self.publish = publish
        self.window = window
        self.timeout_s = timeout_s
        self.clock = clock
        self.connected = False
        self.uploaded = 0
        self.resent = 0
        self.refused: Counter[str] = Counter()
        self.unknown_acks = 0  # acks of samples not in the spool (a repeat of an ack already taken)
        self._in_flight: dict[str, float] = {}  # sample id → when it was (last) sent
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-upload", daemon=True)

    # --- the link's side --------------------------------------------------------------------------------
    def on_connect(self) -> None:
        """A (re)connect: everything unacknowledged goes again (resumable at sample granularity)."""
        with self._lock:
            self.connected = True
            self._in_flight.clear()
        self.wake()

    def on_disconnect(self) -> None:
        with self._lock:
            self.connected = False

    def on_ack(self, ack: SampleAck) -> None:
        with self._lock:
            self._in_flight.pop(ack.id, None)
        if not self.spool.delete(ack.id):
            self.unknown_acks += 1
            return
        if ack.stored:
            self.uploaded += 1
        else:  # sending it again would not change the answer: dropped, and counted by why
            self.refused[ack.refused or "unspecified"] += 1
            log.warning("sample %s refused by the fleet: %s", ack.id, ack.refused)
        self.wake()

    def wake(self) -> None:
        """Something to send (a new sample, a free slot in the window)."""
        self._wake.set()

    # --- the work -----------------------------------------------------------------------------------------
    def pump(self) -> int:
        """Send what is due: timed-out samples again, then the oldest unsent ones while the window has room.
        → how many were sent."""
        with self._lock:
            if not self.connected:
                return 0
            now = self.clock()
            for sample_id in [i for i in self._in_flight if i not in self.spool]:  # pushed out of the spool meanwhile
                del self._in_flight[sample_id]
            due = [i for i, sent in self._in_flight.items() if now - sent >= self.timeout_s]
            room = self.window - len(self._in_flight)
            fresh = [i for i in self.spool.pending() if i not in self._in_flight][:max(0, room)]
        sent = 0
        # Published outside the lock: an ack may arrive (on the network thread) while we send.
        for sample_id in due + fresh:
            envelope = self.spool.get(sample_id)
            if envelope is None:
                with self._lock:
                    self._in_flight.pop(sample_id, None)
                continue
            if not self.publish(sample_id, envelope):
                break
            with self._lock:
                if sample_id in due:
                    self.resent += 1
                self._in_flight[sample_id] = now
            sent += 1
        return sent

    @property
    def in_flight(self) -> list[str]:
        with self._lock:
            return list(self._in_flight)

    def start(self) -> Uploader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        # Woken by new samples and acks; every second anyway, for the timeouts.
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            try:
                self.pump()
            except Exception:  # a disk or network hiccup must not end the uploads for good
                log.exception("capture upload failed; trying again")

"""Chunk requests are merged within the window and into publishes the broker has not acknowledged yet."""

from __future__ import annotations

import threading
import time

from fleet_api.chunk_server import ChunkServer
from fleet_api.registry.artifacts import ArtifactStore
from fleet_protocol.topics import Topics


class Held:
    def __init__(self) -> None:
        self.acked = threading.Event()

    def is_published(self) -> bool:
        return self.acked.is_set()


class HoldingPublisher:
    """Records chunk publishes and holds their acknowledgements until the test releases them."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.deliveries: list[Held] = []

    def publish_tracked(self, topic, payload, qos=1, retain_s=0):
        self.retain_s = retain_s
        self.sent.append(int(topic.rsplit("/", 1)[1]))
        held = Held()
        self.deliveries.append(held)
        return held

    def ack_all(self) -> None:
        for d in self.deliveries:
            d.acked.set()


def wait_sent(pub: HoldingPublisher, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(pub.sent) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # and nothing more after it


def test_requests_merge_into_unacknowledged_publishes_and_acknowledged_chunks_are_sent_again(tmp_path):
    store = ArtifactStore(tmp_path)
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * 40)  # 10,240 bytes = 10 chunks of 1,024
    sha = store.add(blob)
    pub = HoldingPublisher()
    server = ChunkServer(store, pub, Topics(), window_s=0.05, resend_after_s=0, retain_s=0)  # no retained copies
    try:
        # three devices within one window: one pass
        for device in ("a", "b", "c"):
            server.request(sha, 10_240, 1024, list(range(10)), device=device)
        wait_sent(pub, 10)
        assert sorted(pub.sent) == list(range(10))

        # a fourth device asks while those publishes are still unacknowledged: nothing new is sent
        assert server.request(sha, 10_240, 1024, list(range(10)), device="d") == 0
        wait_sent(pub, 10)
        assert len(pub.sent) == 10

        # once the broker acknowledged them, a late device gets its own copy of what it misses
        pub.ack_all()
        assert server.request(sha, 10_240, 1024, [3, 7, 99], device="e") == 2  # 99 is not a chunk of this artifact
        wait_sent(pub, 12)
        assert pub.sent[10:] == [3, 7]
        assert store.read_chunk(sha, 9, 1024) == (bytes(range(256)) * 40)[9216:]
    finally:
        server.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeated_fetches_of_chunk_0_do_not_republish_it_each_time(tmp_path):
    """Issue 12 #6: 50 fetches of chunk 0 made 48 publishes. Now a device's budget per chunk bounds them."""
    store = ArtifactStore(tmp_path)
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * 40)  # 10 chunks of 1,024
    sha = store.add(blob)
    pub = HoldingPublisher()
    clock = Clock()
    server = ChunkServer(store, pub, Topics(), window_s=0.01, sends_per_chunk=3, budget_window_s=600,
                         retain_s=0, clock=clock)  # no retained copies: the budget alone
    try:
        queued = 0
        for _ in range(50):
            if server.request(sha, 10_240, 1024, [0], device="evil"):
                queued += 1
                wait_sent(pub, queued)
            pub.ack_all()  # the broker took each publish: nothing left to merge into
        wait_sent(pub, 4)
        assert pub.sent == [0, 0, 0]
        # another device is not charged for the first one's asks
        assert server.request(sha, 10_240, 1024, [0], device="good") == 1
        wait_sent(pub, 4)
        assert pub.sent == [0, 0, 0, 0]
        # the window passes: the device may ask again
        pub.ack_all()
        clock.now += 601
        assert server.request(sha, 10_240, 1024, [0], device="evil") == 1
    finally:
        server.close()


def test_a_small_fetch_of_the_whole_bundle_cannot_republish_it_again_and_again(tmp_path):
    """Issue 12 #6: one small fetch listing every chunk made the API publish the whole bundle each time."""
    store = ArtifactStore(tmp_path)
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * 40)
    sha = store.add(blob)
    pub = HoldingPublisher()
    server = ChunkServer(store, pub, Topics(), window_s=0.01, sends_per_chunk=2, retain_s=0, clock=Clock())
    try:
        for _ in range(10):
            if server.request(sha, 10_240, 1024, list(range(10)), device="evil"):
                wait_sent(pub, len(pub.sent) + 10)
            pub.ack_all()
        wait_sent(pub, 21)
        assert len(pub.sent) == 20  # two copies, not ten
        assert server.request(sha, 10_240, 1024, list(range(10)) + [10, -1], device="evil") == 0
    finally:
        server.close()


def test_a_chunk_whose_retained_copy_lives_is_sent_again_only_for_a_device_that_asks_twice(tmp_path):
    """A device asking for a chunk the broker holds retained gets the broker's copy (its site broker's, behind a
    bridge): the link carries one copy per wave. Only a device asking again (its copy did not come) costs one
    more; so does the expiry of the retained copy, and a reconnection to the broker (it may have lost them)."""
    store = ArtifactStore(tmp_path)
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * 40)
    sha = store.add(blob)
    pub = HoldingPublisher()
    now = [1000.0]
    server = ChunkServer(store, pub, Topics(), window_s=0.05, resend_after_s=10, retain_s=600, clock=lambda: now[0])
    try:
        server.request(sha, 10_240, 1024, list(range(10)), device="a")
        wait_sent(pub, 10)
        assert pub.retain_s == 600  # retained, expiring after 10 minutes
        pub.ack_all()
        now[0] += 5
        assert server.request(sha, 10_240, 1024, list(range(10)), device="b") == 0  # just sent
        now[0] += 100
        for device in ("c", "d", "e"):  # late devices of the wave: the retained copy serves them
            assert server.request(sha, 10_240, 1024, list(range(10)), device=device) == 0
        wait_sent(pub, 10)
        assert len(pub.sent) == 10
        assert server.request(sha, 10_240, 1024, [4], device="d") == 1  # d asks again: it did not get chunk 4
        wait_sent(pub, 11)
        assert pub.sent[10:] == [4]
        pub.ack_all()
        now[0] += 20
        assert server.request(sha, 10_240, 1024, [4], device="d") == 0  # a new send: d's first ask since
        now[0] += 600  # the retained copies expired
        assert server.request(sha, 10_240, 1024, [5], device="f") == 1
        wait_sent(pub, 12)
        pub.ack_all()
        server.forget_sent()  # reconnected: the broker may have restarted without them
        assert server.request(sha, 10_240, 1024, [6], device="g") == 1
        wait_sent(pub, 13)
        assert pub.sent[11:] == [5, 6]
    finally:
        server.close()


def test_a_burst_of_repeat_asks_costs_one_copy_and_each_further_copy_waits_twice_as_long(tmp_path):
    """Issue 17: a slow site broker made hundreds of devices ask twice; each repeat ask more than 10 s after the
    last publish cost a copy on every link, one chunk 25 times in a wave. Now a burst of repeat asks costs one
    copy, and the next copy a repeat ask may cause waits twice as long after each (10, 20, 40 s ...); a device
    whose copy truly did not come still gets one. A fresh publish (expiry, reconnection) starts again at 10 s."""
    store = ArtifactStore(tmp_path)
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * 40)
    sha = store.add(blob)
    pub = HoldingPublisher()
    clock = Clock()
    server = ChunkServer(store, pub, Topics(), window_s=0.01, resend_after_s=10, retain_s=600, clock=clock)
    devices = [f"d{n}" for n in range(50)]

    def everyone_asks() -> int:
        return sum(server.request(sha, 10_240, 1024, [0], device=d) for d in devices)

    def published(n: int) -> None:
        wait_sent(pub, n)
        assert pub.sent == [0] * n
        pub.ack_all()

    try:
        assert server.request(sha, 10_240, 1024, [0], device="first") == 1
        published(1)
        clock.now += 1
        assert everyone_asks() == 0  # first asks: the retained copy serves them
        clock.now += 10
        assert everyone_asks() == 1  # 50 repeat asks after the 10 s hold: one copy
        published(2)
        clock.now += 1
        assert everyone_asks() == 0  # first asks since that publish
        clock.now += 15
        assert everyone_asks() == 0  # repeat asks 16 s after it: within the doubled hold (20 s)
        clock.now += 4
        assert everyone_asks() == 1  # 20 s: one more copy
        published(3)
        clock.now += 1
        everyone_asks()
        clock.now += 38
        assert everyone_asks() == 0  # 39 s: within 40 s
        clock.now += 1
        assert server.request(sha, 10_240, 1024, [0], device="d7") == 1  # one device still without it gets it
        published(4)

        # The retained copy nears its end: published for anyone, and the hold starts again at 10 s.
        clock.now += 600 * 0.9
        assert server.request(sha, 10_240, 1024, [0], device="late") == 1
        published(5)
        clock.now += 1
        everyone_asks()
        clock.now += 9
        assert everyone_asks() == 1
        published(6)

        # So does a reconnection to the broker (it may have restarted without its retained copies).
        everyone_asks()
        server.forget_sent()
        assert server.request(sha, 10_240, 1024, [0], device="d3") == 1
        published(7)
        clock.now += 1
        everyone_asks()
        clock.now += 9
        assert everyone_asks() == 1
        published(8)
    finally:
        server.close()

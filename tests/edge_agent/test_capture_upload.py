"""The upload of captured samples, with a fake publish and an injected clock: the window, acks that delete,
resends on timeout and after a reconnect, refusals dropped and counted, the spool's byte cap, and a spool that
survives a restart; and the spool as the API reads it (fleet_protocol's unpack)."""

from __future__ import annotations

import hashlib
import os

import pytest

from edge_agent.capture import Spool, new_sample_id
from edge_agent.capture_upload import Uploader
from fleet_protocol.capture import Sample, SampleAck, describe, unpack


def sample(data: bytes | None = None) -> tuple[Sample, bytes]:
    data = data if data is not None else os.urandom(1000)
    return describe(data, id=new_sample_id(), model="digits", version="1.0.0", taken_at=1.0,
                    reason="low_confidence", confidence=0.2, content_type="application/x-npy"), data


class Wire:
    """The MQTT link as the uploader sees it: what was published, and whether it is up."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.up = True

    def __call__(self, sample_id: str, envelope: bytes) -> bool:
        if not self.up:
            return False
        header, _ = unpack(envelope)  # every message is one whole, intact sample
        assert header.id == sample_id
        self.sent.append(sample_id)
        return True


def setup(tmp_path, n: int, **kw) -> tuple[Spool, Uploader, Wire, list[float], list[str]]:
    spool = Spool(tmp_path / "spool")
    ids = []
    for _ in range(n):
        header, data = sample()
        spool.put(header, data)
        ids.append(header.id)
    clock = [0.0]
    wire = Wire()
    uploader = Uploader(spool, wire, clock=lambda: clock[0], **kw)
    uploader.on_connect()
    return spool, uploader, wire, clock, ids


def test_a_window_of_four_oldest_first_and_each_ack_deletes_and_frees_a_slot(tmp_path):
    spool, up, wire, _, ids = setup(tmp_path, 10)
    assert up.pump() == 4 and wire.sent == ids[:4]
    assert up.pump() == 0  # the window is full
    up.on_ack(SampleAck(id=ids[0], stored=True))
    assert ids[0] not in spool and len(spool) == 9
    assert up.pump() == 1 and wire.sent[-1] == ids[4]
    for i in ids[1:5]:
        up.on_ack(SampleAck(id=i, stored=True))
    while up.pump():
        for i in up.in_flight:
            up.on_ack(SampleAck(id=i, stored=True))
    assert len(spool) == 0 and spool.total_bytes == 0 and up.uploaded == 10 and sorted(wire.sent) == sorted(ids)
    assert up.resent == 0 and not list(spool.folder.iterdir())


def test_no_ack_within_the_timeout_sends_again(tmp_path):
    _, up, wire, clock, ids = setup(tmp_path, 2, timeout_s=30.0)
    up.pump()
    clock[0] = 29.9
    assert up.pump() == 0
    clock[0] = 30.0
    assert up.pump() == 2 and wire.sent == ids + ids and up.resent == 2
    up.on_ack(SampleAck(id=ids[0], stored=True))
    up.on_ack(SampleAck(id=ids[0], stored=True))  # the ack of the first send, then of the second: harmless
    assert up.unknown_acks == 1 and up.uploaded == 1


def test_a_reconnect_sends_everything_unacknowledged_again(tmp_path):
    spool, up, wire, _, ids = setup(tmp_path, 3)
    up.pump()
    up.on_disconnect()
    assert up.pump() == 0  # nothing goes while the link is down
    up.on_connect()
    assert up.pump() == 3 and wire.sent == ids + ids
    wire.up = False  # the link says it cannot send now: nothing is counted as in flight
    up.on_connect()
    assert up.pump() == 0 and up.in_flight == []


def test_refused_samples_are_dropped_and_counted_by_reason(tmp_path):
    spool, up, _, _, ids = setup(tmp_path, 3)
    up.pump()
    up.on_ack(SampleAck(id=ids[0], stored=False, refused="quota"))
    up.on_ack(SampleAck(id=ids[1], stored=False, refused="invalid"))
    up.on_ack(SampleAck(id=ids[2], stored=False, refused="quota"))
    assert len(spool) == 0 and up.uploaded == 0 and dict(up.refused) == {"quota": 2, "invalid": 1}


def test_the_spool_is_bounded_in_bytes_the_oldest_go_first(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=10_000)
    ids = []
    for _ in range(20):
        header, data = sample(os.urandom(2000))
        spool.put(header, data)
        ids.append(header.id)
        assert spool.total_bytes <= 10_000
    assert spool.pending() == ids[-len(spool):] and spool.dropped == 20 - len(spool) and len(spool) >= 4
    assert spool.total_bytes == sum(f.stat().st_size for f in spool.folder.iterdir())
    with pytest.raises(ValueError, match="does not fit"):
        spool.put(*sample(os.urandom(20_000)))
    header, data = sample()
    with pytest.raises(ValueError, match="does not describe"):
        spool.put(header, data + b"x")


def test_the_spool_survives_a_restart_and_is_uploaded_after_it_as_the_api_reads_it(tmp_path):
    spool, up, wire, _, ids = setup(tmp_path, 5)
    up.pump()
    up.on_ack(SampleAck(id=ids[0], stored=True))
    (spool.folder / ".deadbeef.efc.part").write_bytes(b"half")  # a write a crash cut short
    # The agent restarts: a new spool on the same folder, a new uploader, nothing in flight.
    again = Spool(spool.folder)
    assert again.pending() == ids[1:] and not (spool.folder / ".deadbeef.efc.part").exists()
    wire2 = Wire()
    up2 = Uploader(again, wire2, clock=lambda: 0.0)
    up2.on_connect()
    assert up2.pump() == 4 and wire2.sent == ids[1:]
    header, data = unpack(again.get(ids[1]))
    assert header.sha256 == hashlib.sha256(data).hexdigest() and header.model == "digits"


def test_a_sample_pushed_out_of_the_spool_while_in_flight_is_forgotten(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=5_000)
    wire, up = Wire(), None
    header, data = sample(os.urandom(2000))
    spool.put(header, data)
    up = Uploader(spool, wire, clock=lambda: 0.0)
    up.on_connect()
    up.pump()
    for _ in range(3):
        spool.put(*sample(os.urandom(2000)))
    assert header.id not in spool
    up.pump()
    assert header.id not in up.in_flight and len(up.in_flight) == len(spool)

"""The captured-sample envelope: whole and intact, or refused with a ProtocolError that says why."""

from __future__ import annotations

import os
import uuid

import pytest

from fleet_protocol.capture import MAX_SAMPLE_BYTES, Sample, SampleAck, describe, pack, unpack
from fleet_protocol.messages import MAX_MESSAGE_BYTES, ProtocolError


def sample(data: bytes = b"\xff\xd8jpeg", **over) -> Sample:
    fields = dict(id=uuid.uuid4().hex, model="digits", version="1.0.0", taken_at=1_700_000_000.0,
                  reason="low_confidence", confidence=0.31, outputs={"label": "7", "score": 0.31},
                  content_type="image/jpeg", width=64, height=48)
    return describe(data, **{**fields, **over})


def test_a_sample_round_trips():
    data = os.urandom(50_000)
    header = sample(data)
    back, got = unpack(pack(header, data))
    assert back == header and got == data


@pytest.mark.parametrize("mutate, why", [
    (lambda p: p[:-1], "bytes of data"),
    (lambda p: p[:-1] + bytes([p[-1] ^ 1]), "sha256"),
    (lambda p: b"XXXX" + p[4:], "magic"),
    (lambda p: p[:4] + (10**6).to_bytes(4, "big") + p[8:], "header length"),
    (lambda p: p[:6], "magic"),
    (lambda p: p + b"\0" * (MAX_MESSAGE_BYTES + 1 - len(p)), "more than"),
])
def test_cut_altered_or_oversized_envelopes_are_refused(mutate, why):
    data = os.urandom(1000)
    with pytest.raises(ProtocolError, match=why):
        unpack(mutate(pack(sample(data), data)))


def test_headers_refuse_unknown_fields_and_out_of_range_values():
    data = b"x" * 10
    good = sample(data).model_dump()
    for bad in ({"extra": 1}, {"confidence": 1.5}, {"id": "not-hex"}, {"reason": "bored"},
                {"size": MAX_SAMPLE_BYTES + 1}, {"content_type": "text/html"}):
        with pytest.raises(ValueError):
            Sample.model_validate({**good, **bad})
    with pytest.raises(ProtocolError):
        SampleAck.parse(b'{"id": "%s", "stored": true, "surprise": 1}' % uuid.uuid4().hex.encode())


def test_pack_refuses_a_header_that_does_not_describe_its_data_or_is_too_large():
    with pytest.raises(ValueError, match="does not describe"):
        pack(sample(b"abc"), b"abd")
    data = b"abc"
    huge = sample(data, outputs={f"k{i}": "x" * 400 for i in range(60)})
    with pytest.raises(ValueError, match="outputs too large"):
        pack(huge, data)

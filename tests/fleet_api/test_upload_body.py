"""Upload bodies against a real fleet API process (uvicorn): stalls, disconnects and doctored bundles.

Issue 12 #10: a client that disconnected during an upload wrote a 60-line traceback to the API log, and one that
sent a Content-Length and stalled held the request open with no limit. #8: a doctored copy of a bundle was
registered, and the genuine file was then refused with 409.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from demo.cluster import Broker, FleetApi, wait_for


@pytest.fixture
def api(tmp_path, keys):
    broker = Broker(tmp_path / "broker").start()
    api = FleetApi(tmp_path / "api", broker.url, keys.public_path, env={"EDGEFLEET_API_UPLOAD_IDLE_TIMEOUT_S": "1"})
    try:
        yield api.start()
    finally:
        api.stop()
        broker.stop()


def _start_upload(api: FleetApi, declared: int, sent: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", api.port), timeout=60)
    s.sendall((f"POST /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api.admin_token}\r\n"
               f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n").encode() + sent)
    return s


def _log(api: FleetApi) -> str:
    return api.process.log_path.read_text(errors="replace")


def _uploads_left(api: FleetApi) -> list[Path]:
    return list((api.root / "artifacts").glob(".upload-*"))


def test_a_client_that_sends_a_length_and_stalls_is_cut_off(api, bundles):
    data = bundles["1.0.0"].read_bytes()
    s = _start_upload(api, len(data), data[:1000])
    try:
        answer = b""
        while b"\r\n\r\n" not in answer:  # the server answers by itself: the client sends nothing more
            block = s.recv(4096)
            if not block:
                break
            answer += block
    finally:
        s.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    wait_for(lambda: "cut off: no data for 1s after 1000 of" in _log(api), 10, "the one log line")
    assert "Traceback" not in _log(api)
    assert not _uploads_left(api)


def test_a_client_that_disconnects_mid_upload_leaves_one_log_line_and_no_traceback(api, bundles):
    data = bundles["1.0.0"].read_bytes()
    s = _start_upload(api, len(data), data[:5000])
    wait_for(lambda: _uploads_left(api), 10, "the upload to start spooling")
    s.close()
    line = wait_for(lambda: [ln for ln in _log(api).splitlines() if "the client disconnected after 5000 of" in ln], 10,
                    "the one log line")
    assert len(line) == 1
    assert "Traceback" not in _log(api)
    wait_for(lambda: not _uploads_left(api), 10, "the partial upload to be removed")
    with api.client() as http:  # and the API goes on
        assert http.post("/v1/models", content=data).status_code == 201


def test_a_doctored_copy_is_refused_and_never_blocks_the_genuine_file(api, bundles):
    genuine = bundles["1.0.0"].read_bytes()
    with api.client() as http:
        for doctored in (genuine + b"appended", genuine[:-2 * 512 - 8192]):
            r = http.post("/v1/models", content=doctored)
            assert r.status_code == 400, r.text
            assert "bundle rejected" in r.json()["error"]
        r = http.post("/v1/models", content=genuine)
        assert r.status_code == 201, r.text

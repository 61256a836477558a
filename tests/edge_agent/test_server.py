"""The local HTTP API on real uvicorn and real sessions: KServe v2, binary tensors, bad input, /metrics."""

from __future__ import annotations

import json
import logging
import socket
import threading

import httpx
import numpy as np
import pytest

from edge_agent.http.server import create_app
from edge_agent.runtime.host import ModelHost
from fleet_protocol.messages import Batching, Runtime
from tests.edge_agent.conftest import (
    LocalServer,
    binary_outputs,
    binary_request,
    load_checked,
)

LIMIT = 64 * 1024


class Served:
    """What the tests ask of the host: the digits model it serves now."""

    def __init__(self, host: ModelHost) -> None:
        self.host = host

    @property
    def current(self):
        return self.host.get("digits")


@pytest.fixture
def served(digits, store):
    host = ModelHost()
    host.swap(load_checked(digits["2.0.0"], store.cache))
    with LocalServer(create_app(host, max_request_bytes=LIMIT)) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield Served(host), client
    host.close()


def json_body(array: np.ndarray, name: str = "image", datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.ravel().tolist()}]}


def test_health_metadata_and_json_infer(served, images):
    engine, client = served
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready").json()
    assert ready["models"] == {"digits": {"version": "2.0.0", "provider": "CPUExecutionProvider", "precision": "fp32"}}
    meta = client.get("/v2/models/digits").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["parameters"]["provider"] == "CPUExecutionProvider"
    r = client.post("/v2/models/digits/infer", json={"id": "42", **json_body(images[:3])})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "42" and body["model_version"] == "2.0.0"
    got = np.asarray(body["outputs"][0]["data"], dtype=np.float32).reshape(body["outputs"][0]["shape"])
    np.testing.assert_allclose(got, engine.current.infer({"image": images[:3]})["probabilities"], rtol=1e-6)
    assert client.post("/v2/models/digits/versions/2.0.0/infer", json=json_body(images[:1])).status_code == 200
    assert client.post("/v2/models/digits/versions/1.0.0/infer", json=json_body(images[:1])).status_code == 404
    assert client.post("/v2/models/other/infer", json=json_body(images[:1])).status_code == 404


def test_binary_tensors_both_ways(served, images):
    engine, client = served
    body, headers = binary_request("image", images[:5])
    r = client.post("/v2/models/digits/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = binary_outputs(r.content, int(r.headers["inference-header-content-length"]))
    np.testing.assert_array_equal(out["probabilities"], engine.current.infer({"image": images[:5]})["probabilities"])


BAD = {
    "wrong dtype": (lambda x: json_body(x.astype(np.float64), datatype="FP64"), 400, ["'image'", "FP64", "expected FP32"]),
    "wrong rank": (lambda x: json_body(x.reshape(1, 64)), 400, ["'image'", "rank 2", "[?, 1, 8, 8]"]),
    "wrong size": (lambda x: json_body(np.zeros((1, 1, 8, 9), np.float32)), 400, ["'image'", "[1, 1, 8, 9]", "expected [?, 1, 8, 8]"]),
    "too few values": (lambda x: {"inputs": [{**json_body(x)["inputs"][0], "data": [0.0] * 63}]}, 400, ["'image'", "63 values", "FP32 [?, 1, 8, 8]"]),
    "missing input": (lambda x: json_body(x, name="pixels"), 400, ["missing input(s) ['image']", "image FP32 [?, 1, 8, 8]"]),
    "not json": (lambda x: b"{nope", 400, ["not JSON"]),
    "input parameters not an object": (lambda x: {"inputs": [{**json_body(x)["inputs"][0], "parameters": "x"}]}, 400,
                                       ["input 'image'", "'parameters' must be an object"]),
    "output parameters not an object": (lambda x: {**json_body(x), "outputs": [{"name": "probabilities", "parameters": 5}]}, 400,
                                        ["output 'probabilities'", "'parameters' must be an object"]),
    "outputs not a list": (lambda x: {**json_body(x), "outputs": 5}, 400, ["'outputs' must be a list"]),
    "oversize body": (lambda x: json_body(np.zeros((400, 1, 8, 8), np.float32)), 413, [f"limit of {LIMIT} bytes"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_4xx_and_the_agent_keeps_serving(served, images, caplog, case):
    engine, client = served
    make, status, words = BAD[case]
    payload = make(images[:1])
    caplog.set_level(logging.DEBUG)
    with caplog.at_level(logging.DEBUG):
        if isinstance(payload, bytes):
            r = client.post("/v2/models/digits/infer", content=payload)
        else:
            r = client.post("/v2/models/digits/infer", json=payload)
    assert r.status_code == status, r.text
    message = r.json()["error"]
    for word in words:
        assert word in message, message
    assert not [rec for rec in caplog.records if rec.exc_info or "Traceback" in rec.getMessage()]
    ok = client.post("/v2/models/digits/infer", json=json_body(images[:1]))
    assert ok.status_code == 200


def test_oversize_chunked_body_is_refused_while_streaming(served, images):
    _, client = served

    def chunks():
        for _ in range(40):
            yield b" " * 4096

    r = client.post("/v2/models/digits/infer", content=chunks())
    assert r.status_code == 413
    assert client.get("/v2/health/ready").status_code == 200


def test_lying_content_length_does_not_hang_or_crash(served, images):
    """A client that declares more than it sends: the server waits for it, never mixes it with a next request."""
    _, client = served
    url = client.base_url
    with socket.create_connection((url.host, url.port), timeout=5) as s:
        s.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n{")
        assert b"413" in s.recv(4096).split(b"\r\n")[0]
    assert client.post("/v2/models/digits/infer", json=json_body(images[:1])).status_code == 200


def test_metrics_count_requests_failures_latency_with_version_and_provider(served, images):
    _, client = served
    for _ in range(5):
        client.post("/v2/models/digits/infer", json=json_body(images[:1]))
    client.post("/v2/models/digits/infer", json=json_body(images[:1].astype(np.float64), datatype="FP64"))
    text = client.get("/metrics").text
    labels = 'model="digits",outcome="{}",provider="CPUExecutionProvider",version="2.0.0"'
    assert f"edgefleet_agent_requests_total{{{labels.format('ok')}}} 5.0" in text
    assert f"edgefleet_agent_requests_total{{{labels.format('bad_request')}}} 1.0" in text
    assert 'edgefleet_agent_inference_seconds_count{model="digits",provider="CPUExecutionProvider",version="2.0.0"} 5.0' in text
    # Unbatched requests never wait in a queue: the queue histogram counts none of them (batched: see below).
    assert 'edgefleet_agent_queue_seconds_count{model="digits",provider="CPUExecutionProvider",version="2.0.0"} 0.0' in text
    assert 'edgefleet_agent_model_info{model="digits",precision="fp32",provider="CPUExecutionProvider",providers="CPUExecutionProvider"' in text
    assert "process_resident_memory_bytes" in text


def test_swaps_over_http_with_batching_fail_no_request(digits, store, images):
    """The same promise as the in-process swap test, through the real HTTP path and the batcher."""
    host = ModelHost()
    runtime = Runtime(batching=Batching(enabled=True, max_batch_size=8, max_delay_ms=1))
    models = {v: load_checked(digits[v], store.cache, runtime) for v in ("1.0.0", "2.0.0")}
    reference = {v: m.infer({"image": images})["probabilities"] for v, m in models.items()}
    host.swap(models["1.0.0"])
    stop = threading.Event()
    results: list[tuple[int, int, str, np.ndarray | None]] = []
    with LocalServer(create_app(host)) as server:
        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with httpx.Client(base_url=server.url, timeout=10) as c:
                while not stop.is_set():
                    i = int(rng.integers(len(images)))
                    body, headers = binary_request("image", images[i:i + 1])
                    r = c.post("/v2/models/digits/infer", content=body, headers=headers)
                    if r.status_code != 200:
                        results.append((r.status_code, i, r.text, None))
                        continue
                    head = int(r.headers["inference-header-content-length"])
                    version = json.loads(r.content[:head])["model_version"]
                    results.append((200, i, version, binary_outputs(r.content, head)["probabilities"][0]))

        threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for k in range(10):
            host.swap(load_checked(digits["2.0.0" if k % 2 == 0 else "1.0.0"], store.cache, runtime))
            threading.Event().wait(0.03)
        stop.set()
        for t in threads:
            t.join()
    host.close()
    assert [r for r in results if r[0] != 200] == []
    assert {r[2] for r in results} == {"1.0.0", "2.0.0"}
    for _, i, version, probs in results:
        np.testing.assert_allclose(probs, reference[version][i], rtol=1e-5, atol=1e-6)


def test_one_batched_path_for_http_and_in_process_requests(digits, store, images):
    """`LoadedModel.submit` validates, queues and counts; HTTP and `LoadedModel.run` both go through it."""
    from prometheus_client import generate_latest

    from edge_agent.runtime.errors import InputError

    host = ModelHost()
    host.swap(load_checked(digits["2.0.0"], store.cache, Runtime(batching=Batching(enabled=True, max_batch_size=8, max_delay_ms=1.0))))
    model = host.get("digits")
    try:
        assert model.batched
        answered = threading.Event()
        got = {}
        model.submit({"image": images[:2]}, lambda outputs, err: (got.update(outputs=outputs, err=err), answered.set()))
        assert answered.wait(10) and got["err"] is None
        np.testing.assert_array_equal(got["outputs"]["probabilities"], model.run_checked({"image": images[:2]})["probabilities"])
        with pytest.raises(InputError, match="'image'"):
            model.submit({"image": images[:1, :, :, :4]}, lambda *a: pytest.fail("called"))

        model.run({"image": images[:1]})  # in process, blocking
        with pytest.raises(InputError):
            model.run({"pixels": images[:1]})
        with LocalServer(create_app(host)) as server:
            assert httpx.post(f"{server.url}/v2/models/digits/infer", json=json_body(images[:1])).status_code == 200
            assert httpx.post(f"{server.url}/v2/models/digits/infer", json=json_body(images[:1], name="pixels")).status_code == 400
        text = generate_latest(host.stats.registry).decode()
        labels = 'model="digits",outcome="{}",provider="CPUExecutionProvider",version="2.0.0"'
        assert f"edgefleet_agent_requests_total{{{labels.format('ok')}}} 3.0" in text
        assert f"edgefleet_agent_requests_total{{{labels.format('bad_request')}}} 3.0" in text
        assert 'edgefleet_agent_queue_seconds_count{model="digits",provider="CPUExecutionProvider",version="2.0.0"} 3.0' in text
        assert 'edgefleet_agent_inference_seconds_count{model="digits",provider="CPUExecutionProvider",version="2.0.0"} 3.0' in text
    finally:
        host.close()

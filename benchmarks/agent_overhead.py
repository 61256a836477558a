"""What the edge agent adds on top of onnxruntime, measured in one run.

Memory first: peak and steady RSS while loading a ~100 MB model (a chain of 2048×2048 MatMul initializers),
each way in a fresh process: raw onnxruntime, the agent's loader (create_session + golden check), and the v1
agent's way (the serving session also wrote the optimized-graph file) for comparison.

Then, for the digits CNN and BlazeFace, batch 1, one intra-op thread:
  raw      p50 of `session.run` on the very session the agent serves
  engine   p50 of the agent's in-process `LoadedModel.run` (validation, metrics, telemetry sample)
  http     p50 of a KServe v2 request to the agent's local HTTP server (a separate process), JSON and binary
           tensors, from a keep-alive `http.client` connection
Then throughput with 8 concurrent clients (8 processes, binary tensors) against the agent with dynamic
batching off and on, and raw onnxruntime from 8 threads for scale.

    python benchmarks/agent_overhead.py [--quick] [--memory-only] [--models digits,blazeface]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np
from fastapi import (
    Request,  # module level: FastAPI resolves the route's string annotations here
)
from fastapi.responses import JSONResponse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIENTS = 8


# --- the server process -------------------------------------------------------------------------------------
def serve(store_dir: str, sha: str, port: int, batching: bool, max_batch: int, delay_ms: float) -> None:
    import uvicorn

    from edge_agent.agent import uvicorn_config
    from edge_agent.http.server import create_app
    from edge_agent.runtime import golden
    from edge_agent.runtime.host import ModelHost
    from edge_agent.runtime.model import load
    from edge_agent.settings import AgentSettings
    from edge_agent.store import ModelStore
    from fleet_protocol.messages import Batching, Runtime

    store = ModelStore(Path(store_dir))
    stored = store.get(sha)
    assert stored is not None
    runtime = Runtime(providers=["CPUExecutionProvider"], intra_op_threads=1,
                      batching=Batching(enabled=batching, max_batch_size=max_batch, max_delay_ms=delay_ms))
    model = load(stored, runtime, cache_dir=store.cache)
    golden.check(model)
    settings = AgentSettings()
    host = ModelHost(batch_workers=settings.batch_workers)
    host.swap(model)
    app = create_app(host, inline_below_ms=settings.inline_below_ms, workers=settings.infer_workers or None)
    uvicorn.Server(uvicorn_config(app, "127.0.0.1", port)).run()


def serve_plain_fastapi(store_dir: str, sha: str, port: int) -> None:
    """The yardstick of DESIGN.md's table: a plain FastAPI route, JSON tensors, session in the threadpool."""
    import onnxruntime as ort
    import uvicorn
    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool

    from edge_agent.agent import uvicorn_config
    from edge_agent.store import ModelStore

    stored = ModelStore(Path(store_dir)).get(sha)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(stored.model_path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    app = FastAPI()

    @app.get("/v2/health/ready")
    def ready() -> dict:
        return {"ready": True}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        feed = {i["name"]: np.asarray(i["data"], dtype=np.float32).reshape(i["shape"]) for i in body["inputs"]}
        outputs = await run_in_threadpool(session.run, names, feed)
        return JSONResponse({"model_name": name, "outputs": [
            {"name": n, "shape": list(o.shape), "datatype": "FP32", "data": o.ravel().tolist()} for n, o in zip(names, outputs, strict=True)]})

    uvicorn.Server(uvicorn_config(app, "127.0.0.1", port)).run()


class Server:
    def __init__(self, store_dir: Path, sha: str, batching: bool = False, max_batch: int = 8, delay_ms: float = 1.0,
                 plain: bool = False) -> None:
        from demo.cluster import free_port

        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-plain" if plain else "--serve", str(store_dir), sha, str(self.port),
             str(int(batching)), str(max_batch), str(delay_ms)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/v2/health/ready")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"agent server did not start: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --- the client ---------------------------------------------------------------------------------------------
def binary_body(name: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def json_body(name: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})
    return body.encode(), {"Content-Type": "application/json"}


class LeanClient:
    """HTTP/1.1 keep-alive over one socket, nothing else: `http.client` alone costs ~0.2 ms a request here
    (it parses headers with the email package), more than the whole agent adds for a small model."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        head = f"POST {path} HTTP/1.1\r\nHost: agent\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.sock.sendall(head.encode() + body)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self.buf += self._recv()
        lines = self.buf[:end].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = next(int(v) for k, _, v in (ln.partition(b":") for ln in lines[1:]) if k.strip().lower() == b"content-length")
        self.buf = self.buf[end + 4:]
        while len(self.buf) < length:
            self.buf += self._recv()
        data, self.buf = self.buf[:length], self.buf[length:]
        return status, data

    def _recv(self) -> bytes:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


def http_p50(port: int, path: str, body: bytes, headers: dict[str, str], n: int) -> float:
    c = LeanClient(port)
    times = []
    for i in range(n + n // 10):
        t = time.perf_counter()
        status, data = c.post(path, body, headers)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
        if i >= n // 10:
            times.append(time.perf_counter() - t)
    c.close()
    return statistics.median(times) * 1000


def _client_proc(port: int, path: str, body: bytes, headers: dict, seconds: float, start_at: float, out) -> None:
    c = LeanClient(port)
    while time.time() < start_at:
        time.sleep(0.001)
    count, end = 0, start_at + seconds
    while time.time() < end:
        status, _ = c.post(path, body, headers)
        count += status == 200
    out.put(count)


def http_throughput(port: int, path: str, body: bytes, headers: dict, seconds: float) -> float:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 0.5
    procs = [ctx.Process(target=_client_proc, args=(port, path, body, headers, seconds, start_at, out)) for _ in range(CLIENTS)]
    for p in procs:
        p.start()
    total = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def raw_throughput(session, names, feed, seconds: float) -> float:
    counts = [0] * CLIENTS
    stop = time.perf_counter() + seconds

    def worker(k: int) -> None:
        while time.perf_counter() < stop:
            session.run(names, feed)
            counts[k] += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


# --- in process ---------------------------------------------------------------------------------------------
def in_process(model, feed: dict, n: int) -> tuple[float, float]:
    """Interleaved blocks of raw and agent calls, so drift on a busy machine hits both alike."""
    raw, agent = [], []
    session, names = model.session, model.output_names
    for _ in range(50):
        session.run(names, feed)
        model.run(feed)
    block = max(10, n // 20)
    for _ in range(20):
        for _ in range(block):
            t = time.perf_counter()
            session.run(names, feed)
            raw.append(time.perf_counter() - t)
        for _ in range(block):
            t = time.perf_counter()
            model.run(feed)
            agent.append(time.perf_counter() - t)
    return statistics.median(raw) * 1000, statistics.median(agent) * 1000


# --- memory -------------------------------------------------------------------------------------------------
def big_model(out: Path, mb: int = 100, dim: int = 2048) -> tuple[Path, Path]:
    """A ~`mb` MB model: a chain of dim×dim MatMuls (scaled so values stay finite), and golden inputs for it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    layers = max(1, round(mb * 2**20 / (dim * dim * 4)))
    inits, nodes = [], []
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"x{i}" if i else "x", f"w{i}"], [f"x{i + 1}" if i < layers - 1 else "y"]))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out.mkdir(parents=True, exist_ok=True)
    path = out / "big.onnx"
    onnx.save(model, path)
    golden_inputs = out / "big-golden.npz"
    np.savez(golden_inputs, x=rng.standard_normal((2, dim)).astype(np.float32))
    return path, golden_inputs


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class _PeakSampler:
    """The highest RSS seen while it runs, sampled every millisecond (ru_maxrss would include the imports)."""

    def __init__(self) -> None:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def measure_load(how: str, store_dir: str, sha: str) -> dict:
    """In a fresh process: RSS before, peak while loading, and steady after, for one way of loading."""
    import gc

    # Imported before the baseline, so their own memory is not counted as the load's.
    import onnxruntime  # noqa: F401

    import edge_agent.runtime.golden
    import edge_agent.runtime.model  # noqa: F401
    from edge_agent.store import ModelStore

    stored = ModelStore(Path(store_dir)).get(sha)
    assert stored is not None
    gc.collect()
    before = _rss_mb()
    with _PeakSampler() as sampler:
        keep = _load(how, stored, store_dir)
    gc.collect()
    steady = _rss_mb()
    del keep
    return {"before": before, "peak": sampler.peak - before, "steady": steady - before}


def _load(how: str, stored, store_dir: str):
    import onnxruntime as ort

    from edge_agent.runtime import golden
    from edge_agent.runtime.model import load
    from fleet_protocol.messages import Runtime

    if how == "raw":
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        keep = ort.InferenceSession(str(stored.model_path), options, providers=["CPUExecutionProvider"])
    elif how == "agent":
        keep = load(stored, Runtime(providers=["CPUExecutionProvider"], intra_op_threads=1), cache_dir=Path(store_dir) / "cache")
        golden.check(keep)
    else:  # v1: the serving session also wrote its optimized graph to the cache
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.optimized_model_filepath = str(Path(store_dir) / "v1-optimized.onnx")
        keep = ort.InferenceSession(str(stored.model_path), options, providers=["CPUExecutionProvider"])
    return keep


def memory_table(tmp_path: Path, store, private: bytes, public_key) -> None:
    from fleet_protocol.bundle import read_bundle
    from fleet_protocol.signing import sha256_file
    from model_tools.pack import pack_bundle

    onnx_path, golden_inputs = big_model(tmp_path / "big")
    bundle, _ = pack_bundle(onnx_path, name="big", version="1.0.0", golden_inputs=golden_inputs, private_key_pem=private,
                            out_dir=tmp_path / "bundles")
    sha = sha256_file(bundle)
    read_bundle(bundle, [public_key], extract_to=store.models / sha)
    size = (store.models / sha / "model.onnx").stat().st_size / 2**20
    results = {}
    for how in ("raw", "agent", "v1"):
        out = subprocess.run([sys.executable, __file__, "--measure-load", how, str(store.root), sha],
                             capture_output=True, text=True, check=True)
        results[how] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"memory while loading a {size:.0f} MB model (MatMul chain), CPU, RSS growth over the process before the load")
    print(f"{'':<34} {'peak MB':>8} {'x model':>8} {'steady MB':>10} {'x model':>8}")
    labels = {"raw": "raw onnxruntime (InferenceSession)", "agent": "agent (create_session + golden)",
              "v1": "v1 agent (+ optimized-model file)"}
    for how, r in results.items():
        print(f"{labels[how]:<34} {r['peak']:8.0f} {r['peak'] / size:8.2f} {r['steady']:10.0f} {r['steady'] / size:8.2f}")
    agent, raw = results["agent"], results["raw"]
    print(f"agent over raw: peak {(agent['peak'] - raw['peak']) / size:+.2f}x, steady {(agent['steady'] - raw['steady']) / size:+.2f}x "
          f"of the model's size\n")


# --- models -------------------------------------------------------------------------------------------------
def prepare(name: str, out: Path, key_pem: bytes):
    from model_tools.pack import pack_bundle
    from model_tools.zoo import prepare as zoo_prepare

    zoo = zoo_prepare("digits", variant="e20", epochs=20) if name == "digits" else zoo_prepare(name)
    path, _ = pack_bundle(zoo.onnx, name=name, version="1.0.0", golden_inputs=zoo.golden_inputs, private_key_pem=key_pem,
                          out_dir=out, task=zoo.task, labels=zoo.labels, preprocessing=zoo.preprocessing)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,blazeface")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    parser.add_argument("--memory-only", action="store_true", help="only the memory table")
    parser.add_argument("--measure-load", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--serve-plain", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_plain:
        serve_plain_fastapi(args.serve_plain[0], args.serve_plain[1], int(args.serve_plain[2]))
        return 0
    if args.measure_load:
        print(json.dumps(measure_load(*args.measure_load)))
        return 0
    if args.serve:
        store_dir, sha, port, batching, max_batch, delay = args.serve
        serve(store_dir, sha, int(port), batching == "1", int(max_batch), float(delay))
        return 0

    import onnxruntime as ort

    from edge_agent.runtime import golden
    from edge_agent.runtime.host import ModelHost
    from edge_agent.runtime.model import load
    from edge_agent.store import ModelStore
    from fleet_protocol.bundle import read_bundle
    from fleet_protocol.messages import Runtime
    from fleet_protocol.signing import generate_keypair, load_public_key, sha256_file

    n = 300 if args.quick else 3000
    seconds = min(args.seconds, 1.0) if args.quick else args.seconds
    rows, through = [], []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        tmp_path = Path(tmp)
        private, public = generate_keypair()
        store = ModelStore(tmp_path / "store")
        memory_table(tmp_path, store, private, load_public_key(public))
        if args.memory_only:
            return 0
        for name in args.models.split(","):
            bundle = prepare(name, tmp_path / "bundles", private)
            sha = sha256_file(bundle)
            read_bundle(bundle, [load_public_key(public)], extract_to=store.models / sha)
            stored = store.get(sha)
            model = load(stored, Runtime(providers=["CPUExecutionProvider"], intra_op_threads=1), cache_dir=store.cache)
            golden.check(model)
            host = ModelHost()
            host.swap(model)
            input_name = next(iter(model.inputs))
            shape = [1 if d is None else d for d in model.inputs[input_name].shape]
            x = np.random.default_rng(0).random(shape, dtype=np.float32)
            feed = {input_name: x}
            raw_ms, engine_ms = in_process(model, feed, n)
            path = f"/v2/models/{name}/infer"
            server = Server(store.root, sha)
            try:
                http_json = http_p50(server.port, path, *json_body(input_name, x), n=n // 3 if name != "digits" else n)
                http_bin = http_p50(server.port, path, *binary_body(input_name, x), n=n)
                tput_off = http_throughput(server.port, path, *binary_body(input_name, x), seconds)
            finally:
                server.stop()
            server = Server(store.root, sha, plain=True)
            try:
                plain_json = http_p50(server.port, path, *json_body(input_name, x), n=n // 3 if name != "digits" else n)
            finally:
                server.stop()
            server = Server(store.root, sha, batching=True, max_batch=CLIENTS, delay_ms=1.0)
            try:
                tput_on = http_throughput(server.port, path, *binary_body(input_name, x), seconds)
            finally:
                server.stop()
            tput_raw = raw_throughput(model.session, model.output_names, feed, seconds)
            rows.append((name, shape, raw_ms, engine_ms, http_json, http_bin, plain_json))
            through.append((name, tput_raw, tput_off, tput_on))
            del host, model

    print(f"edge agent overhead: onnxruntime {ort.__version__}, {os.cpu_count()} CPUs, batch 1, 1 intra-op thread, p50 in ms")
    print("  engine: in-process LoadedModel.run; http: the agent's local server (own process), lean keep-alive client;")
    print("  plain FastAPI: a straightforward FastAPI JSON route measured with the same client, for scale")
    print(f"{'model':<10} {'input':<12} {'raw run':>8} {'engine':>8} {'+engine':>12} {'http json':>10} {'+json':>7} "
          f"{'http bin':>9} {'+bin':>7} {'plain FastAPI json':>19} {'+':>7}")
    for name, shape, raw, eng, hj, hb, pj in rows:
        added = eng - raw
        budget = max(0.05 * raw, 0.020)
        mark = "ok" if added <= budget else "OVER"
        print(f"{name:<10} {'x'.join(map(str, shape)):<12} {raw:8.4f} {eng:8.4f} {added * 1000:+7.1f}us {mark:<4} "
              f"{hj:10.3f} {hj - raw:+7.3f} {hb:9.3f} {hb - raw:+7.3f} {pj:19.3f} {pj - raw:+7.3f}")
    print(f"\nthroughput, {CLIENTS} concurrent clients (processes, keep-alive, binary tensors), requests/s")
    print(f"{'model':<10} {'raw ort 8 thr':>14} {'agent':>9} {'agent+batching':>15} {'batching gain':>14}")
    for name, raw, off, on in through:
        print(f"{name:<10} {raw:14.0f} {off:9.0f} {on:15.0f} {on / off:13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

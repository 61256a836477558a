"""Fixtures for the agent's tests: a model store holding two real digits models, loaded on real sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.runtime import golden
from edge_agent.runtime.model import LoadedModel, load
from edge_agent.store import ModelStore, StoredModel
from fleet_protocol.bundle import read_bundle
from fleet_protocol.messages import Runtime


def install(store: ModelStore, bundle: Path, keys) -> StoredModel:
    """What a finished download ends in: the verified bundle extracted into its content-addressed folder."""
    from fleet_protocol.signing import sha256_file

    sha = sha256_file(bundle)
    if store.get(sha) is None:
        read_bundle(bundle, [keys.public], extract_to=store.models / sha)
    stored = store.get(sha)
    assert stored is not None
    return stored


def load_checked(stored: StoredModel, cache_dir: Path, runtime: Runtime | None = None,
                 optimization: str = "all") -> LoadedModel:
    model = load(stored, runtime or Runtime(), optimization=optimization, cache_dir=cache_dir)
    golden.check(model)
    return model


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "data")


@pytest.fixture
def digits(store, bundles, keys) -> dict[str, StoredModel]:
    return {version: install(store, path, keys) for version, path in bundles.items()}


@pytest.fixture
def images() -> np.ndarray:
    """Real digits from the held-out split, as the model takes them: N×1×8×8 float32."""
    from model_tools.zoo.digits import load_split

    return np.ascontiguousarray(load_split()[2][:64], dtype=np.float32).reshape(-1, 1, 8, 8)


class LocalServer:
    """The agent's HTTP app on real uvicorn (httptools, uvloop) on a free port, in a thread."""

    def __init__(self, app, host: str = "127.0.0.1") -> None:
        import threading

        import uvicorn

        from demo.cluster import free_port
        from edge_agent.agent import uvicorn_config

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LocalServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("local server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def binary_request(name: str, array: np.ndarray, datatype: str = "FP32") -> tuple[bytes, dict[str, str]]:
    """A KServe v2 request with the binary tensor data extension."""
    import json

    head = json.dumps({"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                                   "parameters": {"binary_data_size": array.nbytes}}]}).encode()
    return head + array.tobytes(), {"Inference-Header-Content-Length": str(len(head)),
                                    "Content-Type": "application/octet-stream"}


def binary_outputs(body: bytes, header_length: int) -> dict[str, np.ndarray]:
    import json

    from edge_agent.http.kserve import DATATYPES

    head = json.loads(body[:header_length])
    out, offset = {}, header_length
    for spec in head["outputs"]:
        size = spec["parameters"]["binary_data_size"]
        out[spec["name"]] = np.frombuffer(body[offset:offset + size], dtype=DATATYPES[spec["datatype"]]).reshape(spec["shape"])
        offset += size
    return out


def lan_address() -> str | None:
    """This machine's address on its network (not loopback), or None when it has none."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 1))  # UDP: nothing is sent, the kernel only picks a route and source
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address

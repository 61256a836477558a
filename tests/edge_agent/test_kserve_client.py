"""A stock KServe v2 client (NVIDIA's tritonclient) against the agent serving two models: live, ready,
per-model and per-version ready, metadata and inference for every model on the device."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.http.server import create_app
from edge_agent.runtime.host import ModelHost
from tests.bundles import digits_bundle
from tests.edge_agent.conftest import LocalServer, install, load_checked

httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture
def two_models(store, keys, digits, tmp_path):
    host = ModelHost()
    host.swap(load_checked(digits["2.0.0"], store.cache))
    host.swap(load_checked(install(store, digits_bundle(keys, tmp_path / "b", "1.0.0", epochs=1, name="digits-b"), keys), store.cache))
    with LocalServer(create_app(host)) as server:
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        yield host, client
        client.close()
    host.close()


def test_tritonclient_sees_every_model_and_version(two_models, images):
    host, client = two_models
    assert client.is_server_live() and client.is_server_ready()
    for name, version in (("digits", "2.0.0"), ("digits-b", "1.0.0")):
        assert client.is_model_ready(name)
        assert client.is_model_ready(name, version)
        assert not client.is_model_ready(name, "9.9.9")  # only the version served is ready
        meta = client.get_model_metadata(name, version)
        assert meta["name"] == name and meta["versions"] == [version]
        assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert client.get_model_metadata(name)["parameters"]["provider"] == "CPUExecutionProvider"

        batch = images[:4]
        tensor = httpclient.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        result = client.infer(name, [tensor], model_version=version,
                              outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=True)])
        np.testing.assert_array_equal(result.as_numpy("probabilities"), host.get(name).infer({"image": batch})["probabilities"])
        assert result.get_response()["model_version"] == version
        json_tensor = httpclient.InferInput("image", [1, 1, 8, 8], "FP32")
        json_tensor.set_data_from_numpy(images[:1], binary_data=False)
        assert client.infer(name, [json_tensor]).as_numpy("probabilities").shape == (1, 10)
    assert not client.is_model_ready("nope")
    with pytest.raises(Exception, match="not served here"):
        client.infer("digits", [tensor], model_version="9.9.9")

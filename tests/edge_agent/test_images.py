"""Encoded images over KServe v2: the agent decodes and preprocesses them as the bundle's manifest says."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest

from tests.edge_agent.conftest import binary_outputs
from tests.edge_agent.test_server import json_body, served  # noqa: F401  (fixture)


def png(digit: np.ndarray) -> bytes:
    """An 8×8 digit (floats in [0, 1]) as the grey PNG a camera client would send."""
    ok, data = cv2.imencode(".png", np.round(digit.reshape(8, 8) * 255).astype(np.uint8))
    assert ok
    return data.tobytes()


def bytes_binary_request(name: str, blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    tensor = b"".join(len(b).to_bytes(4, "little") + b for b in blobs)
    head = json.dumps({"inputs": [{"name": name, "shape": [len(blobs)], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(tensor)}}]}).encode()
    return head + tensor, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def test_png_digits_give_the_answers_of_the_tensors_they_encode(served, images):  # noqa: F811
    _, client = served
    for digit in images[:16]:
        as_tensor = client.post("/v2/models/digits/infer", json=json_body(np.round(digit[None] * 255) / 255)).json()
        body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                            "parameters": {"content_type": "base64"}, "data": [base64.b64encode(png(digit)).decode()]}]}
        as_image = client.post("/v2/models/digits/infer", json=body)
        assert as_image.status_code == 200, as_image.text
        np.testing.assert_allclose(as_image.json()["outputs"][0]["data"], as_tensor["outputs"][0]["data"], atol=1e-6)


def test_a_batch_of_images_in_binary_bytes_tensors(served, images):  # noqa: F811
    _, client = served
    body, headers = bytes_binary_request("image", [png(d) for d in images[:3]])
    r = client.post("/v2/models/digits/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    probs = binary_outputs(r.content, int(r.headers["inference-header-content-length"]))["probabilities"]
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("blob, message", [
    (b"\x89PNG\r\n\x1a\n but not really", "element 0 is not a decodable image"),
    (b"", "element 0 is not a decodable image"),
])
def test_undecodable_images_are_a_400_naming_the_input(served, images, blob, message):  # noqa: F811
    _, client = served
    body, headers = bytes_binary_request("image", [blob])
    r = client.post("/v2/models/digits/infer", content=body, headers=headers)
    assert r.status_code == 400 and "'image'" in r.json()["error"] and message in r.json()["error"]
    bad_b64 = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"content_type": "base64"},
                           "data": ["***"]}]}
    r = client.post("/v2/models/digits/infer", json=bad_b64)
    assert r.status_code == 400 and "not valid base64" in r.json()["error"]
    truncated = bytes_binary_request("image", [png(images[0])])
    r = client.post("/v2/models/digits/infer", content=truncated[0][:-20], headers=truncated[1])
    assert r.status_code == 400
    assert client.post("/v2/models/digits/infer", json=json_body(images[:1])).status_code == 200  # still serving


def test_jpeg_size_is_read_from_the_header_without_decoding():
    from edge_agent.preprocess import jpeg_size

    for w, h, flags in ((640, 480, []), (1920, 1080, []), (37, 91, []), (640, 480, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])):
        ok, data = cv2.imencode(".jpg", np.zeros((h, w, 3), np.uint8), flags)
        assert jpeg_size(data.tobytes()) == (w, h)
    assert jpeg_size(png(np.zeros(64))) is None
    assert jpeg_size(b"\xff\xd8\xff\xe0\x00") is None  # truncated: no frame header

"""Captured samples end to end on a real broker: a device publishes packed samples on `capture` and gets each
SampleAck on `capture_ack`; the HTTP API lists, shows, serves, exports and deletes them, by role."""

from __future__ import annotations

import io
import json
import queue
import zipfile

from fleet_protocol import capture
from fleet_protocol.topics import Topics
from tests.fleet_api.captures import jpeg, npy, packed

TOPICS = Topics()


def token(api, role: str) -> dict[str, str]:
    t = api.post("/v1/tokens", json={"name": f"t-{role}", "role": role}).json()["token"]
    return {"Authorization": f"Bearer {t}"}


def setup_device(api, bundles, device="cam-1"):
    api.post("/v1/devices", json={"id": device, "labels": {"site": "a"}}).raise_for_status()
    api.post("/v1/models", content=bundles["1.0.0"].read_bytes()).raise_for_status()
    api.put(f"/v1/devices/{device}/models/digits", json={"version": "1.0.0"}).raise_for_status()


def test_a_device_uploads_samples_over_mqtt_and_gets_each_acknowledged(api, device_client, bundles):
    setup_device(api, bundles)
    got: queue.Queue[capture.SampleAck] = queue.Queue()
    device_client.on_message = lambda _c, _u, msg: got.put(capture.SampleAck.parse(msg.payload))
    device_client.subscribe(TOPICS.capture_ack("cam-1"), qos=1)  # before the publishes, on the same connection

    def send(payload: bytes) -> None:
        device_client.publish(TOPICS.capture("cam-1"), payload, qos=1).wait_for_publish(5)

    header, payload = packed(jpeg(5))
    send(payload)
    ack = got.get(timeout=10)
    assert (ack.id, ack.stored, ack.refused) == (header.id, True, None)
    send(payload)  # resent after a lost ack: acknowledged again, stored once
    assert got.get(timeout=10).stored
    # tampered data: refused as invalid (the device drops it), counted, nothing stored
    h2, p2 = packed(jpeg(6))
    send(p2[:-1] + bytes([p2[-1] ^ 0xFF]))
    ack = got.get(timeout=10)
    assert (ack.id, ack.stored, ack.refused) == (h2.id, False, "invalid")
    h3, p3 = packed(jpeg(7), model="faces")
    send(p3)
    assert got.get(timeout=10).refused == "unknown_model"
    page = api.get("/v1/captures").json()
    assert page["total"] == 1 and page["captures"][0]["sample_id"] == header.id
    metrics = api.get("/metrics").text
    assert 'edgefleet_api_messages_rejected_total{channel="capture",reason="malformed"}' in metrics
    assert 'edgefleet_api_captures_refused_total{reason="unknown_model"}' in metrics
    assert f"edgefleet_captures_bytes {float(header.size)}" in metrics
    assert "edgefleet_captures_quota_bytes 1.073741824e+09" in metrics


def test_http_lists_shows_serves_exports_and_deletes_by_role(api, bundles):
    setup_device(api, bundles)
    service = api.app.state.service
    samples = [packed(jpeg(i), taken_at=1_796_000_000.0 + i) for i in range(3)]
    tensor = packed(npy(), taken_at=1_796_000_010.0, reason="shadow_disagrees", shadow_version="2.0.0")
    for _, payload in [*samples, tensor]:
        service.on_capture("cam-1", capture.unpack(payload))
    viewer, operator = token(api, "viewer"), token(api, "operator")

    page = api.get("/v1/captures", params={"limit": 2}, headers=viewer).json()
    assert page["total"] == 4 and len(page["captures"]) == 2
    assert page["captures"][0]["sample_id"] == tensor[0].id  # newest taken first
    assert api.get("/v1/captures", params={"reason": "shadow_disagrees"}).json()["total"] == 1
    assert api.get("/v1/captures", params={"since": "2026-11-30T00:53:22Z"}).json()["total"] == 2
    assert api.get("/v1/captures", params={"device": "nobody"}).json()["total"] == 0
    for bad in ({"reason": "whim"}, {"limit": 0}, {"since": "yesterday"}, {"colour": "red"}):
        r = api.get("/v1/captures", params=bad)
        assert r.status_code == 422, bad
    assert "colour" in api.get("/v1/captures", params={"colour": "red"}).json()["error"]

    one = page["captures"][0]
    detail = api.get(f"/v1/captures/{one['id']}", headers=viewer).json()
    assert detail["shadow_version"] == "2.0.0" and detail["content_type"] == "application/x-npy"
    data = api.get(f"/v1/captures/{one['id']}/data", headers=viewer)
    assert data.status_code == 200 and data.content == npy() and data.headers["content-type"] == "application/x-npy"
    first = page["captures"][1]
    image = api.get(f"/v1/captures/{first['id']}/data")
    assert image.headers["content-type"] == "image/jpeg" and image.content[:2] == b"\xff\xd8"
    assert api.get("/v1/captures/999999").status_code == 404
    assert api.get("/v1/captures/999999/data").status_code == 404
    assert api.get("/v1/captures/0").status_code == 422

    z = api.get("/v1/captures/dataset", params={"reason": "low_confidence"}, headers=viewer)
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(z.content))
    labels = json.loads(archive.read("labels.json"))
    assert len(labels) == 3 and all(archive.read(e["file"])[:2] == b"\xff\xd8" for e in labels)
    assert archive.read("labels.csv").decode().startswith("id,file,device_id,sample_id,model")

    usage = api.get("/v1/captures/usage", headers=viewer).json()
    assert usage["count"] == 4 and usage["devices"][0]["device_id"] == "cam-1" and usage["models"][0]["count"] == 4

    # deleting takes an operator; a bulk delete needs a filter or all=true
    assert api.delete(f"/v1/captures/{first['id']}", headers=viewer).status_code == 403
    assert api.delete(f"/v1/captures/{first['id']}", headers=operator).json()["id"] == first["id"]
    assert api.delete(f"/v1/captures/{first['id']}", headers=operator).status_code == 404
    assert api.delete("/v1/captures", headers=operator).status_code == 400
    assert api.delete("/v1/captures", params={"reason": "shadow_disagrees"}, headers=operator).json() == {"deleted": 1}
    assert api.delete("/v1/captures", params={"all": "true"}, headers=operator).json() == {"deleted": 2}
    assert api.get("/v1/captures/usage").json()["bytes_used"] == 0
    actions = [e["action"] for e in api.get("/v1/audit").json()]
    assert actions.count("capture.delete") == 3

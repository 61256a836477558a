"""`edgefleet captures ...` against a live API: samples a device published over MQTT are listed, shown, fetched,
downloaded as a dataset, deleted; usage and the quota; failures are one line with their exit code."""

from __future__ import annotations

import io
import json
import zipfile
from urllib.parse import urlparse

import pytest
from paho.mqtt import publish

from demo.cluster import wait_for
from fleet_cli.exit_codes import ExitCode
from fleet_protocol.topics import Topics
from tests.fleet_api.captures import jpeg, npy, packed

from .conftest import one_error_line


def send(live, topic: str, payload: bytes) -> None:
    url = urlparse(live.env["EDGEFLEET_API_BROKER_URL"])
    publish.single(topic, payload, qos=1, hostname=url.hostname, port=url.port)


@pytest.fixture(scope="module")
def samples(live, bundles):
    """cam-9 runs digits 1.0.0 and sent three JPEGs (one a shadow disagreement) and one .npy."""
    client = live.client()
    client.post("/v1/devices", json={"id": "cam-9", "labels": {"site": "lab"}}).raise_for_status()
    client.post("/v1/models", content=bundles["1.0.0"].read_bytes()).raise_for_status()
    client.put("/v1/devices/cam-9/models/digits", json={"version": "1.0.0"}).raise_for_status()
    sent = [packed(jpeg(1), taken_at=1_796_000_001.0, outputs={"label": "3", "score": 0.41}),
            packed(jpeg(2), taken_at=1_796_000_002.0, outputs={"detections": [
                {"box": [0.1, 0.1, 0.4, 0.5], "label": "face", "score": 0.45}]}),
            packed(jpeg(3), taken_at=1_796_000_003.0, reason="shadow_disagrees", shadow_version="2.0.0"),
            packed(npy(), taken_at=1_796_000_004.0)]
    for _, payload in sent:
        send(live, Topics().capture("cam-9"), payload)
    wait_for(lambda: client.get("/v1/captures").json()["total"] == 4, 20, "the samples stored")
    return [h for h, _ in sent]


def test_list_show_get_and_usage(admin, cli, samples, tmp_path, monkeypatch):
    page = cli("captures", "list", "--json").json()
    assert page["total"] == 4 and [c["sample_id"] for c in page["captures"]] == [h.id for h in reversed(samples)]
    table = cli("captures", "list", "--device", "cam-9", "--limit", "2")
    assert table.code == 0 and "shadow_disagrees" in table.out and "1–2 of 4" in table.out
    assert "1 detection: face" in cli("captures", "list").out and "3 (0.41)" in cli("captures", "list").out
    assert cli("captures", "list", "--reason", "shadow_disagrees", "--json").json()["total"] == 1
    assert cli("captures", "list", "--since", "2026-11-30 00:53:23", "--json").json()["total"] == 2
    ids = {c["sample_id"]: c["id"] for c in page["captures"]}
    shown = cli("captures", "show", str(ids[samples[2].id]))
    assert shown.code == 0 and "2.0.0" in shown.out and "shadow_disagrees" in shown.out
    assert cli("captures", "show", str(ids[samples[0].id]), "--json").json()["outputs"] == {"label": "3", "score": 0.41}
    out = tmp_path / "one.jpg"
    got = cli("captures", "get", str(ids[samples[0].id]), "-o", str(out))
    assert got.code == 0 and out.read_bytes() == jpeg(1)
    monkeypatch.chdir(tmp_path)  # no -o: SAMPLE_ID.npy here
    assert cli("captures", "get", str(ids[samples[3].id])).code == 0
    assert (tmp_path / f"{samples[3].id}.npy").read_bytes() == npy()
    usage = cli("captures", "usage", "--json").json()
    assert usage["count"] == 4 and usage["devices"][0] == {"device_id": "cam-9", "count": 4, "bytes": usage["bytes_used"]}
    text = cli("captures", "usage").out
    assert "4 samples" in text and "cam-9" in text and "digits" in text


def test_download_a_dataset_with_filters(admin, cli, samples, tmp_path):
    dest = tmp_path / "dataset.zip"
    r = cli("captures", "download", "--reason", "low_confidence", "-o", str(dest), "--progress")
    assert r.code == 0, r.err
    z = zipfile.ZipFile(io.BytesIO(dest.read_bytes()))
    labels = json.loads(z.read("labels.json"))
    assert len(labels) == 3 and {e["sample_id"] for e in labels} == {samples[0].id, samples[1].id, samples[3].id}
    assert all(z.read(e["file"]) for e in labels) and "labels.csv" in z.namelist()
    assert not list(tmp_path.glob(".*.part"))
    assert cli("captures", "download", "-o", str(tmp_path)).code == ExitCode.USAGE  # a folder, not a ZIP


def test_bad_input_and_unknown_ids_are_one_line(admin, cli):
    assert cli("captures", "show", "999999").code == ExitCode.NOT_FOUND
    assert "no capture 999999" in one_error_line(cli("captures", "get", "999999", "-o", "/tmp/x"))
    bad = cli("captures", "list", "--reason", "whim")
    assert bad.code == ExitCode.INVALID and "reason" in one_error_line(bad)
    assert cli("captures", "list", "--since", "yesterday").code == ExitCode.USAGE
    assert "filter" in one_error_line(cli("captures", "delete"))
    assert cli("captures", "delete", "1", "--device", "cam-9").code == ExitCode.USAGE


def test_delete_needs_an_operator_and_frees_the_quota(admin, cli, samples, monkeypatch):
    viewer = cli("tokens", "create", "cap-viewer", "--role", "viewer").out.strip()
    page = cli("captures", "list", "--json").json()
    first = page["captures"][0]["id"]
    monkeypatch.setenv("EDGEFLEET_TOKEN", viewer)
    assert cli("captures", "list", "--json").json()["total"] == 4  # a viewer reads
    assert cli("captures", "delete", str(first)).code == ExitCode.AUTH
    monkeypatch.setenv("EDGEFLEET_TOKEN", admin.admin_token)
    assert cli("captures", "delete", str(first), "--json").json() == {"deleted": 1, "ids": [first]}
    assert cli("captures", "delete", str(first)).code == ExitCode.NOT_FOUND
    assert "deleted 1 sample" in cli("captures", "delete", "--reason", "shadow_disagrees").out
    assert cli("captures", "delete", "--all", "--json").json() == {"deleted": 2}
    assert cli("captures", "usage", "--json").json()["bytes_used"] == 0


def test_devices_capture_turns_capture_on_and_off_and_keeps_the_rest_of_the_config(admin, cli):
    assert cli("devices", "register", "cap-cfg-1").code == 0
    shown = cli("devices", "capture", "cap-cfg-1", "--json").json()
    assert shown["capture"].get("enabled", False) is False and shown["source"] == "default"
    on = cli("devices", "capture", "cap-cfg-1", "--on", "--max-per-hour", "12", "--no-blur-faces", "--json").json()
    assert on["capture"]["enabled"] is True and on["capture"]["max_per_hour"] == 12 and on["source"] == "device"
    assert on["capture"]["blur_faces"] is False
    # one option later: the others stay
    later = cli("devices", "capture", "cap-cfg-1", "--min-confidence", "0.3", "--json").json()["capture"]
    assert (later["enabled"], later["max_per_hour"], later["min_confidence"]) == (True, 12, 0.3)
    table = cli("devices", "capture", "cap-cfg-1")
    assert "on" in table.out and "device" in table.out
    assert cli("devices", "capture", "cap-cfg-1", "--inherit", "--json").json()["source"] == "default"
    assert cli("devices", "capture", "cap-cfg-1", "--inherit", "--on").code == ExitCode.USAGE
    assert cli("devices", "capture", "cap-cfg-1", "--max-per-hour", "-1").code == ExitCode.USAGE
    assert cli("devices", "capture", "nope", "--on").code == ExitCode.NOT_FOUND


def test_profiles_capture_sets_it_for_the_profiles_devices_and_keeps_the_rest(admin, cli, tmp_path):
    assert cli("devices", "register", "cap-prof-1", "--label", "zone=gate").code == 0
    spec = tmp_path / "gate.yaml"
    spec.write_text("selector: zone=gate\npriority: 5\nmemory_budget_mb: 200\n")
    assert cli("profiles", "set", "gate", str(spec)).code == 0
    p = cli("profiles", "capture", "gate", "--on", "--max-per-hour", "6", "--json").json()
    assert p["capture"]["enabled"] is True and p["capture"]["max_per_hour"] == 6
    assert p["memory_budget_mb"] == 200 and p["selector"] == {"zone": "gate"} and p["priority"] == 5
    device = cli("devices", "capture", "cap-prof-1", "--json").json()
    assert device["capture"]["enabled"] is True and device["source"] == "profile:gate"
    assert "profile gate" in cli("profiles", "capture", "gate").out
    assert cli("profiles", "capture", "gate", "--inherit", "--json").json()["capture"] is None
    assert cli("devices", "capture", "cap-prof-1", "--json").json()["source"] == "default"
    assert cli("profiles", "capture", "nope", "--on").code == ExitCode.NOT_FOUND

"""Every `edgefleet` command against a live fleet API: `--json` parses, exit codes follow the outcome, and a bad
token or bad input gives one `error:` line.

Devices here are simulated with the real protocol (their `reported` / `telemetry` published on the real broker),
so rollouts end every way without agent processes; the README test runs real agents.
"""

from __future__ import annotations

import json
import os
import stat
import time
from urllib.parse import urlparse

import pytest
from paho.mqtt import publish

from demo.cluster import free_port, wait_for
from fleet_cli.exit_codes import ExitCode
from fleet_protocol.messages import Health, ModelReport, ModelTelemetry, Reported, ServingModel, Telemetry
from fleet_protocol.topics import Topics

from .conftest import one_error_line

pytestmark = pytest.mark.e2e


def send(live, topic: str, payload: bytes, retain: bool = False) -> None:
    url = urlparse(live.env["EDGEFLEET_API_BROKER_URL"])
    publish.single(topic, payload, qos=1, retain=retain, hostname=url.hostname, port=url.port)


def report_serving(live, cli, device_id: str, model: dict) -> None:
    """What an agent says once its golden check passed: serving this bundle, at the current desired revision."""
    revision = cli("devices", "show", device_id, "--json").json()["desired_revision"]
    bundle = ServingModel(name=model["name"], version=model["version"], sha256=model["sha256"])
    reported = Reported(revision=revision, models={model["name"]: ModelReport(
        state="serving", serving=bundle, desired=bundle, provider="CPUExecutionProvider", golden_passed=True)})
    send(live, Topics().reported(device_id), reported.to_bytes(), retain=True)


# --- contexts -----------------------------------------------------------------------------------------------
def test_contexts_are_kept_0600_and_environment_overrides_them(live, cli, isolated_config):
    r = cli("context", "set", "lab", "--server", live.url, "--token", live.admin_token, "--json")
    assert r.code == 0, r.err
    assert r.json()["current"] is True and r.json()["token"] != live.admin_token  # never echoed whole
    assert stat.S_IMODE(os.stat(isolated_config).st_mode) == 0o600
    saved = json.loads(isolated_config.read_text())
    assert saved["current-context"] == "lab" and saved["contexts"][0]["token"] == live.admin_token

    assert cli("context", "set", "elsewhere", "--server", "http://127.0.0.1:9", "--no-use").code == 0
    listed = cli("context", "list", "--json").json()
    assert [(c["name"], c["current"]) for c in listed] == [("lab", True), ("elsewhere", False)]
    me = cli("whoami", "--json")
    assert me.code == 0 and me.json()["role"] == "admin" and me.json()["server"] == live.url

    assert cli("context", "use", "elsewhere").code == 0
    unreachable = cli("whoami")
    assert unreachable.code == ExitCode.UNREACHABLE
    assert "cannot reach the fleet API at http://127.0.0.1:9" in one_error_line(unreachable)
    assert cli("--context", "lab", "whoami").code == 0  # a context by name for one command

    os.environ["EDGEFLEET_SERVER"] = live.url  # the environment wins over the current context
    try:
        assert cli("whoami").code == ExitCode.AUTH  # … and the context's token went with the context: none sent
        os.environ["EDGEFLEET_TOKEN"] = live.admin_token
        assert cli("whoami", "--json").json()["name"] == "bootstrap-admin"
        os.environ["EDGEFLEET_TOKEN"] = "eft_wrong"
        bad = cli("devices", "list")
        assert bad.code == ExitCode.AUTH and "invalid or revoked API token (HTTP 401)" in one_error_line(bad)
    finally:
        os.environ.pop("EDGEFLEET_SERVER", None)
        os.environ.pop("EDGEFLEET_TOKEN", None)

    missing = cli("context", "use", "nope")
    assert missing.code == ExitCode.USAGE and "no context 'nope'" in one_error_line(missing)
    assert cli("context", "delete", "elsewhere", "--json").json() == {"deleted": "elsewhere", "current": "lab"}


def test_no_server_configured_is_one_line(cli):
    r = cli("devices", "list")
    assert r.code == ExitCode.USAGE and "edgefleet context set" in one_error_line(r)


def test_unreachable_server_is_one_line(cli, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_SERVER", f"http://127.0.0.1:{free_port()}")
    r = cli("models", "list", "--json")
    assert r.code == ExitCode.UNREACHABLE and "Connection refused" in one_error_line(r)


def test_a_server_that_is_no_fleet_api_is_one_line(live, cli, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_SERVER", live.url + "/somewhere-else")
    monkeypatch.setenv("EDGEFLEET_TOKEN", live.admin_token)
    r = cli("devices", "list")
    assert r.code == ExitCode.NOT_FOUND
    assert "the server has no GET /v1/devices (not a fleet API, or an older one?)" in one_error_line(r)


def test_bad_command_line_is_one_line(cli):
    for args in (("devices", "lst"), ("devices", "list", "--bogus"), ("rollouts", "show", "abc"), ("audit", "--limit", "0")):
        r = cli(*args)
        assert r.code == ExitCode.USAGE, args
        assert "--help" in one_error_line(r)


# --- tokens and roles ---------------------------------------------------------------------------------------
def test_tokens_and_roles(admin, cli, monkeypatch):
    created = cli("tokens", "create", "ci-viewer", "--role", "viewer", "--json")
    assert created.code == 0, created.err
    viewer = created.json()
    assert viewer["role"] == "viewer" and viewer["token"].startswith("eft_")
    assert "ci-viewer" in [t["name"] for t in cli("tokens", "list", "--json").json()]
    plain = cli("tokens", "create", "ci-operator", "--role", "operator")
    assert plain.code == 0 and plain.out.strip().startswith("eft_")  # the token alone on stdout: TOKEN=$(…)

    bad_role = cli("tokens", "create", "x", "--role", "superuser")
    assert bad_role.code == ExitCode.INVALID and "role 'superuser'" in one_error_line(bad_role)
    empty_name = cli("tokens", "create", "", "--json")
    assert empty_name.code == ExitCode.INVALID and "(HTTP 422)" in one_error_line(empty_name)

    monkeypatch.setenv("EDGEFLEET_TOKEN", viewer["token"])
    assert cli("devices", "list", "--json").code == 0
    forbidden = cli("devices", "register", "cam-denied")
    assert forbidden.code == ExitCode.AUTH and "has role 'viewer'; this needs 'admin' (HTTP 403)" in one_error_line(forbidden)

    monkeypatch.setenv("EDGEFLEET_TOKEN", admin.admin_token)
    revoked = cli("tokens", "revoke", str(viewer["id"]), "--json")
    assert revoked.code == 0 and revoked.json()["revoked_at"]
    monkeypatch.setenv("EDGEFLEET_TOKEN", viewer["token"])
    assert cli("whoami").code == ExitCode.AUTH
    monkeypatch.setenv("EDGEFLEET_TOKEN", admin.admin_token)
    assert cli("tokens", "revoke", "999999").code == ExitCode.NOT_FOUND


# --- devices ------------------------------------------------------------------------------------------------
def test_devices_register_list_show_revoke(admin, cli):
    r = cli("devices", "register", "cli-dev-1", "--label", "site=cli", "-l", "hw=cpu", "--json")
    assert r.code == 0, r.err
    assert r.json()["labels"] == {"site": "cli", "hw": "cpu"}
    assert cli("devices", "register", "cli-dev-2", "-l", "site=other").code == 0

    listed = cli("devices", "list", "--label", "site=cli", "--json").json()
    assert [d["id"] for d in listed] == ["cli-dev-1"]
    assert [d["id"] for d in cli("devices", "list", "--state", "offline", "--json").json() if d["id"].startswith("cli-")] == [
        "cli-dev-1", "cli-dev-2"]
    table = cli("devices", "list")
    assert table.code == 0 and "cli-dev-1" in table.out and "site=cli" in table.out
    shown = cli("devices", "show", "cli-dev-1", "--json")
    assert shown.code == 0 and shown.json()["id"] == "cli-dev-1" and shown.json()["online"] is False
    assert "cli-dev-1" in cli("devices", "show", "cli-dev-1").out

    unknown = cli("devices", "show", "nope")
    assert unknown.code == ExitCode.NOT_FOUND and "unknown device 'nope' (HTTP 404)" in one_error_line(unknown)
    taken = cli("devices", "register", "cli-dev-1")
    assert taken.code == ExitCode.CONFLICT and "already registered" in one_error_line(taken)
    invalid = cli("devices", "register", "bad id!")
    assert invalid.code == ExitCode.INVALID and "must match" in one_error_line(invalid)
    bad_label = cli("devices", "register", "cli-dev-3", "-l", "site")
    assert bad_label.code == ExitCode.USAGE and "not KEY=VALUE" in one_error_line(bad_label)
    # no dynamic security on this API: devices have no broker login of their own to rotate
    rotate = cli("devices", "rotate", "cli-dev-1")
    assert rotate.code == ExitCode.CONFLICT and "dynamic security" in one_error_line(rotate)

    unconfirmed = cli("devices", "revoke", "cli-dev-2")  # stdin is not a terminal here
    assert unconfirmed.code == ExitCode.USAGE and "--yes" in one_error_line(unconfirmed)
    revoked = cli("devices", "revoke", "cli-dev-2", "--yes", "--json")
    assert revoked.code == 0 and revoked.json()["revoked"] is True
    assert [d["id"] for d in cli("devices", "list", "--state", "revoked", "--json").json()] == ["cli-dev-2"]


def test_devices_rotate_with_dynamic_security(tmp_path, keys, dynsec_broker, cli, monkeypatch):
    from demo.cluster import FleetApi

    api = FleetApi(tmp_path / "api", dynsec_broker.url, keys.public_path, env={
        "EDGEFLEET_API_DYNSEC": "true", "EDGEFLEET_API_MQTT_USERNAME": dynsec_broker.admin_username,
        "EDGEFLEET_API_MQTT_PASSWORD": dynsec_broker.admin_password})
    api.start()
    try:
        monkeypatch.setenv("EDGEFLEET_SERVER", api.url)
        monkeypatch.setenv("EDGEFLEET_TOKEN", api.admin_token)
        first = cli("devices", "register", "cam-dyn", "--json").json()["credentials"]
        shown = cli("devices", "register", "cam-dyn2")
        assert "shown once" in shown.out and "password" in shown.out
        rotated = cli("devices", "rotate", "cam-dyn", "--json")
        assert rotated.code == 0, rotated.err
        second = rotated.json()["credentials"]
        # device logins live in their own namespace (issue 12 #1): never a service account's name
        assert second["username"] == first["username"] == "device-cam-dyn" and second["password"] != first["password"]
    finally:
        api.stop()


def test_devices_label(admin, cli):
    assert cli("devices", "register", "cli-lab-1", "-l", "site=a", "-l", "old=x").code == 0
    bad = cli("devices", "label", "cli-lab-1", "site")  # checked before anything is sent
    assert bad.code == ExitCode.USAGE and "KEY- to remove" in one_error_line(bad)
    r = cli("devices", "label", "cli-lab-1", "site=b", "hw=jetson", "old-", "--json")
    assert r.code == 0, r.err
    assert cli("devices", "show", "cli-lab-1", "--json").json()["labels"] == {"site": "b", "hw": "jetson"}
    assert cli("devices", "label", "nope", "a=b").code == ExitCode.NOT_FOUND


def test_devices_config(admin, cli, tmp_path):
    assert cli("devices", "register", "cli-cfg-1").code == 0
    not_yaml = tmp_path / "bad.yaml"
    not_yaml.write_text("runtime: [unclosed\n")
    assert "neither JSON nor YAML" in one_error_line(cli("devices", "config", "cli-cfg-1", str(not_yaml)))
    assert cli("devices", "config", "cli-cfg-1", str(tmp_path / "missing.yaml")).code == ExitCode.USAGE
    good = tmp_path / "config.yaml"
    good.write_text("runtime:\n  digits:\n    intra_op_threads: 1\nmemory_budget_mb: 300\n")
    r = cli("devices", "config", "cli-cfg-1", str(good), "--json")
    assert r.code == 0, r.err
    shown = cli("devices", "config", "cli-cfg-1", "--json").json()["config"]
    assert shown["runtime"]["digits"]["intra_op_threads"] == 1 and shown["memory_budget_mb"] == 300
    assert '"memory_budget_mb": 300' in cli("devices", "config", "cli-cfg-1").out
    unknown_field = tmp_path / "unknown.json"
    unknown_field.write_text(json.dumps({"runtime": {}, "colour": "blue"}))
    refused = cli("devices", "config", "cli-cfg-1", str(unknown_field))
    assert refused.code == ExitCode.INVALID and "colour" in one_error_line(refused)


def test_telemetry(admin, cli):
    assert cli("devices", "register", "cli-tel-1").code == 0
    empty = cli("telemetry", "cli-tel-1", "--json")
    assert empty.code == 0 and empty.json() == {"device_id": "cli-tel-1", "minutes": []}
    message = Telemetry(window_s=10, health=Health(cpu_percent=12.5, agent_rss_mb=80.0), models={
        "digits": ModelTelemetry(version="1.0.0", requests=120, errors=3, latency_ms_p50=1.5, latency_ms_p95=4.0, latency_ms_p99=6.0),
        "faces": ModelTelemetry(version="2.0.0", requests=7)})
    send(admin, Topics().telemetry("cli-tel-1"), message.to_bytes())
    minutes = wait_for(lambda: cli("telemetry", "cli-tel-1", "--model", "digits", "--json").json()["minutes"], 20, "telemetry filed")
    assert [(m["model"], m["requests"], m["errors"], m["latency_ms_p95"]) for m in minutes] == [("digits", 120, 3, 4.0)]
    table = cli("telemetry", "cli-tel-1", "--since", "2020-01-01")
    assert table.code == 0 and "120" in table.out and "4.000" in table.out and "faces" in table.out and "(device)" in table.out
    assert cli("telemetry", "nope").code == ExitCode.NOT_FOUND


def test_alerts_list(admin, cli):
    """An API with fleet insight and no alert yet (tests/fleet_api/insights/test_e2e_webhook.py lists a real one)."""
    assert cli("alerts", "list", "--json").json() == []
    assert "no active alerts" in cli("alerts", "list").out
    assert "no alerts" in cli("alerts", "list", "--all").out
    bad = cli("alerts", "list", "--state", "burning")
    assert bad.code == ExitCode.INVALID and "state" in one_error_line(bad)


def test_audit(admin, cli):
    assert cli("devices", "register", "cli-aud-1").code == 0
    entries = cli("audit", "--action", "device.register", "--limit", "5", "--json").json()
    assert entries[0]["target"] == "device:cli-aud-1" and all(e["action"] == "device.register" for e in entries)
    assert "device.register" in cli("audit", "--limit", "3").out


# --- models -------------------------------------------------------------------------------------------------
def test_models_upload_list_show(admin, cli, bundles, tmp_path):
    first = cli("models", "upload", str(bundles["1.0.0"]), "--json")
    assert first.code == 0, first.err
    assert (first.json()["version"], first.json()["created"]) == ("1.0.0", True)
    again = cli("models", "upload", str(bundles["1.0.0"]), "--progress", "--json")  # same bytes: fine, not new
    assert again.code == 0 and again.json()["created"] is False
    both = cli("models", "upload", str(bundles["1.0.0"]), str(bundles["2.0.0"]))
    assert both.code == 0 and "uploaded: digits 2.0.0" in both.out

    listed = cli("models", "list", "--json").json()
    assert {(m["name"], m["version"]) for m in listed} >= {("digits", "1.0.0"), ("digits", "2.0.0")}
    shown = cli("models", "show", "digits", "2.0.0", "--json").json()
    assert [m["sha256"] for m in shown] == [m["sha256"] for m in listed if m["version"] == "2.0.0"]
    assert "digits 1.0.0" in cli("models", "show", "digits").out
    assert cli("models", "show", "nope").code == ExitCode.NOT_FOUND

    # the progress bar's feed: every byte of the file, streamed in blocks
    from fleet_cli.client import ApiClient

    sent: list[int] = []
    with ApiClient(admin.url, admin.admin_token) as client:
        view, created = client.upload_model(bundles["2.0.0"], sent.append)
    assert sum(sent) == bundles["2.0.0"].stat().st_size and len(sent) >= 1 and not created

    garbage = tmp_path / "garbage.bundle"
    garbage.write_bytes(b"not a tar" * 100)
    refused = cli("models", "upload", str(garbage))
    assert refused.code == ExitCode.INVALID, refused.err
    one_error_line(refused)
    missing = cli("models", "upload", str(tmp_path / "missing.bundle"))
    assert missing.code == ExitCode.USAGE and "no such file" in one_error_line(missing)


# --- rollouts -----------------------------------------------------------------------------------------------
@pytest.fixture
def lab(admin, cli, bundles, request):
    """Two fresh devices under a label of their own, and the digits models uploaded."""
    site = request.node.name[-20:].replace("[", "").replace("]", "")
    ids = [f"{site}-{i}" for i in (1, 2)]
    for device_id in ids:
        assert cli("devices", "register", device_id, "-l", f"site={site}").code == 0
    models = {}
    for version, path in bundles.items():
        models[version] = cli("models", "upload", str(path), "--json").json()
    return site, ids, models


def test_rollout_succeeds_and_watch_exits_0(lab, cli, live):
    site, ids, models = lab
    created = cli("rollouts", "create", "digits", "1.0.0", "-s", f"site={site}", "-w", "1,100%", "--json")
    assert created.code == 0, created.err
    rollout = created.json()
    assert rollout["state"] == "running" and rollout["waves"] == [1, 2]
    for device_id in ids:  # the wave-1 device first, then the other once its desired state arrived
        wait_for(lambda d=device_id: cli("devices", "show", d, "--json").json()["desired"], 20, f"{device_id} desired")
        report_serving(live, cli, device_id, models["1.0.0"])
    watched = cli("rollouts", "watch", str(rollout["id"]), "--interval", "0.2", "--timeout", "60")
    assert watched.code == ExitCode.OK, watched.err + watched.out
    assert f"rollout {rollout['id']}: succeeded" in watched.out
    shown = cli("rollouts", "show", str(rollout["id"]), "--json").json()
    assert [d["state"] for d in shown["devices"]] == ["succeeded", "succeeded"]
    assert "succeeded" in cli("rollouts", "show", str(rollout["id"])).out
    listed = cli("rollouts", "list", "--state", "succeeded", "--json").json()
    assert rollout["id"] in [r["id"] for r in listed]

    rolled = cli("rollouts", "rollback", str(rollout["id"]), "--reason", "test", "--json")
    assert rolled.code == 0 and rolled.json()["state"] == "rolled_back"
    assert cli("rollouts", "watch", str(rollout["id"]), "--json").code == ExitCode.ROLLOUT_ROLLED_BACK
    again = cli("rollouts", "rollback", str(rollout["id"]))
    assert again.code == ExitCode.CONFLICT and "cannot become rolled_back (HTTP 409)" in one_error_line(again)


def test_rollout_pause_resume_abort_and_watch_codes(lab, cli):
    site, ids, _ = lab
    rollout = cli("rollouts", "create", "digits", "2.0.0", "-s", f"site={site}", "-g", "max_concurrent=1", "--json").json()
    assert rollout["gates"]["max_concurrent"] == 1
    rid = str(rollout["id"])
    timeout = cli("rollouts", "watch", rid, "--timeout", "0.3", "--interval", "0.1", "--json")
    assert timeout.code == ExitCode.WATCH_TIMEOUT and timeout.json()["state"] == "running"
    assert "still running" in timeout.err

    conflict = cli("rollouts", "create", "digits", "2.0.0", "-s", f"site={site}")
    assert conflict.code == ExitCode.CONFLICT and "already in an active rollout" in one_error_line(conflict)
    assert cli("rollouts", "pause", rid, "--json").json()["state"] == "paused"
    assert cli("rollouts", "pause", rid).code == ExitCode.CONFLICT
    assert cli("rollouts", "resume", rid, "--json").json()["state"] == "running"
    aborted = cli("rollouts", "abort", rid, "--reason", "enough", "--json").json()
    assert (aborted["state"], aborted["reason"]) == ("aborted", "enough")
    assert cli("rollouts", "abort", rid).code == ExitCode.CONFLICT
    watched = cli("rollouts", "watch", rid)
    assert watched.code == ExitCode.ROLLOUT_ABORTED and "enough" in watched.err
    assert cli("rollouts", "show", "999999").code == ExitCode.NOT_FOUND


def test_rollout_that_times_out_is_watched_to_its_abort(lab, cli):
    site, _, _ = lab
    started = time.monotonic()
    r = cli("rollouts", "create", "digits", "1.0.0", "-s", f"site={site}", "-g", "wave_timeout_s=1", "--watch",
            "--interval", "0.2", "--timeout", "60")
    assert r.code == ExitCode.ROLLOUT_ABORTED, r.err + r.out
    assert "aborted" in r.out and time.monotonic() - started < 60


def test_rollout_bad_input(lab, cli):
    site, _, _ = lab
    unknown_gate = cli("rollouts", "create", "digits", "1.0.0", "-s", f"site={site}", "-g", "colour=1")
    assert unknown_gate.code == ExitCode.INVALID and "gates.colour" in one_error_line(unknown_gate)
    no_devices = cli("rollouts", "create", "digits", "1.0.0", "-s", f"site={site}", "-g", "max_concurrent=0")
    assert no_devices.code == ExitCode.INVALID and "max_concurrent" in one_error_line(no_devices)
    not_a_number = cli("rollouts", "create", "digits", "1.0.0", "-g", "soak_s=long")
    assert not_a_number.code == ExitCode.USAGE and "not a number" in one_error_line(not_a_number)
    no_model = cli("rollouts", "create", "nope", "1.0.0", "-s", f"site={site}")
    assert no_model.code in (ExitCode.NOT_FOUND, ExitCode.INVALID)
    one_error_line(no_model)
    nobody = cli("rollouts", "create", "digits", "1.0.0", "-s", "site=nowhere")
    assert nobody.code == ExitCode.INVALID and "no registered device matches" in one_error_line(nobody)


# --- profiles and a device's own models (after the upload test: it wants the first upload) -------------------
def test_profiles_and_device_models(admin, cli, bundles, tmp_path):
    assert cli("models", "upload", str(bundles["1.0.0"])).code == 0
    assert cli("devices", "register", "cli-prof-1", "-l", "site=prof").code == 0
    spec = tmp_path / "lab.yaml"
    spec.write_text("selector: site=prof\npriority: 5\nmemory_budget_mb: 512\n")
    made = cli("profiles", "set", "lab", str(spec))
    assert made.code == 0 and "created" in made.out and "cli-prof-1" in made.out, made.err
    assert "replaced" in cli("profiles", "set", "lab", str(spec)).out
    listed = cli("profiles", "list", "--json").json()
    assert [(p["name"], p["selector"], p["priority"]) for p in listed] == [("lab", {"site": "prof"}, 5)]
    assert "site=prof" in cli("profiles", "list").out
    assert cli("profiles", "show", "lab", "--json").json()["memory_budget_mb"] == 512
    assert cli("devices", "show", "cli-prof-1", "--json").json()["desired"]["memory_budget_mb"] == 512
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"selector": "site=prof", "colour": "blue"}))
    refused = cli("profiles", "set", "lab", str(bad))
    assert refused.code == ExitCode.INVALID and "colour" in one_error_line(refused)
    assert cli("profiles", "show", "nope").code == ExitCode.NOT_FOUND

    assigned = cli("devices", "models", "assign", "cli-prof-1", "digits", "1.0.0", "--json")
    assert assigned.code == 0, assigned.err
    assert assigned.json()["desired"]["models"]["digits"]["bundle"]["version"] == "1.0.0"
    shown = cli("devices", "show", "cli-prof-1")
    assert shown.code == 0 and "digits" in shown.out and "1.0.0" in shown.out
    unknown = cli("devices", "models", "assign", "cli-prof-1", "digits", "9.9.9")
    assert unknown.code in (ExitCode.NOT_FOUND, ExitCode.INVALID)
    one_error_line(unknown)
    removed = cli("devices", "models", "remove", "cli-prof-1", "digits")
    assert removed.code == 0 and "digits removed" in removed.out
    assert cli("devices", "models", "remove", "cli-prof-1", "digits").code == ExitCode.NOT_FOUND

    assert cli("profiles", "delete", "lab").code == ExitCode.USAGE  # no terminal to confirm on
    gone = cli("profiles", "delete", "lab", "--yes", "--json")
    assert gone.code == 0 and gone.json()["devices_changed"] == ["cli-prof-1"]
    assert cli("profiles", "list", "--json").json() == []

"""Rollouts on real parts: mosquitto, the fleet API process and edge-agent processes.

A bad model stops at its first wave and the canary goes back to the old model without anyone; an API killed
mid-rollout comes back and finishes it, and no device hears the same desired revision twice.
"""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from demo.cluster import wait_for
from demo.fleet import Fleet, device_table, roll_out, upload, wait_serving
from fleet_protocol.messages import Desired
from fleet_protocol.topics import Topics
from tests.bundles import bad_golden_bundle

pytestmark = pytest.mark.e2e

DEVICES = {f"dev-{i}": {"site": "lab", "hw": "cpu"} for i in (1, 2, 3)}


class DesiredMonitor:
    """Watches every device's desired topic on the broker and counts live (non-retained) deliveries."""

    def __init__(self, port: int) -> None:
        self.live: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="desired-monitor", protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(Topics().all_devices("desired"), qos=1)
        self.c.loop_start()

    def _on_message(self, _c, _u, msg) -> None:
        if msg.retain or not msg.payload:
            return
        device = Topics().parse_device(msg.topic)[0]
        with self._lock:
            self.live.append((device, Desired.parse(msg.payload).revision))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def agent_version(agent) -> str:
    return httpx.get(f"{agent.url}/v2/health/ready", timeout=2).json()["models"]["digits"]["version"]


def test_bad_model_aborts_after_the_first_wave_and_the_canary_serves_the_old_one(tmp_path, keys, bundles):
    bad = bad_golden_bundle(keys, tmp_path / "bad", "3.0.0")
    with Fleet(tmp_path, keys.public_path, DEVICES) as fleet, fleet.api.client() as api:
        upload(api, bundles["1.0.0"])
        upload(api, bad)
        assert roll_out(api, "digits", "1.0.0", "site=lab")["state"] == "succeeded"
        wait_serving(api, "1.0.0")

        rollout = roll_out(api, "digits", "3.0.0", "site=lab", waves="1,2,3",
                           gates={"max_failure_ratio": 0.0, "soak_s": 1.0})
        assert rollout["state"] == "aborted", rollout
        assert rollout["current_wave"] == 0 and "wave 1: 1/1 devices failed" in rollout["reason"]
        assert "GoldenCheckError" in rollout["reason"]
        states = [(d["device_id"], d["wave"], d["state"]) for d in rollout["devices"]]
        assert states == [("dev-1", 0, "reverted"), ("dev-2", 1, "waiting"), ("dev-3", 2, "waiting")]
        # Wave 2 never started: those devices never got a desired state of the bad model.
        for dev in ("dev-2", "dev-3"):
            assert api.get(f"/v1/devices/{dev}").json()["desired"]["models"]["digits"]["bundle"]["version"] == "1.0.0"
        # The canary gets the old model back as desired state and reports serving it; nobody intervened.
        wait_for(lambda: (d := api.get("/v1/devices/dev-1").json())["reported_revision"] == 3
                 and d["models"]["digits"]["state"] == "serving" and d["models"]["digits"]["version"] == "1.0.0",
                 30, "the canary to report the old model again")
        assert [(r["device"], r["state"], r["version"]) for r in device_table(api)] == [
            (d, "serving", "1.0.0") for d in DEVICES]
        assert {agent_version(a) for a in fleet.agents.values()} == {"1.0.0"}
        assert any(a["action"] == "rollout.auto_abort" for a in api.get("/v1/audit").json())


def test_api_killed_mid_rollout_restarts_and_finishes_it_without_repeating_a_revision(tmp_path, keys, bundles):
    with Fleet(tmp_path, keys.public_path, DEVICES) as fleet, fleet.api.client() as api:
        monitor = DesiredMonitor(fleet.broker.port)
        try:
            upload(api, bundles["2.0.0"])
            r = api.post("/v1/rollouts", json={"model": "digits", "version": "2.0.0", "selector": "site=lab",
                                               "waves": "1,2,3", "gates": {"soak_s": 1.5}})
            assert r.status_code == 201, r.text
            rollout_id = r.json()["id"]
            wait_for(lambda: api.get(f"/v1/rollouts/{rollout_id}").json()["current_wave"] >= 1, 60, "wave 2 to start")
            fleet.api.process.kill()  # SIGKILL: no shutdown, no flush
            fleet.api.start()
            done = wait_for(lambda: (x := api.get(f"/v1/rollouts/{rollout_id}").json())["state"] not in ("running",) and x,
                            60, "the rollout to finish after the restart")
            assert done["state"] == "succeeded", done
            assert [d["state"] for d in done["devices"]] == ["succeeded"] * 3
            wait_serving(api, "2.0.0")
            # Every device heard its revision, and no (device, revision) was delivered twice.
            wait_for(lambda: len({d for d, _ in monitor.live}) == 3, 10, "every desired state seen")
            counts = Counter(monitor.live)
            assert all(n == 1 for n in counts.values()), counts
            assert sorted(counts) == [("dev-1", 1), ("dev-2", 1), ("dev-3", 1)]
        finally:
            monitor.close()

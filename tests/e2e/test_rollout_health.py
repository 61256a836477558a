"""The health gate on real telemetry: a model that answers right but far too slowly stops at its canary.

The new version passes its golden check (same outputs), so only what the device measures while serving gives
it away: agents send telemetry every second, the canary's p95 on the new version is compared with the same
device's p95 on the old one during the soak, and the rollout aborts by itself.
"""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest

from demo.cluster import wait_for
from demo.fleet import Fleet, roll_out, upload, wait_serving
from tests.bundles import slow_digits_bundle

pytestmark = pytest.mark.e2e

DEVICES = {f"dev-{i}": {"site": "lab"} for i in (1, 2, 3)}


class Load:
    """Clients that keep every agent busy with real requests, so the agents have latency to report."""

    def __init__(self, urls: list[str]) -> None:
        self.stop = threading.Event()
        self.sent = 0
        body = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32",
                            "data": np.random.default_rng(0).random(64).tolist()}]}
        self.threads = [threading.Thread(target=self._run, args=(u, body), daemon=True) for u in urls]

    def _run(self, url: str, body: dict) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                client.post(f"{url}/v2/models/digits/infer", json=body)
                self.sent += 1
                self.stop.wait(0.002)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def test_a_slow_model_is_stopped_by_the_p95_gate_after_the_canary(tmp_path, keys, bundles):
    slow = slow_digits_bundle(keys, tmp_path / "slow", "3.0.0")
    env = {"EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "1"}
    with Fleet(tmp_path, keys.public_path, DEVICES, agent_env=env) as fleet, fleet.api.client() as api:
        upload(api, bundles["2.0.0"])
        upload(api, slow)
        assert roll_out(api, "digits", "2.0.0", "site=lab")["state"] == "succeeded"
        with Load([a.url for a in fleet.agents.values()]) as load:
            # the old version's latency on every device: the baseline the gate compares with
            wait_for(lambda: all(api.get(f"/v1/devices/{d}/telemetry").json()["minutes"] for d in DEVICES), 30,
                     "telemetry on 2.0.0 from every device")
            # a soak long enough for several telemetry windows of the new version even on a loaded machine
            gates = {"soak_s": 12, "max_p95_increase_pct": 300, "wave_timeout_s": 90}
            rollout = roll_out(api, "digits", "3.0.0", "site=lab", waves="1,2,100%", gates=gates, timeout=120)
            assert load.sent > 100

        assert rollout["state"] == "aborted", rollout
        assert "p95 latency" in rollout["reason"] and "above the previous version" in rollout["reason"]
        waves = {d["device_id"]: (d["wave"], d["state"]) for d in rollout["devices"]}
        canary = next(d for d, (w, _) in waves.items() if w == 0)
        assert waves[canary][1] == "reverted"
        assert all(state == "waiting" for w, state in waves.values() if w > 0)  # wave 2 never started
        wait_serving(api, "2.0.0")  # the canary serves the old version again, nobody stepped in
        assert httpx.get(f"{fleet.agents[canary].url}/v2/health/ready").json()["models"]["digits"]["version"] == "2.0.0"

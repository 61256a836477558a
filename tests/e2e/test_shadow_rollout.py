"""Shadow-mode rollouts on real parts: mosquitto, the fleet API process, edge-agent processes under live traffic.

A candidate that passes its own golden check but reads digits differently from the live model is caught on the
devices' own inputs: the rollout aborts in shadow with the agreement numbers in its reason, and no request was
ever answered by it. The live fp32 model quantized to int8 agrees, is promoted wave by wave and serves.
"""

from __future__ import annotations

import threading
from typing import Self

import httpx
import numpy as np
import pytest

from demo.cluster import wait_for
from demo.fleet import Fleet, roll_out, upload, wait_serving
from tests.bundles import int8_bundle, permuted_bundle

pytestmark = pytest.mark.e2e

DEVICES = {f"dev-{i}": {"site": "lab"} for i in (1, 2)}
SHADOW = {"sample_rate": 1.0, "cpu_budget": 0.5}
GATES = {"min_shadow_samples": 40, "min_shadow_agreement": 0.95, "wave_timeout_s": 120}


class Traffic:
    """Real digit images sent to every agent on a loop; records which version answered each request."""

    def __init__(self, urls: list[str]) -> None:
        from model_tools.zoo.digits import load_split

        self.images = load_split()[2][:200].astype(np.float32)
        self.urls = urls
        self.versions: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                for url in self.urls:
                    x = self.images[i % len(self.images)]
                    body = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                        "data": x.ravel().tolist()}]}
                    try:
                        r = client.post(f"{url}/v2/models/digits/infer", json=body)
                    except httpx.HTTPError:
                        continue
                    if r.status_code == 200:
                        v = r.json()["model_version"]
                        self.versions[v] = self.versions.get(v, 0) + 1
                i += 1
                self._stop.wait(0.01)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def shadow_rollout(api: httpx.Client, version: str) -> dict:
    r = api.post("/v1/rollouts", json={"model": "digits", "version": version, "selector": "site=lab", "waves": "1,2",
                                       "gates": GATES, "shadow": SHADOW})
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    return wait_for(lambda: (x := api.get(f"/v1/rollouts/{rollout_id}").json())["state"] not in ("running", "pending")
                    and x, 180, f"shadow rollout of {version} to finish", interval=0.3)


def test_a_candidate_that_disagrees_aborts_in_shadow_and_a_sound_one_promotes(tmp_path, keys, bundles):
    bad = permuted_bundle(keys, tmp_path / "bad", "3.0.0")
    sound = int8_bundle(keys, tmp_path / "sound", "2.1.0")  # the live fp32 model quantized to int8
    env = {"EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "1.0"}
    with Fleet(tmp_path, keys.public_path, DEVICES, agent_env=env) as fleet, fleet.api.client() as api:
        for b in (bundles["2.0.0"], bad, sound):
            upload(api, b)
        assert roll_out(api, "digits", "2.0.0", "site=lab")["state"] == "succeeded"
        wait_serving(api, "2.0.0")
        # Shadow mode needs a live model to compare with: a device without one is refused up front.
        with Traffic([a.url for a in fleet.agents.values()]) as traffic:
            aborted = shadow_rollout(api, "3.0.0")
            assert aborted["state"] == "aborted", aborted
            reason = aborted["reason"]
            assert "wave 1 in shadow" in reason and "agreement 0.0" in reason and "min 0.95" in reason, reason
            states = [(d["device_id"], d["state"]) for d in aborted["devices"]]
            assert states == [("dev-1", "reverted"), ("dev-2", "waiting")], states
            assert aborted["devices"][0]["shadow"]["samples"] >= 40
            # The candidate goes away from the desired state; the live bundle never changed.
            wait_for(lambda: "shadow" not in api.get("/v1/devices/dev-1").json()["desired"]["models"]["digits"]
                     or api.get("/v1/devices/dev-1").json()["desired"]["models"]["digits"]["shadow"] is None,
                     30, "the shadow to leave dev-1's desired state")

            promoted = shadow_rollout(api, "2.1.0")
            assert promoted["state"] == "succeeded", promoted
            assert [d["state"] for d in promoted["devices"]] == ["succeeded", "succeeded"]
            assert all(d["shadow"]["agreement"] >= 0.95 and d["shadow"]["samples"] >= 40 for d in promoted["devices"])
            wait_serving(api, "2.1.0")
            wait_for(lambda: traffic.versions.get("2.1.0", 0) > 10, 30, "requests answered by 2.1.0")
        # No request was ever answered by the candidate that failed in shadow.
        assert "3.0.0" not in traffic.versions, traffic.versions
        assert traffic.versions.get("2.0.0", 0) > 50, traffic.versions

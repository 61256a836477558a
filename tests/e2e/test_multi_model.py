"""Issue 10 on real parts — mosquitto, the fleet API process and edge-agent processes: devices configured
entirely through the API with two models (digits and BlazeFace), each rolled out on its own.

- a rollout of a new BlazeFace version and one of digits run on the same devices at the same time, while
  clients keep both models busy: not one request fails;
- a rollout that requires CUDA on this CPU-only machine: that model reports failed with the reason, its
  previous version keeps serving, digits is untouched, and after an agent restart everything still serves;
- the broker killed -9 (no persistence) mid-rollout and an agent restarted while it is down: the agents ask
  for their desired state (hello) when they reconnect, the API answers from its database, the rollout finishes;
- bad input: a model over the device's memory budget, a desired state of an unknown schema.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Self

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from demo.cluster import wait_for
from demo.fleet import Fleet, device_table, roll_out, upload, wait_serving
from fleet_protocol.topics import Topics
from tests.bundles import zoo_bundle

pytestmark = pytest.mark.e2e

DEVICES = {"cam-1": {"site": "plant-3"}, "cam-2": {"site": "plant-3"}}


@pytest.fixture(scope="module")
def blazeface(keys, tmp_path_factory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("blazeface")
    return {v: zoo_bundle("blazeface", keys, out / v, v) for v in ("1.0.0", "1.1.0")}


def configure(api: httpx.Client, bundles, blazeface) -> None:
    """Everything through the API: upload, then assign both models to every device."""
    for path in (bundles["1.0.0"], bundles["2.0.0"], blazeface["1.0.0"], blazeface["1.1.0"]):
        upload(api, path)
    for device in DEVICES:
        r = api.put(f"/v1/devices/{device}/models/digits", json={"version": "1.0.0"})
        assert r.status_code == 200, r.text
        r = api.put(f"/v1/devices/{device}/models/blazeface", json={"version": "1.0.0"})
        assert r.status_code == 200, r.text
    wait_serving(api, "1.0.0", 120, model="digits")
    wait_serving(api, "1.0.0", 120, model="blazeface")


def ready_models(agent) -> dict:
    r = httpx.get(f"{agent.url}/v2/health/ready", timeout=5)
    return r.json()["models"] if r.status_code == 200 else {}


class Load:
    """Clients that keep both models of every agent busy; every answer that is not a 200 is kept."""

    def __init__(self, urls: list[str]) -> None:
        self.stop = threading.Event()
        self.ok: Counter[tuple[str, str]] = Counter()  # (model, version) → answers
        self.failures: list[str] = []
        rng = np.random.default_rng(0)
        self.bodies = {
            "digits": {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": rng.random(64).tolist()}]},
            "blazeface": None,  # filled from the model's own metadata
        }
        self.threads = [threading.Thread(target=self._run, args=(u, m), daemon=True) for u in urls for m in self.bodies]

    def _body(self, client: httpx.Client, url: str, model: str) -> dict:
        if self.bodies[model] is None:
            meta = client.get(f"{url}/v2/models/{model}").json()["inputs"][0]
            shape = [1 if d < 0 else d for d in meta["shape"]]
            data = np.random.default_rng(1).random(int(np.prod(shape))).astype(np.float32)
            self.bodies[model] = {"inputs": [{"name": meta["name"], "shape": shape, "datatype": "FP32", "data": data.tolist()}]}
        return self.bodies[model]

    def _run(self, url: str, model: str) -> None:
        with httpx.Client(timeout=30) as client:
            body = self._body(client, url, model)
            while not self.stop.is_set():
                try:
                    r = client.post(f"{url}/v2/models/{model}/infer", json=body)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{model}: {exc!r}")
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{model}: {r.status_code} {r.text[:200]}")
                else:
                    self.ok[model, r.json()["model_version"]] += 1

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def test_two_rollouts_of_two_models_at_once_under_load_fail_no_request(tmp_path, keys, bundles, blazeface):
    with Fleet(tmp_path, keys.public_path, DEVICES) as fleet, fleet.api.client() as api:
        configure(api, bundles, blazeface)
        with Load([a.url for a in fleet.agents.values()]) as load:
            wait_for(lambda: load.ok["digits", "1.0.0"] > 20 and load.ok["blazeface", "1.0.0"] > 5, 60, "load on both models")
            ids = []
            for model, version in (("blazeface", "1.1.0"), ("digits", "2.0.0")):  # two rollouts, both running at once
                r = api.post("/v1/rollouts", json={"model": model, "version": version, "selector": "site=plant-3"})
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])
            done = [wait_for(lambda i=i: (x := api.get(f"/v1/rollouts/{i}").json())["state"] not in ("pending", "running") and x,
                             180, f"rollout {i}") for i in ids]
            assert [d["state"] for d in done] == ["succeeded", "succeeded"], done
            wait_for(lambda: load.ok["digits", "2.0.0"] > 20 and load.ok["blazeface", "1.1.0"] > 5, 60, "load on the new versions")
        assert load.failures == []
        for agent in fleet.agents.values():
            assert {n: m["version"] for n, m in ready_models(agent).items()} == {"blazeface": "1.1.0", "digits": "2.0.0"}
        assert {(r["device"], r["model"], r["state"], r["version"]) for r in device_table(api, None)} == {
            (d, m, "serving", v) for d in DEVICES for m, v in (("blazeface", "1.1.0"), ("digits", "2.0.0"))}


def test_required_cuda_fails_that_model_only_and_a_restart_still_serves_everything(tmp_path, keys, bundles, blazeface):
    with Fleet(tmp_path, keys.public_path, DEVICES) as fleet, fleet.api.client() as api:
        configure(api, bundles, blazeface)
        digits_before = {d: (r["version"], r["state"]) for d, r in ((r["device"], r) for r in device_table(api, "digits"))}
        rollout = roll_out(api, "blazeface", "1.1.0", "site=plant-3", waves="1,100%",
                           gates={"max_failure_ratio": 0.0}, timeout=120, runtime={"require_provider": "CUDAExecutionProvider"})
        assert rollout["state"] == "aborted", rollout
        assert "CUDAExecutionProvider is required" in rollout["reason"], rollout["reason"]
        # The failed model's previous version serves; the other model was never touched.
        wait_serving(api, "1.0.0", 60, model="blazeface")
        assert {r["device"]: (r["version"], r["state"]) for r in device_table(api, "digits")} == digits_before
        for agent in fleet.agents.values():
            assert {n: m["version"] for n, m in ready_models(agent).items()} == {"blazeface": "1.0.0", "digits": "1.0.0"}
            agent.stop()
            agent.start()
            wait_for(lambda a=agent: ready_models(a).keys() == {"blazeface", "digits"}, 60, "both models after the restart")
            assert all(m["provider"] == "CPUExecutionProvider" for m in ready_models(agent).values())


def test_broker_killed_mid_rollout_and_an_agent_restarted_meanwhile_the_rollout_finishes(tmp_path, keys, bundles, blazeface):
    env = {"EDGEFLEET_API_CHUNK_SIZE": "16384"}  # many chunks: the kill lands mid-download
    with Fleet(tmp_path, keys.public_path, DEVICES) as fleet, fleet.api.client() as api:
        fleet.api.env.update(env)
        fleet.api.stop()
        fleet.api.start()
        configure(api, bundles, blazeface)
        r = api.post("/v1/rollouts", json={"model": "blazeface", "version": "1.1.0", "selector": "site=plant-3"})
        assert r.status_code == 201, r.text
        rollout_id = r.json()["id"]
        wait_for(lambda: any((d["models"].get("blazeface") or {}).get("desired_version") == "1.1.0"
                             for d in api.get("/v1/devices").json()), 60, "a device working on the rollout")
        fleet.broker.process.kill()  # SIGKILL, and no persistence: every retained message is gone
        agent = fleet.agents["cam-2"]
        agent.stop()
        agent.start()  # restarted while the broker is down: it serves from disk and must ask for its desired state
        fleet.broker.start()
        done = wait_for(lambda: (x := api.get(f"/v1/rollouts/{rollout_id}").json())["state"] not in ("pending", "running") and x,
                        180, "the rollout to finish after the broker came back")
        assert done["state"] == "succeeded", done
        wait_serving(api, "1.1.0", 60, model="blazeface")
        for a in fleet.agents.values():
            assert ready_models(a)["blazeface"]["version"] == "1.1.0" and ready_models(a)["digits"]["version"] == "1.0.0"


def test_over_the_memory_budget_and_an_unknown_schema_are_reported_and_disturb_nothing(tmp_path, keys, bundles, blazeface):
    with Fleet(tmp_path, keys.public_path, {"cam-1": {"site": "plant-3"}}) as fleet, fleet.api.client() as api:
        for path in (bundles["1.0.0"], blazeface["1.0.0"]):
            upload(api, path)
        assert api.put("/v1/devices/cam-1/models/digits", json={"version": "1.0.0"}).status_code == 200
        wait_serving(api, "1.0.0", 60, model="digits")
        r = api.put("/v1/devices/cam-1/config", json={"memory_budget_mb": 12})
        assert r.status_code == 200, r.text
        assert api.put("/v1/devices/cam-1/models/blazeface", json={"version": "1.0.0"}).status_code == 200
        failed = wait_for(lambda: (m := api.get("/v1/devices/cam-1").json()["models"].get("blazeface")) and m["state"] == "failed" and m,
                          60, "blazeface refused for memory")
        assert "MemoryBudgetError" in failed["error"] and "12 MiB memory budget" in failed["error"]
        agent = fleet.agents["cam-1"]
        assert set(ready_models(agent)) == {"digits"}
        assert "Traceback" not in agent.process.tail(300)

        # A desired state of a schema this agent does not know: refused as a whole, said so, nothing changes.
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.connect("127.0.0.1", fleet.broker.port)
        c.loop_start()
        try:
            c.publish(Topics().desired("cam-1"), b'{"schema": 3, "revision": 999, "models": {}}', qos=1).wait_for_publish(5)
        finally:
            c.loop_stop()
            c.disconnect()
        device = wait_for(lambda: (d := api.get("/v1/devices/cam-1").json())["error"] and d, 30, "the refusal reported")
        assert "unknown schema 3" in device["error"]
        assert set(ready_models(agent)) == {"digits"} and ready_models(agent)["digits"]["version"] == "1.0.0"

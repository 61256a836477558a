"""The whole demo path on real parts: bundle → fleet API → mosquitto → two agent processes → inference.

Then the agents restart with no broker at all and still serve the last good model from disk.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from demo.cluster import wait_for
from demo.fleet import Fleet, device_table, infer_digit, roll_out, upload, wait_serving
from model_tools.zoo.digits import load_split

pytestmark = pytest.mark.e2e


def test_bundle_to_inference_on_two_agents(tmp_path, keys, bundles):
    devices = {"dev-a": {"site": "lab", "hw": "cpu"}, "dev-b": {"site": "lab", "hw": "cpu"}}
    _, _, x_test, y_test = load_split()
    with Fleet(tmp_path, keys.public_path, devices) as fleet, fleet.api.client() as api:
        for version, path in bundles.items():
            assert upload(api, path)["version"] == version

        first = roll_out(api, "digits", "1.0.0", "site=lab")
        assert first["state"] == "succeeded", first
        assert {d["state"] for d in first["devices"]} == {"succeeded"}

        second = roll_out(api, "digits", "2.0.0", "site=lab", waves="1,100%")
        assert second["state"] == "succeeded", second
        assert [d["wave"] for d in second["devices"]] == [0, 1]

        rows = device_table(api)
        assert [(r["device"], r["state"], r["version"], r["provider"]) for r in rows] == [
            ("dev-a", "serving", "2.0.0", "CPUExecutionProvider"),
            ("dev-b", "serving", "2.0.0", "CPUExecutionProvider"),
        ]
        correct = 0
        for agent in fleet.agents.values():
            for i in range(20):
                digit, _ = infer_digit(agent.url, "digits", x_test[i])
                correct += digit == y_test[i]
        assert correct >= 36  # v2 is a 98 % model; v1 would not get here reliably

        # Offline autonomy: no broker, agents restarted, the model on disk is served.
        fleet.broker.stop()
        for agent in fleet.agents.values():
            agent.stop()
            agent.start()
            wait_for(lambda a=agent: httpx.get(f"{a.url}/v2/health/ready", timeout=1).status_code == 200, 20, "ready offline")
            assert httpx.get(f"{agent.url}/v2/health/ready").json()["models"]["digits"]["version"] == "2.0.0"
            digit, _ = infer_digit(agent.url, "digits", x_test[0])
            assert digit == y_test[0]


def test_device_resumes_after_restart_midway_and_rollout_survives_api_restart(tmp_path, keys, bundles):
    """An agent killed mid-download and an API restarted mid-rollout: the rollout still completes."""
    devices = {"dev-c": {"site": "lab"}}
    with Fleet(tmp_path, keys.public_path, devices) as fleet, fleet.api.client() as api:
        upload(api, bundles["2.0.0"])
        agent = fleet.agents["dev-c"]
        agent.kill()
        fleet.api.stop()
        fleet.api.start()
        r = api.post("/v1/rollouts", json={"model": "digits", "version": "2.0.0", "selector": "site=lab"})
        assert r.status_code == 201, r.text
        fleet.api.stop()  # the desired state is retained by the broker and in the database
        agent.start()
        fleet.api.start()
        rollout = wait_for(lambda: (x := api.get(f"/v1/rollouts/{r.json()['id']}").json())["state"] == "succeeded" and x,
                           60, "the rollout to finish after restarts")
        assert rollout["devices"][0]["state"] == "succeeded"
        wait_serving(api, "2.0.0")
        assert np.isfinite(infer_digit(agent.url, "digits", load_split()[2][0])[1])


def test_make_demo_once_prints_every_device_on_v2_after_the_bad_v3_was_stopped(tmp_path):
    """`make demo ARGS=--once` itself (as `python -m demo`), so the command a new user runs cannot rot."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "demo", "--once", "--json", "--work-dir", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout)
    assert [(r["device"], r["state"], r["version"]) for r in rows] == [
        ("cam-01", "serving", "2.0.0"), ("cam-02", "serving", "2.0.0"), ("cam-03", "serving", "2.0.0")]
    assert sum(r["prediction"] == r["label"] for r in rows) >= 2
    # Each device also serves BlazeFace and runs a camera with it, all set through the API.
    assert [(r["blazeface"], r["camera"]) for r in rows] == [("1.0.0 serving", "blazeface running")] * 3
    assert all(r["frames"] > 0 for r in rows)
    assert "3.0.0: aborted" in out.stderr and "GoldenCheckError" in out.stderr
    assert processes_mentioning(str(tmp_path / "demo")) == []  # every process it started is gone


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line or environment names `text` (the broker's config, the agents' data dirs)."""
    import os
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if text.encode() in (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found

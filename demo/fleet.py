"""The demo's steps as functions: build and sign bundles, start the fleet, roll out, ask every device."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from .cluster import Broker, EdgeAgent, FleetApi, wait_for


def model_tools(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "model_tools.cli", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"model-tools {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def build_digits_bundles(work: Path) -> tuple[Path, list[Path]]:
    """A signing key, two real versions of the digits CNN, 1.0.0 (1 epoch) and 2.0.0 (20 epochs), and a bad 3.0.0."""
    from model_tools.zoo import prepare

    key = work / "signing"
    model_tools("keygen", "--out", str(key))
    bundles = []
    for version, epochs in (("1.0.0", 1), ("2.0.0", 20)):
        zoo = prepare("digits", variant=f"e{epochs}", epochs=epochs)
        model_tools(
            "bundle", str(zoo.onnx), "--name", "digits", "--version", version, "--golden", str(zoo.golden_inputs),
            "--key", f"{key}.pem", "--out", str(work / "bundles"), "--task", "classification",
        )
        bundles.append(work / "bundles" / f"digits-{version}.bundle")
    bundles.append(build_mixed_up_bundle(work, key))
    return Path(f"{key}.pub.pem"), bundles


def build_mixed_up_bundle(work: Path, key: Path, version: str = "3.0.0") -> Path:
    """A release gone wrong: properly signed, but its golden outputs were recorded from another training run
    (1 epoch) than the weights it ships (20 epochs). Every device's golden check catches it."""
    from fleet_protocol.bundle import GOLDEN, MODEL, read_bundle, write_bundle
    from fleet_protocol.signing import load_private_key, load_public_key
    from model_tools import golden
    from model_tools.zoo import prepare

    shipped, recorded = prepare("digits", variant="e20", epochs=20), prepare("digits", variant="e1", epochs=1)
    inputs = golden.load_inputs(recorded.golden_inputs, ["image"])
    wrong_outputs = golden.compute(recorded.onnx.read_bytes(), inputs)
    good = work / "bundles" / "digits-2.0.0.bundle"
    manifest = read_bundle(good, [load_public_key(Path(f"{key}.pub.pem").read_bytes())]).manifest
    manifest = manifest.model_copy(update={"version": version})
    out = work / "bundles" / f"digits-{version}.bundle"
    write_bundle(out, manifest, {MODEL: shipped.onnx.read_bytes(), GOLDEN: golden.to_npz(inputs, wrong_outputs)},
                 load_private_key(Path(f"{key}.pem").read_bytes()))
    return out


def upload(api: httpx.Client, bundle: Path) -> dict:
    r = api.post("/v1/models", content=bundle.read_bytes(), headers={"content-type": "application/octet-stream"})
    r.raise_for_status()
    return r.json()


def roll_out(api: httpx.Client, model: str, version: str, selector: str = "", waves: str = "100%",
             gates: dict | None = None, timeout: float = 120, runtime: dict | None = None) -> dict:
    body = {"model": model, "version": version, "selector": selector, "waves": waves, "gates": gates or {}}
    if runtime is not None:
        body["runtime"] = runtime
    r = api.post("/v1/rollouts", json=body)
    r.raise_for_status()
    rollout_id = r.json()["id"]
    return wait_for(lambda: _finished(api, rollout_id), timeout, f"rollout {rollout_id} of {model} {version}", interval=0.2)


def _finished(api: httpx.Client, rollout_id: int) -> dict | None:
    rollout = api.get(f"/v1/rollouts/{rollout_id}").json()
    return rollout if rollout["state"] not in ("pending", "running", "paused") else None


def infer_digit(agent_url: str, model: str, image: np.ndarray) -> tuple[int, float]:
    """One KServe v2 request with a JSON tensor; → (predicted digit, probability)."""
    body = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": image.ravel().tolist()}]}
    r = httpx.post(f"{agent_url}/v2/models/{model}/infer", json=body, timeout=10)
    r.raise_for_status()
    probs = np.asarray(r.json()["outputs"][0]["data"])
    return int(probs.argmax()), float(probs.max())


class Fleet:
    """Broker + fleet API + N agents under one folder; a context manager that stops all of them."""

    def __init__(self, work: Path, trusted_key: Path, devices: dict[str, dict[str, str]],
                 agent_env: dict[str, str] | None = None) -> None:
        self.work = work
        self.broker = Broker(work / "broker")
        self.api = FleetApi(work / "api", self.broker.url, trusted_key)
        self.devices = devices
        self.agents = {d: EdgeAgent(work / "devices" / d, d, self.broker.url, trusted_key, env=agent_env) for d in devices}

    def start(self) -> Fleet:
        self.broker.start()
        self.api.start()
        with self.api.client() as api:
            for device_id, labels in self.devices.items():
                api.post("/v1/devices", json={"id": device_id, "labels": labels}).raise_for_status()
        for agent in self.agents.values():
            agent.start()
        with self.api.client() as api:
            wait_for(lambda: all(d["online"] for d in api.get("/v1/devices").json()), 30, "every device online")
        return self

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.api.stop()
        self.broker.stop()

    def __enter__(self) -> Fleet:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


def device_table(api: httpx.Client, model: str | None = "digits") -> list[dict]:
    """One row per device and model it reports (`model`: only that one; None: every model)."""
    rows = []
    for d in api.get("/v1/devices").json():
        models = d.get("models") or {}
        names = sorted(models) if model is None else [model]
        for name in names:
            m = models.get(name) or {}
            rows.append({
                "device": d["id"], "online": d["online"], "model": name, "state": m.get("state"),
                "version": m.get("version"), "provider": m.get("provider"), "error": m.get("error"),
            })
    return rows


def wait_serving(api: httpx.Client, version: str, timeout: float = 60, model: str = "digits") -> None:
    wait_for(lambda: all(r["state"] == "serving" and r["version"] == version for r in device_table(api, model)), timeout,
             f"every device serving {model} {version}")


# --- the second model and the camera: BlazeFace, and a camera pipeline that uses it -------------------------

CAMERA = "door"


def build_blazeface_bundle(work: Path, key: Path, version: str = "1.0.0") -> Path:
    """BlazeFace packed with the plain `model-tools bundle` command: task, labels and preprocessing are all the
    camera needs (its decoder's anchors default to MediaPipe's short-range model)."""
    import json

    from model_tools.zoo import prepare

    zoo = prepare("blazeface")
    labels = work / "blazeface-labels.txt"
    labels.write_text("\n".join(zoo.labels) + "\n")
    model_tools("bundle", str(zoo.onnx), "--name", "blazeface", "--version", version, "--golden", str(zoo.golden_inputs),
                "--key", f"{key}.pem", "--out", str(work / "bundles"), "--task", "detection", "--labels", str(labels),
                "--preprocessing", json.dumps(zoo.preprocessing))
    return work / "bundles" / f"blazeface-{version}.bundle"


def camera_profile(video: Path, selector: str) -> dict:
    """A profile: every device matching `selector` runs a camera on `video` with BlazeFace as its detector."""
    return {"selector": selector, "cameras": [{
        "name": CAMERA, "source": {"type": "file", "path": str(video), "loop": True}, "detector": "blazeface",
        "fps": 5, "events": {"min_score": 0.6, "max_per_s": 1}}]}


def set_up_cameras(api: httpx.Client, video: Path, selector: str, timeout: float = 90) -> None:
    """The camera profile through the API, then wait until every device reports its camera running."""
    api.put("/v1/profiles/door-cameras", json=camera_profile(video, selector)).raise_for_status()
    wait_for(lambda: all((d.get("cameras") or {}).get(CAMERA, {}).get("state") == "running" for d in api.get("/v1/devices").json()),
             timeout, f"camera {CAMERA!r} running on every device")


def camera_stats(agent_url: str) -> dict:
    """The camera's numbers from the device's own page (/camera/stats)."""
    r = httpx.get(f"{agent_url}/camera/stats", timeout=5)
    r.raise_for_status()
    return next((s for s in r.json() if s["name"] == CAMERA), {})

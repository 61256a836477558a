"""Fleet scale: 1,000 simulated devices against the real fleet API process and a real mosquitto.

Each simulated device is a lightweight MQTT client speaking the real protocol (desired → fetch → chunks →
reported serving; telemetry; hello on connect; schema 2), many per process on one selector loop, no ONNX. Reports:
  - the time of a 4-wave rollout (1, 10 %, 50 %, 100 %) of a 5 MB model to every device,
  - the API's artifact bytes published per device (coalescing: about model size / devices in a wave),
  - the telemetry messages per second the API ingests, and its CPU use meanwhile.

    python benchmarks/fleet_scale.py [--devices 1000] [--model-mb 5] [--workers 2] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import selectors
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt  # noqa: E402
import psutil  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from demo.cluster import Broker, FleetApi, wait_for  # noqa: E402
from fleet_protocol.bundle import write_bundle  # noqa: E402
from fleet_protocol.manifest import Manifest  # noqa: E402
from fleet_protocol.signing import generate_keypair, load_private_key  # noqa: E402
from fleet_protocol.topics import Topics  # noqa: E402

TOPICS = Topics()


def _ref(bundle: dict | None) -> dict | None:
    return {"name": bundle["name"], "version": bundle["version"], "sha256": bundle["sha256"]} if bundle else None


class SimDevice:
    def __init__(self, device_id: str, port: int) -> None:
        self.id = device_id
        self.revision = 0
        self.serving: dict | None = None
        self.want: dict | None = None
        self.have: set[int] = set()
        self.last_chunk = 0.0
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"device-{device_id}", protocol=mqtt.MQTTv5)
        self.c.max_inflight_messages_set(50)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=120)

    def _report(self, state: str | None) -> None:
        """Schema 2: one entry per model (the benchmark's devices hold at most the one model, `bench`)."""
        models = {}
        if state is not None:
            wanted = self.want or self.serving
            entry = {"state": state, "desired": _ref(wanted), "serving": self.serving,
                     "golden_passed": True if state == "serving" else None}
            models[wanted["name"]] = entry
        body = {"schema": 2, "revision": self.revision, "models": models}
        self.c.publish(TOPICS.reported(self.id), json.dumps(body), qos=1, retain=True)

    def _on_connect(self, c, _u, _f, rc, _p) -> None:
        c.subscribe(TOPICS.desired(self.id), qos=1)
        c.publish(TOPICS.status(self.id), b'{"online": true}', qos=1, retain=True)
        c.publish(TOPICS.hello(self.id), json.dumps({"schema": 2, "revision": self.revision}), qos=1)
        self._report("serving" if self.serving else None)

    def _fetch(self, missing: list[int]) -> None:
        w = self.want
        self.c.publish(TOPICS.fetch(self.id), json.dumps({"sha256": w["sha256"], "chunk_size": w["chunk_size"], "missing": missing}), qos=1)
        self.last_chunk = time.monotonic()

    def _on_message(self, c, _u, msg) -> None:
        if msg.topic.endswith("/desired"):
            if not msg.payload:
                return
            d = json.loads(msg.payload)
            if d["revision"] < self.revision:
                return
            self.revision = d["revision"]
            model = ((d.get("models") or {}).get("bench") or {}).get("bundle")
            if not model or (self.serving and self.serving["sha256"] == model["sha256"]) or (
                    self.want and self.want["sha256"] == model["sha256"]):
                self._report(("serving" if self.serving else None) if not self.want else "downloading")
                return  # a revision already applied or in progress: acknowledged, never restarted
            self.want, self.have = model, set()
            c.subscribe(TOPICS.artifact_chunks(model["sha256"]), qos=1)
            self._report("downloading")
            self._fetch(list(range(-(-model["size"] // model["chunk_size"]))))
            return
        if self.want is None:
            return
        _, index = TOPICS.parse_artifact_chunk(msg.topic)
        self.have.add(index)
        self.last_chunk = time.monotonic()
        if len(self.have) == -(-self.want["size"] // self.want["chunk_size"]):
            w, self.want = self.want, None
            c.unsubscribe(TOPICS.artifact_chunks(w["sha256"]))
            self.serving = _ref(w)
            self._report("serving")

    def retry(self) -> None:
        if self.want and time.monotonic() - self.last_chunk > 3.0:
            count = -(-self.want["size"] // self.want["chunk_size"])
            self._fetch([i for i in range(count) if i not in self.have])

    def telemetry(self) -> None:
        models = {}
        if self.serving:
            models[self.serving["name"]] = {"version": self.serving["version"], "requests": 50, "errors": 0,
                                            "latency_ms_p50": 1.0, "latency_ms_p95": 2.0, "latency_ms_p99": 3.0}
        body = {"schema": 2, "window_s": 1.0, "models": models, "ts": time.time()}
        self.c.publish(TOPICS.telemetry(self.id), json.dumps(body), qos=0)


def worker(ids: list[str], port: int, commands, results) -> None:
    """Many devices on one selector loop (paho's external-loop API): no thread per device."""
    devices = [SimDevice(i, port) for i in ids]
    sel = selectors.DefaultSelector()
    by_sock = {}
    for d in devices:
        sock = d.c.socket()
        sel.register(sock, selectors.EVENT_READ, d)
        by_sock[sock] = d
    results.put(("ready", len(devices)))
    last_misc = 0.0
    telemetry_until, telemetry_rate, sent = 0.0, 0.0, 0
    t0 = 0.0
    while True:
        for key, _ in sel.select(timeout=0.01):
            key.data.c.loop_read()
        now = time.monotonic()
        for d in devices:
            if d.c.want_write():
                d.c.loop_write()
        if now - last_misc > 0.5:
            last_misc = now
            for d in devices:
                d.c.loop_misc()
                d.retry()
            while not commands.empty():
                cmd = commands.get()
                if cmd[0] == "stop":
                    for d in devices:
                        d.c.disconnect()
                    return
                if cmd[0] == "telemetry":
                    telemetry_rate, telemetry_until, t0, sent = cmd[1], now + cmd[2], now, 0
        if telemetry_until:
            if now >= telemetry_until:
                results.put(("telemetry_sent", sent))
                telemetry_until = 0.0
            else:
                due = int((now - t0) * telemetry_rate) - sent
                for k in range(max(0, due)):
                    devices[(sent + k) % len(devices)].telemetry()
                sent += max(0, due)


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def make_bundle(folder: Path, version: str, size: int, key) -> Path:
    manifest = Manifest(name="bench", version=version, task="other",
                        inputs=[{"name": "x", "dtype": "float32", "shape": [1]}], outputs=[{"name": "y", "dtype": "float32", "shape": [1]}],
                        files={})
    path = folder / f"bench-{version}.bundle"
    write_bundle(path, manifest, {"model.onnx": os.urandom(size)}, key)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--model-mb", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--waves", default="1,10%,50%,100%")
    p.add_argument("--telemetry-rate", type=float, default=10000.0, help="offered telemetry messages per second, fleet-wide")
    p.add_argument("--telemetry-s", type=float, default=10.0)
    p.add_argument("--database-url", default=None, help="default: a SQLite file")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    private, public = generate_keypair()
    (work / "key.pub.pem").write_bytes(public)
    key = load_private_key(private)
    bundle = make_bundle(work, "2.0.0", int(args.model_mb * 1024 * 1024), key)
    broker = Broker(work / "broker", extra_config="max_queued_messages 100000\n").start()
    api = FleetApi(work / "api", broker.url, work / "key.pub.pem", database_url=args.database_url,
                   env={"EDGEFLEET_API_TICK_INTERVAL_S": "0.5", "EDGEFLEET_API_LOG_LEVEL": "warning"}).start()
    procs = []
    try:
        client = api.client()
        client.post("/v1/models", content=bundle.read_bytes()).raise_for_status()
        ids = [f"sim-{i:05d}" for i in range(args.devices)]
        t = time.monotonic()
        for i in ids:
            client.post("/v1/devices", json={"id": i, "labels": {"fleet": "bench"}}).raise_for_status()
        print(f"registered {args.devices} devices in {time.monotonic() - t:.1f}s", file=sys.stderr)
        results = mp.Queue()
        commands = []
        for w in range(args.workers):
            q = mp.Queue()
            proc = mp.Process(target=worker, args=(ids[w::args.workers], broker.port, q, results), daemon=True)
            proc.start()
            procs.append(proc)
            commands.append(q)
        for _ in procs:
            assert results.get(timeout=60)[0] == "ready"
        wait_for(lambda: sum(d["online"] for d in client.get("/v1/devices").json()) == args.devices, 60, "every device online")

        before = client.get("/metrics").text
        t = time.monotonic()
        r = client.post("/v1/rollouts", json={"model": "bench", "version": "2.0.0", "selector": "fleet=bench", "waves": args.waves,
                                              "gates": {"wave_timeout_s": 600}})
        r.raise_for_status()
        rid = r.json()["id"]
        waves = r.json()["waves"]
        done = wait_for(lambda: (x := client.get(f"/v1/rollouts/{rid}").json())["state"] != "running" and x, 900,
                        "the rollout", interval=0.5)
        rollout_s = time.monotonic() - t
        after = client.get("/metrics").text
        chunk_bytes = metric(after, "edgefleet_api_chunk_bytes_sent_total") - metric(before, "edgefleet_api_chunk_bytes_sent_total")
        size = bundle.stat().st_size

        api_proc = psutil.Process(api.process.proc.pid)
        n0, cpu0, t0 = metric(after, "edgefleet_api_telemetry_messages_total"), api_proc.cpu_times(), time.monotonic()
        for q in commands:
            q.put(("telemetry", args.telemetry_rate / args.workers, args.telemetry_s))
        offered = sum(results.get(timeout=args.telemetry_s + 60)[1] for _ in procs)
        # Until the API has drained what is queued: the rate is over the time it took to ingest all of it.
        n1, cpu1, t1 = n0, cpu0, t0
        while True:
            n = metric(client.get("/metrics").text, "edgefleet_api_telemetry_messages_total")
            if n == n1 and n > n0:
                break
            n1, cpu1, t1 = n, api_proc.cpu_times(), time.monotonic()
            time.sleep(0.25)
        cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0) * 100

        sizes = [b - a for a, b in zip([0] + waves, waves)]
        print(f"\nfleet scale: {args.devices} simulated devices, {args.workers} device processes, 2 vCPU box shared by all")
        print(f"{'rollout':<44} {done['state']}, waves {sizes}")
        print(f"{'  time for the whole rollout':<44} {rollout_s:.1f} s")
        print(f"{'  model (bundle) size':<44} {size / 1e6:.2f} MB")
        print(f"{'  API artifact bytes published, total':<44} {chunk_bytes / 1e6:.2f} MB ({chunk_bytes / size:.2f} copies of the model)")
        print(f"{'  API artifact bytes per device':<44} {chunk_bytes / args.devices / 1e3:.1f} kB "
              f"(per-device copies would be {size / 1e3:.0f} kB; one copy per wave = {size * len(waves) / args.devices / 1e3:.1f} kB)")
        print(f"{'telemetry offered':<44} {offered / args.telemetry_s:,.0f} msg/s for {args.telemetry_s:.0f} s")
        print(f"{'  ingested by the API':<44} {(n1 - n0) / (t1 - t0):,.0f} msg/s ({n1 - n0:,.0f} of {offered:,})")
        print(f"{'  API CPU meanwhile':<44} {cpu:.0f} % of one core")
        print(f"database: {args.database_url or 'SQLite file'}")
        return 0 if done["state"] == "succeeded" else 1
    finally:
        for q in commands if procs else []:
            q.put(("stop",))
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        api.stop()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())

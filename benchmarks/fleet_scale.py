"""Fleet scale: simulated devices on 4 site brokers bridged to a central one, the real fleet API on PostgreSQL.

Each simulated device is a lightweight MQTT client speaking the real v2 protocol (status, hello, desired →
fetch → chunks → reported serving with its golden check passed; telemetry), many per process on one selector
loop, no ONNX. Devices are spread over 4 site brokers (mosquitto, bridged to the central one with mosquitto's
own bridge, as in demo.cluster.SiteBroker); each site's link to the centre is a counting TCP proxy. For each
device count it measures a 4-wave rollout (1, 10 %, 50 %, 100 %) of a 5 MB bundle:
  - the time to finish, the bytes that crossed each central → site link, and the copies of the bundle per wave
    per link (chunk messages that reached the site broker live, per chunk of the bundle, per wave),
  - the API's and the brokers' CPU, meanwhile and under telemetry at one message per device every 10 s,
  - telemetry ingested by the API over MQTT.
and, once, the ingest capacity of one API process's telemetry path on PostgreSQL (parse + per-minute rollup +
batched write, no MQTT network loop). It prints one table, one column per device count.

    python benchmarks/fleet_scale.py [--devices 1000,3000,10000] [--quick] [--workers 2]
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
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from demo.cluster import Broker, FleetApi, LinkProxy, Postgres, SiteBroker, wait_for
from fleet_protocol.broker import DEVICE_RECEIVE_MAXIMUM
from fleet_protocol.bundle import write_bundle
from fleet_protocol.manifest import Manifest
from fleet_protocol.signing import generate_keypair, load_private_key
from fleet_protocol.topics import Topics

TOPICS = Topics()
SITES = 4
MODEL = "bench"


RETRY_S, RETRY_MAX_S = 5.0, 60.0  # a simulated device's first wait for chunks, and its cap as waits double


class SimDevice:
    def __init__(self, device_id: str, port: int) -> None:
        self.id = device_id
        self.revision = 0
        self.serving: dict | None = None
        self.want: dict | None = None
        self.rollout_id: int | None = None
        self.have: set[int] = set()
        self.last_chunk = 0.0
        # The agent's policy (edge_agent/reconcile.py _fetch): a quiet round first re-subscribes (the site
        # broker's retained chunks come again), asks the fleet only if that brought nothing new; each round
        # without a new chunk doubles the wait.
        self.wait = RETRY_S
        self.ask_next = False  # after the first ask: re-subscribe
        self.new = False  # a new chunk since the last re-subscription or ask
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"device-{device_id}", protocol=mqtt.MQTTv5)
        self.c.max_inflight_messages_set(50)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        connect = Properties(PacketTypes.CONNECT)
        connect.ReceiveMaximum = DEVICE_RECEIVE_MAXIMUM  # as the agent sends it
        self.c.connect("127.0.0.1", port, keepalive=120, properties=connect)

    def _report(self, state: str) -> None:
        entry = {"state": state, "serving": self.serving, "rollout_id": self.rollout_id}
        if self.want or self.serving:
            w = self.want or self.serving
            entry["desired"] = {"name": w["name"], "version": w["version"], "sha256": w["sha256"]}
        if state == "serving":
            entry["golden_passed"] = True
        body = {"schema": 2, "revision": self.revision, "models": {MODEL: entry} if (self.want or self.serving) else {}}
        self.c.publish(TOPICS.reported(self.id), json.dumps(body), qos=1, retain=True)

    def _on_connect(self, c, _u, _f, _rc, _p) -> None:
        c.subscribe(TOPICS.desired(self.id), qos=1)
        c.publish(TOPICS.status(self.id), b'{"online": true}', qos=1, retain=True)
        c.publish(TOPICS.hello(self.id), json.dumps({"schema": 2, "revision": self.revision}), qos=1)
        self._report("serving" if self.serving else "pending")

    def _fetch(self, missing: list[int]) -> None:
        w = self.want
        self.c.publish(TOPICS.fetch(self.id), json.dumps({"sha256": w["sha256"], "chunk_size": w["chunk_size"], "missing": missing}), qos=1)
        self.last_chunk = time.monotonic()
        self.new = False

    def _count(self) -> int:
        return -(-self.want["size"] // self.want["chunk_size"])

    def _on_message(self, c, _u, msg) -> None:
        if msg.topic.endswith("/desired"):
            if not msg.payload:
                return
            d = json.loads(msg.payload)
            if d["revision"] <= self.revision and self.revision:
                return
            self.revision = d["revision"]
            spec = (d.get("models") or {}).get(MODEL)
            if not spec:
                return
            bundle, self.rollout_id = spec["bundle"], spec.get("rollout_id")
            if self.serving and self.serving["sha256"] == bundle["sha256"]:
                self._report("serving")
                return
            self.want, self.have = bundle, set()
            self.wait, self.ask_next = RETRY_S, False
            c.subscribe(TOPICS.artifact_chunks(bundle["sha256"]), qos=1)
            self._report("downloading")
            self._fetch(list(range(self._count())))
            return
        if self.want is None:
            return
        sha, index = TOPICS.parse_artifact_chunk(msg.topic)
        if sha != self.want["sha256"]:
            return
        if index not in self.have:
            self.have.add(index)
            self.new = True
        self.last_chunk = time.monotonic()  # duplicates too: a re-subscription's replay is still coming
        if len(self.have) == self._count():
            w, self.want = self.want, None
            c.unsubscribe(TOPICS.artifact_chunks(w["sha256"]))
            self.serving = {"name": w["name"], "version": w["version"], "sha256": w["sha256"]}
            self._report("serving")

    def retry(self) -> None:
        if not self.want or time.monotonic() - self.last_chunk <= self.wait:
            return
        new, ask = self.new, self.ask_next
        if ask:
            self._fetch([i for i in range(self._count()) if i not in self.have])
        else:
            self.c.subscribe(TOPICS.artifact_chunks(self.want["sha256"]), qos=1)
            self.last_chunk, self.new = time.monotonic(), False
        self.ask_next = not ask and not new
        self.wait = RETRY_S if new else min(self.wait * 2, RETRY_MAX_S)

    def telemetry(self) -> None:
        models = {}
        if self.serving:
            models[MODEL] = {"version": self.serving["version"], "provider": "CPUExecutionProvider", "requests": 50,
                             "errors": 0, "latency_ms_p50": 1.0, "latency_ms_p95": 2.0, "latency_ms_p99": 3.0}
        body = {"schema": 2, "window_s": 10.0, "models": models, "health": {"cpu_percent": 12.0, "agent_rss_mb": 80.0},
                "ts": time.time()}
        self.c.publish(TOPICS.telemetry(self.id), json.dumps(body), qos=0)


def worker(devices_ports: list[tuple[str, int]], commands, results) -> None:
    """Many devices on one selector loop (paho's external-loop API): no thread per device. Telemetry: one
    message per device every `period` seconds, spread evenly."""
    devices = []
    for i, (d, port) in enumerate(devices_ports):
        devices.append(SimDevice(d, port))
        if i % 200 == 199:
            for x in devices:
                x.c.loop_write()
                x.c.loop_read()
    sel = selectors.DefaultSelector()
    for d in devices:
        sel.register(d.c.socket(), selectors.EVENT_READ, d)
    results.put(("ready", len(devices)))
    last_misc, period, sent, t0, telemetry_on = 0.0, 0.0, 0, 0.0, False
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
                    period, telemetry_on, t0, sent = cmd[1], True, now, 0
                if cmd[0] == "telemetry_off":
                    telemetry_on = False
                    results.put(("telemetry_sent", sent))
        if telemetry_on:
            due = int((now - t0) * len(devices) / period) - sent
            for k in range(max(0, due)):
                devices[(sent + k) % len(devices)].telemetry()
            sent += max(0, due)


class SiteObserver:
    """Counts the chunk messages that reach a site broker live (each one crossed the link once)."""

    def __init__(self, port: int) -> None:
        self.chunks: Counter = Counter()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = lambda _c, _u, m: (not m.retain) and self.chunks.update([m.topic])
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(f"{TOPICS.prefix}/artifacts/#", qos=1)
        self.c.loop_start()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def make_bundle(folder: Path, version: str, size: int, key) -> Path:
    manifest = Manifest(name=MODEL, version=version, task="other",
                        inputs=[{"name": "x", "dtype": "float32", "shape": [1]}], outputs=[{"name": "y", "dtype": "float32", "shape": [1]}],
                        files={})
    path = folder / f"{MODEL}-{version}.bundle"
    write_bundle(path, manifest, {"model.onnx": os.urandom(size)}, key)
    return path


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


class PeakMemory:
    """The largest resident memory of each process, sampled every second on a thread of its own; `alive()` is
    False once any of them died (a site broker killed for memory fails the run at once, not after an hour)."""

    def __init__(self, procs: list[psutil.Process]) -> None:
        import threading

        self.procs, self.peak_mb = procs, [0.0] * len(procs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for k, p in enumerate(self.procs):
                try:
                    self.peak_mb[k] = max(self.peak_mb[k], p.memory_info().rss / 1e6)
                except psutil.NoSuchProcess:
                    pass

    def alive(self) -> bool:
        return all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in self.procs)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak_mb


def run_scale(n: int, args, work: Path, pg: Postgres, bundle: Path, pub: Path) -> dict:
    root = work / f"n{n}"
    central = Broker(root / "central", extra_config="max_queued_messages 100000\n").start()
    links = [LinkProxy(central.port).start() for _ in range(SITES)]
    sites = [SiteBroker(root / f"site{i}", f"site{i}", "127.0.0.1", links[i].port,
                        extra_config="max_queued_messages 100000\n").start() for i in range(SITES)]
    for s in sites:
        wait_for(s.bridge_connected, 30, f"bridge of {s.site}")
    db = pg.create_database(f"scale{n}_{os.getpid()}")
    api = FleetApi(root / "api", central.url, pub, database_url=db,
                   env={"EDGEFLEET_API_TICK_INTERVAL_S": "0.5", "EDGEFLEET_API_LOG_LEVEL": "warning",
                        "EDGEFLEET_API_OUTBOX_BATCH": "2000"}).start()
    observers = [SiteObserver(s.port) for s in sites]
    procs, commands = [], []
    out: dict = {"devices": n}
    try:
        client = api.client()
        client.post("/v1/models", content=bundle.read_bytes()).raise_for_status()
        ids = [f"sim-{i:05d}" for i in range(n)]
        t = time.monotonic()

        def register(part: list[str]) -> None:
            with api.client() as c:
                for i in part:
                    c.post("/v1/devices", json={"id": i, "labels": {"fleet": "bench", "site": f"site{int(i[4:]) % SITES}"}}).raise_for_status()

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(register, [ids[k::8] for k in range(8)]))
        out["register_s"] = time.monotonic() - t
        results = mp.Queue()
        assignment = [(i, sites[int(i[4:]) % SITES].port) for i in ids]
        for w in range(args.workers):
            q = mp.Queue()
            proc = mp.Process(target=worker, args=(assignment[w::args.workers], q, results), daemon=True)
            proc.start()
            procs.append(proc)
            commands.append(q)
        for _ in procs:
            assert results.get(timeout=600)[0] == "ready"
        wait_for(lambda: sum(d["online"] for d in client.get("/v1/devices").json()) == n, 300, "every device online", interval=1)

        api_p = psutil.Process(api.process.proc.pid)
        brokers_p = [psutil.Process(b.process.proc.pid) for b in [central, *sites]]
        if n > args.rollout_up_to:
            out["state"] = "not run"
            return telemetry_phases(n, args, client, api_p, brokers_p, commands, procs, results, out)
        down0 = [link.down_bytes for link in links]
        memory = PeakMemory(brokers_p[1:])  # the site brokers
        api0, brk0, t = cpu_s([api_p]), cpu_s(brokers_p), time.monotonic()
        r = client.post("/v1/rollouts", json={"model": MODEL, "version": "2.0.0", "selector": "fleet=bench", "waves": args.waves,
                                              "gates": {"wave_timeout_s": 1800,
                                                        "max_concurrent": args.max_concurrent or None}})
        r.raise_for_status()
        rid, waves = r.json()["id"], r.json()["waves"]
        # Polled through the list (states counted in the database), not the rollout's own page: that one carries
        # every member and the failure analysis, and polling it every second would be most of the API's work.
        def finished() -> dict | None:
            if not memory.alive():
                raise SystemExit(f"{n} devices: a site broker died during the rollout (peak MB {memory.stop()})")
            x = next(r for r in client.get("/v1/rollouts").json() if r["id"] == rid)
            return x if x["state"] not in ("pending", "running") else None

        done = wait_for(finished, 3600, "the rollout", interval=1)
        out["state"] = done["state"]
        out["rollout_s"] = time.monotonic() - t
        out["api_cpu_rollout_s"] = cpu_s([api_p]) - api0
        out["broker_cpu_rollout_s"] = cpu_s(brokers_p) - brk0
        out["site_broker_peak_mb"] = max(memory.stop())
        size = bundle.stat().st_size
        chunk = 128 * 1024
        count = -(-size // chunk)
        out["link_mb"] = [(link.down_bytes - d0) / 1e6 for link, d0 in zip(links, down0, strict=True)]
        copies = [sum(o.chunks.values()) / count for o in observers]
        out["copies_per_wave_per_link"] = max(copies) / len(waves)
        out["copies_max_chunk_per_link"] = max(max(o.chunks.values()) for o in observers)
        out["waves"] = len(waves)

        return telemetry_phases(n, args, client, api_p, brokers_p, commands, procs, results, out)
    finally:
        for q in commands:
            q.put(("stop",))
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
        for o in observers:
            o.close()
        api.stop()
        for s in sites:
            s.stop()
        for link in links:
            link.close()
        central.stop()


def telemetry_phases(n: int, args, client, api_p, brokers_p, commands, procs, results, out: dict) -> dict:
    """Telemetry at one message per device every 10 s, then a burst as fast as the simulators go."""
    # Telemetry: one message per device every 10 s, for telemetry_s seconds.
    before = client.get("/metrics").text
    n0, api0, brk0, t0 = metric(before, "edgefleet_api_telemetry_messages_total"), cpu_s([api_p]), cpu_s(brokers_p), time.monotonic()
    for q in commands:
        q.put(("telemetry", 10.0))
    time.sleep(args.telemetry_s)
    for q in commands:
        q.put(("telemetry_off",))
    offered = sum(results.get(timeout=60)[1] for _ in procs)
    t1 = time.monotonic()
    n1, api1, brk1 = metric(client.get("/metrics").text, "edgefleet_api_telemetry_messages_total"), cpu_s([api_p]), cpu_s(brokers_p)
    out["telemetry_offered_per_s"] = offered / (t1 - t0)
    out["telemetry_ingested_per_s"] = (n1 - n0) / (t1 - t0)
    out["api_cpu_telemetry_pct"] = (api1 - api0) / (t1 - t0) * 100
    out["broker_cpu_telemetry_pct"] = (brk1 - brk0) / (t1 - t0) * 100
    # Burst: the simulators send as fast as they can (asked for 25,000 msg/s) for telemetry_s / 2 seconds.
    n0, api0, t0 = metric(client.get("/metrics").text, "edgefleet_api_telemetry_messages_total"), cpu_s([api_p]), time.monotonic()
    for q in commands:
        q.put(("telemetry", n / 25_000))
    time.sleep(args.telemetry_s / 2)
    for q in commands:
        q.put(("telemetry_off",))
    offered = sum(results.get(timeout=120)[1] for _ in procs)
    time.sleep(2)  # what is queued in the API's inbox is ingested too
    t1 = time.monotonic()
    n1, api1 = metric(client.get("/metrics").text, "edgefleet_api_telemetry_messages_total"), cpu_s([api_p])
    out["burst_offered_per_s"] = offered / (t1 - 2 - t0)
    out["burst_ingested_per_s"] = (n1 - n0) / (t1 - t0)
    out["burst_api_cpu_pct"] = (api1 - api0) / (t1 - t0) * 100
    out["load1"] = os.getloadavg()[0]
    return out


def _telemetry_body(k: int = 0) -> bytes:
    return json.dumps({"schema": 2, "window_s": 10.0, "models": {MODEL: {"version": "2.0.0", "provider": "CPUExecutionProvider",
                       "requests": 50 + k % 7, "errors": 0, "latency_ms_p50": 1.0, "latency_ms_p95": 2.0, "latency_ms_p99": 3.0}},
                       "health": {"cpu_percent": 12.0, "agent_rss_mb": 80.0}, "ts": time.time()}).encode()


def ingest_capacity(pg: Postgres, devices: int, messages: int) -> dict:
    """One process's whole telemetry path without the network: the API's own service on PostgreSQL fed blocks of
    (topic, payload) as the telemetry receiver hands them over (look-up, parse, rollup, insights, drift), the
    rollups written every 0.5 s by a thread of their own as the API's tick does. → messages per second of one
    core, and where the time goes (µs per message of CPU)."""
    import gc
    import threading

    from sqlalchemy import create_engine, insert

    from fleet_api.db.session import make_sessions
    from fleet_api.db.tables import Device
    from fleet_api.gc_policy import tune_for_serving
    from fleet_api.mqtt.handlers import handle_telemetry_batch, parse_telemetry
    from fleet_api.service import FleetService
    from fleet_api.settings import ApiSettings

    url = pg.create_database(f"ingest_{os.getpid()}")
    settings = ApiSettings(database_url=url, artifact_dir=Path(tempfile.mkdtemp(prefix="ingest-")))
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    service = FleetService(settings, make_sessions(engine), publisher=None)  # type: ignore[arg-type]  # publishes nothing
    ids = [f"sim-{i:05d}" for i in range(devices)]
    with engine.begin() as conn:
        conn.execute(insert(Device), [{"id": i} for i in ids])
    blocks, block = [], 500
    for k0 in range(0, messages, block):
        blocks.append([(TOPICS.telemetry(ids[k % devices]), _telemetry_body(k)) for k in range(k0, min(messages, k0 + block))])
    sample = [payload for _, payload in blocks[0]]
    stored, done = [0], threading.Event()

    def flusher() -> None:  # the API's tick: a thread of its own, every 0.5 s
        while not done.wait(0.5):
            stored[0] += service.flush_telemetry()

    flush_thread = threading.Thread(target=flusher, daemon=True)
    gc_threshold = gc.get_threshold()
    tune_for_serving()  # the garbage collector as `fleet-api serve` sets it (undone below, for the rest of the run)
    cpu0, t0 = time.process_time(), time.monotonic()
    flush_thread.start()
    for b in blocks:
        handle_telemetry_batch(service, b)
    done.set()
    flush_thread.join()
    stored[0] += service.flush_telemetry()
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    # the parts, each alone over the same payloads (CPU time of this thread)
    parsed = [(ids[k % devices], parse_telemetry(p)) for k, p in enumerate(sample)]

    def us(f) -> float:
        c0 = time.thread_time()
        for _ in range(20):
            f()
        return (time.thread_time() - c0) / (20 * len(sample)) * 1e6

    parts = {"parse": us(lambda: [parse_telemetry(p) for p in sample]),
             "rollup": us(lambda: service.telemetry.add_many(parsed)),
             "insights": us(lambda: service.insights.observe_many(parsed)),
             "drift": us(lambda: service.drift.add_many(parsed))}
    gc.set_threshold(*gc_threshold)
    gc.unfreeze()
    service.close()
    engine.dispose()
    return {"messages": messages, "wall_s": wall, "per_s": messages / wall, "cpu_pct": cpu / wall * 100,
            "us_per_msg": cpu / messages * 1e6, "rows": stored[0], "parts_us": parts}


def raw_publisher(port: int, topics: list[str], rate: float, seconds: float, results) -> None:
    """A device-less publisher as cheap as it gets: one MQTT 5 connection, QoS 0 PUBLISH packets encoded once
    (topic per device, a real telemetry body) and written in blocks with sendall, paced to `rate` msg/s."""
    import socket

    from fleet_api.mqtt.telemetry_receiver import connect_packet, varint

    packets = []
    for k, topic in enumerate(topics):
        t, body = topic.encode(), _telemetry_body(k)
        head = len(t).to_bytes(2, "big") + t + b"\x00"  # no properties
        packets.append(b"\x30" + varint(len(head) + len(body)) + head + body)
    per_block = max(1, min(len(packets), int(rate / 200)))  # ~200 writes a second
    block = b"".join(packets[k % len(packets)] for k in range(per_block))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(connect_packet(f"bench-publisher-{os.getpid()}", None, None, 60))
    sock.recv(64)  # CONNACK
    sent, t0 = 0, time.monotonic()
    while (elapsed := time.monotonic() - t0) < seconds:
        while sent + per_block <= elapsed * rate:
            sock.sendall(block)
            sent += per_block
        time.sleep(0.002)
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    results.put(sent)


def _register(api, ids: list[str]) -> None:
    with api.client() as c:
        for i in ids:
            c.post("/v1/devices", json={"id": i}).raise_for_status()


def _ingest_run(label: str, apis: list, broker_port: int, ids: list[str], rate: float, seconds: float, publishers: int) -> dict:
    """Publishers offer `rate` msg/s for `seconds`; over the middle of it (after a 3 s warm-up): the messages the
    API processes ingested per second and each one's CPU; then what was offered, and what they took in the end."""
    procs_api = [psutil.Process(a.process.proc.pid) for a in apis]
    clients = [a.client() for a in apis]

    def ingested() -> float:
        return sum(metric(c.get("/metrics").text, "edgefleet_api_telemetry_messages_total") for c in clients)

    results = mp.Queue()
    topics = [TOPICS.telemetry(i) for i in ids]
    pubs = [mp.Process(target=raw_publisher, args=(broker_port, topics[w::publishers], rate / publishers, seconds, results),
                       daemon=True) for w in range(publishers)]
    start = ingested()
    for p in pubs:
        p.start()
    time.sleep(3)
    n0, cpu0, t0 = ingested(), [cpu_s([p]) for p in procs_api], time.monotonic()
    time.sleep(max(1.0, seconds - 4))
    n1, cpu1, t1 = ingested(), [cpu_s([p]) for p in procs_api], time.monotonic()
    offered = sum(results.get(timeout=60) for _ in pubs)
    for p in pubs:
        p.join(timeout=10)
    last, still = ingested(), 0  # until they have taken all of it (or taken nothing more for 3 s)
    while still < 3 and last - start < offered:
        time.sleep(1.0)
        now = ingested()
        still = still + 1 if now == last else 0
        last = now
    for c in clients:
        c.close()
    return {"label": label, "processes": len(apis), "offered_per_s": offered / seconds, "per_s": (n1 - n0) / (t1 - t0),
            "cpu_pct": [(b - a) / (t1 - t0) * 100 for a, b in zip(cpu0, cpu1, strict=True)],
            "offered": offered, "taken": last - start, "load1": os.getloadavg()[0]}


def ingest_over_mqtt(pg: Postgres, work: Path, pub: Path, messages: int, publishers: int = 4, rate: float = 30_000,
                     devices: int = 1000) -> list[dict]:
    """The real API process on PostgreSQL behind a real mosquitto, fed by `publishers` raw-socket publisher
    processes (QoS 0, pre-encoded, `devices` registered devices) at `rate` msg/s for messages / rate seconds:
    side by side, telemetry through paho (EDGEFLEET_API_TELEMETRY_RECEIVER=false), through the telemetry
    receiver, and through the receivers of 2 API processes sharing the subscription. → one dict per setup."""
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    seconds = max(8.0, messages / rate)
    root = work / "ingest"
    broker = Broker(root / "broker", extra_config="max_queued_messages 200000\n").start()
    db = pg.create_database(f"ingestmqtt_{os.getpid()}")
    ids = [f"ingest-{k:05d}" for k in range(devices)]
    out = []
    try:
        for label, receiver, replicas in (("paho", "false", 1), ("receiver", "true", 1), ("receiver ×2", "true", 2)):
            apis = []
            try:
                for r in range(replicas):  # one after the other: the first one migrates the database
                    apis.append(FleetApi(root / f"api-{receiver}-{replicas}-{r}", broker.url, pub, database_url=db,
                                         env={"EDGEFLEET_API_LOG_LEVEL": "warning", "EDGEFLEET_API_TICK_INTERVAL_S": "1.0",
                                              "EDGEFLEET_API_TELEMETRY_RECEIVER": receiver}).start())
                if not out:
                    with ThreadPoolExecutor(8) as pool:
                        list(pool.map(partial(_register, apis[0]), [ids[k::8] for k in range(8)]))
                for a in apis:
                    wait_for(lambda a=a: a.client().get("/readyz").status_code == 200, 30, "the API to be ready")
                out.append(_ingest_run(label, apis, broker.port, ids, rate, seconds, publishers))
                print(f"ingest over MQTT, {label}: {out[-1]}", file=sys.stderr)
            finally:
                for a in apis:
                    a.stop()
        return out
    finally:
        broker.stop()


def print_table(rows: list[dict], ingest: dict | None, ingest_mqtt: list[dict] | None, size: int, waves: str, workers: int,
                max_concurrent: int) -> None:
    col = 14
    print(f"\nfleet scale on PostgreSQL: 1 central + {SITES} site brokers (bridged), {workers} simulator processes, "
          f"{psutil.cpu_count()} vCPU shared with other work; bundle {size / 1e6:.2f} MB, waves {waves}, "
          f"max_concurrent {max_concurrent or 'none (whole waves)'}")
    print(f"{'devices':<46}" + "".join(f"{r['devices']:>{col},}" for r in rows))

    def line(label: str, f) -> None:
        print(f"{label:<46}" + "".join(f"{f(r):>{col}}" for r in rows))

    def rollout(f):  # a column whose rollout was not run shows a dash
        return lambda r: f(r) if r["state"] != "not run" else "—"

    line("registering the devices (s, 8 HTTP clients)", lambda r: f"{r['register_s']:.1f}")
    line("rollout state", lambda r: r["state"])
    line("time to finish the rollout (s)", rollout(lambda r: f"{r['rollout_s']:.1f}"))
    line("  per 1,000 devices (s)", rollout(lambda r: f"{r['rollout_s'] / r['devices'] * 1000:.1f}"))
    line("MB down each central→site link (max)", rollout(lambda r: f"{max(r['link_mb']):.1f}"))
    line("  bundle copies per wave per link", rollout(lambda r: f"{r['copies_per_wave_per_link']:.2f}"))
    line("  most copies of one chunk on a link", rollout(lambda r: f"{r['copies_max_chunk_per_link']}"))
    line("API CPU over the rollout (s)", rollout(lambda r: f"{r['api_cpu_rollout_s']:.1f}"))
    line("  per device (ms)", rollout(lambda r: f"{r['api_cpu_rollout_s'] / r['devices'] * 1000:.1f}"))
    line("brokers' CPU over the rollout (s, 5 brokers)", rollout(lambda r: f"{r['broker_cpu_rollout_s']:.1f}"))
    line("  a site broker's memory at its peak (MB)", rollout(lambda r: f"{r['site_broker_peak_mb']:,.0f}"))
    line("telemetry offered (msg/s, 1/device/10 s)", lambda r: f"{r['telemetry_offered_per_s']:,.0f}")
    line("  ingested by the API (msg/s)", lambda r: f"{r['telemetry_ingested_per_s']:,.0f}")
    line("  API CPU (% of a core)", lambda r: f"{r['api_cpu_telemetry_pct']:.0f}")
    line("  brokers' CPU (% of a core, 5 brokers)", lambda r: f"{r['broker_cpu_telemetry_pct']:.0f}")
    line("  API CPU per 1,000 msg/s (% of a core)", lambda r: f"{r['api_cpu_telemetry_pct'] / max(r['telemetry_ingested_per_s'], 1) * 1000:.0f}")
    line("telemetry burst offered (msg/s, simulators' max)", lambda r: f"{r['burst_offered_per_s']:,.0f}")
    line("  ingested by the API (msg/s)", lambda r: f"{r['burst_ingested_per_s']:,.0f}")
    line("  API CPU (% of a core)", lambda r: f"{r['burst_api_cpu_pct']:.0f}")
    line("  → msg/s per API core", lambda r: f"{r['burst_ingested_per_s'] / max(r['burst_api_cpu_pct'], 1) * 100:,.0f}")
    line("load average (1 min) at the end", lambda r: f"{r['load1']:.1f}")
    if ingest is None or ingest_mqtt is None:
        return
    parts = ", ".join(f"{k} {v:.1f}" for k, v in ingest["parts_us"].items())
    print(f"ingest path of one API process (look-up + parse + rollup + insights + batched PostgreSQL write, no network): "
          f"{ingest['per_s']:,.0f} msg/s at {ingest['cpu_pct']:.0f} % of a core, {ingest['us_per_msg']:.1f} µs of CPU a "
          f"message ({parts} µs)")
    print(f"ingest over MQTT on PostgreSQL (raw-socket publishers, QoS 0, {ingest_mqtt[0]['offered_per_s']:,.0f} msg/s offered):")
    print(f"  {'telemetry through':<22}{'API processes':>14}{'ingested msg/s':>16}{'API CPU % each':>16}"
          f"{'msg/s per core':>16}{'taken of offered':>20}")
    for r in ingest_mqtt:
        cpu, each = sum(r["cpu_pct"]), " / ".join(f"{c:.0f}" for c in r["cpu_pct"])
        taken = f"{r['taken']:,.0f} / {r['offered']:,}"
        print(f"  {r['label']:<22}{r['processes']:>14}{r['per_s']:>16,.0f}{each:>16}{r['per_s'] / max(cpu, 1) * 100:>16,.0f}"
              f"{taken:>20}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="1000,3000,10000", help="comma-separated device counts, one column each")
    p.add_argument("--quick", action="store_true", help="smoke test: 200 devices, a 1 MB bundle, short telemetry")
    p.add_argument("--model-mb", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=2, help="device simulator processes")
    p.add_argument("--waves", default="1,10%,50%,100%")
    p.add_argument("--max-concurrent", type=int, default=1000,
                   help="the rollout's max_concurrent gate: devices taking the bundle at once (0: whole waves)")
    p.add_argument("--telemetry-s", type=float, default=30.0)
    p.add_argument("--ingest-messages", type=int, default=200_000)
    p.add_argument("--rollout-up-to", type=int, default=10**9,
                   help="larger device counts skip the rollout (connect + telemetry only): the simulator receives every byte")
    p.add_argument("--json", action="store_true", help="print the results as JSON as well")
    args = p.parse_args()
    counts = [int(x) for x in args.devices.split(",")]
    if args.quick:
        counts, args.model_mb, args.telemetry_s, args.ingest_messages = [200], 1.0, 10.0, 20_000

    work = Path(tempfile.mkdtemp(prefix="edgefleet-scale-"))
    private, public = generate_keypair()
    pub = work / "key.pub.pem"
    pub.write_bytes(public)
    bundle = make_bundle(work, "2.0.0", int(args.model_mb * 1024 * 1024), load_private_key(private))
    pg = Postgres().start()
    try:
        ingest = ingest_capacity(pg, max(counts), args.ingest_messages) if args.ingest_messages else None
        ingest_mqtt = ingest_over_mqtt(pg, work, pub, args.ingest_messages * 2) if args.ingest_messages else None
        print(f"ingest over MQTT, the API process: {ingest_mqtt}", file=sys.stderr)
        print(f"ingest path, one process: {ingest}, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
        rows = []
        for n in counts:
            rows.append(run_scale(n, args, work, pg, bundle, pub))
            print(f"{n} devices: {rows[-1]}", file=sys.stderr)
    finally:
        pg.stop()

    print_table(rows, ingest, ingest_mqtt, bundle.stat().st_size, args.waves, args.workers, args.max_concurrent)
    if args.json:
        print(json.dumps({"scales": rows, "ingest": ingest, "ingest_mqtt": ingest_mqtt}))
    return 0 if all(r["state"] == "succeeded" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Chaos: a fleet on real parts, killed at random during rollouts; prints how many rounds it survived.

Two fleet API processes on one PostgreSQL database (sharing the artifact folder, as replicas share a volume),
a mosquitto without persistence (a restart loses every retained message) and N edge-agent processes. Each round
rolls a new version of the digits model out in three waves (1, 50 %, 100 %) and, at seeded random moments
while it runs, SIGKILLs the broker, one API process or an agent, and starts it again. After each round:
  - the rollout reached a terminal state, and its devices match it (succeeded: every device serves the new
    version; aborted: every device serves the version it had before);
  - every device serves a bundle of the registry (the agent only serves bundles whose signature it verified,
    and the registry holds only signed bundles): the sha256 it reports is the registry's for that version,
    and its own HTTP endpoint serves that version;
  - no download was restarted: the progress a device reports for one bundle never goes back (chunks are kept
    on disk, so a restarted agent resumes; a repeated desired revision must be acknowledged, not re-applied).

    python benchmarks/chaos.py [--rounds 10] [--seed 1] [--agents 4] [--faults 3] [--json]

tests/e2e/test_chaos.py runs two seeded rounds of the same harness in the test suite.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from demo.cluster import Broker, EdgeAgent, FleetApi, Postgres, wait_for
from fleet_protocol.topics import Topics

TOPICS = Topics()
MODEL = "digits"
TERMINAL = ("succeeded", "aborted", "rolled_back")


# --- bundles ---------------------------------------------------------------------------------------------
def make_bundles(folder: Path, versions: list[str]) -> tuple[Path, dict[str, Path]]:
    """A signing key and one signed digits bundle per version (the same 1-epoch weights: each version is its own
    bundle, with its own sha256). → (public key file, version → bundle)."""
    from fleet_protocol.signing import generate_keypair
    from model_tools.pack import pack_bundle
    from model_tools.zoo import prepare

    folder.mkdir(parents=True, exist_ok=True)
    private, public = generate_keypair()
    (folder / "signing.pub.pem").write_bytes(public)
    zoo = prepare(MODEL, variant="e1", epochs=1)
    bundles = {}
    for version in versions:
        path, _ = pack_bundle(zoo.onnx, name=MODEL, version=version, golden_inputs=zoo.golden_inputs,
                              private_key_pem=private, out_dir=folder, task="classification", labels=zoo.labels,
                              preprocessing=zoo.preprocessing)
        bundles[version] = path
    return folder / "signing.pub.pem", bundles


# --- what devices report, as the broker carries it --------------------------------------------------------
class ProgressWatch:
    """Records every device's reported download progress per bundle, across broker restarts. A bundle whose
    progress goes back on a device was downloaded again from an earlier point: a restarted download."""

    def __init__(self, port: int) -> None:
        self.restarts: list[str] = []
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"chaos-watch-{uuid.uuid4().hex[:6]}",
                             protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda c, *_: c.subscribe(TOPICS.all_devices("reported"), qos=1)
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(0.2, 1)
        self.c.connect_async("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, _c, _u, msg) -> None:
        try:
            device = TOPICS.parse_device(msg.topic)[0]
            reported = json.loads(msg.payload) if msg.payload else {}
        except ValueError:
            return
        for name, entry in (reported.get("models") or {}).items():
            desired = (entry or {}).get("desired") or {}
            if entry.get("state") != "downloading" or not desired.get("sha256"):
                continue
            key, progress = (device, desired["sha256"]), float(entry.get("progress") or 0.0)
            with self._lock:
                before = self._last.get(key)
                if before is not None and progress + 1e-9 < before:
                    self.restarts.append(f"{device}: {name} {desired.get('version')} download went back from "
                                         f"{before:.0%} to {progress:.0%}")
                self._last[key] = max(progress, before or 0.0)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# --- the fleet ---------------------------------------------------------------------------------------------
class ChaosFleet:
    def __init__(self, work: Path, trusted_key: Path, postgres: Postgres, agents: int = 4, chunk_size: int = 2048) -> None:
        self.work = work
        self.broker = Broker(work / "broker")  # persistence off: a restart loses every retained message
        database = postgres.create_database(f"chaos_{uuid.uuid4().hex[:10]}")
        env = {"EDGEFLEET_API_ARTIFACT_DIR": str(work / "artifacts"),  # one volume, as replicas share one
               "EDGEFLEET_API_CHUNK_SIZE": str(chunk_size)}  # many chunks: kills land mid-download
        self.apis = [FleetApi(work / f"api-{n}", self.broker.url, trusted_key, database_url=database, env=env,
                              admin_token="eft_chaos-admin-token") for n in ("a", "b")]
        self.agents = {
            f"dev-{i}": EdgeAgent(work / f"dev-{i}", f"dev-{i}", self.broker.url, trusted_key,
                                  env={"EDGEFLEET_AGENT_DOWNLOAD_TIMEOUT_S": "90"})
            for i in range(1, agents + 1)
        }

    def start(self) -> ChaosFleet:
        self.broker.start()
        for api in self.apis:  # one after the other: the first one migrates the database
            api.start()
        for device in self.agents:
            self.post("/v1/devices", {"id": device, "labels": {"site": "chaos"}})
        for agent in self.agents.values():
            agent.start()
        return self

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        for api in self.apis:
            api.stop()
        self.broker.stop()

    def client(self) -> httpx.Client:
        return httpx.Client(timeout=10, headers={"Authorization": f"Bearer {self.apis[0].admin_token}"})

    def get(self, path: str) -> dict | list:
        """GET from whichever API process answers (one may be down)."""
        last: Exception | None = None
        with self.client() as http:
            for api in self.apis:
                try:
                    r = http.get(api.url + path)
                    r.raise_for_status()
                    return r.json()
                except httpx.HTTPError as exc:
                    last = exc
        raise RuntimeError(f"no API process answers {path}: {last}")

    def post(self, path: str, body: dict) -> dict:
        last: Exception | None = None
        with self.client() as http:
            for api in self.apis:
                try:
                    r = http.post(api.url + path, json=body)
                except httpx.HTTPError as exc:
                    last = exc
                    continue
                r.raise_for_status()
                return r.json()
        raise RuntimeError(f"no API process answers {path}: {last}")


# --- faults ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    at_s: float  # after the rollout was created
    target: str  # "broker", "api-a" / "api-b", or a device id
    down_s: float

    def __str__(self) -> str:
        return f"{self.target}@{self.at_s:.1f}s/{self.down_s:.1f}s"


def plan_faults(rng: random.Random, fleet: ChaosFleet, count: int, within_s: float = 8.0) -> list[Fault]:
    """`count` faults at random moments: the broker, one of the API processes, then agents, in random order."""
    targets = ["broker", rng.choice(["api-a", "api-b"])][:count]
    targets += rng.sample(sorted(fleet.agents), k=min(len(fleet.agents), max(0, count - 2)))
    rng.shuffle(targets)
    times = sorted(rng.uniform(0.0, within_s) for _ in targets)
    return [Fault(t, target, rng.uniform(0.3, 2.0)) for t, target in zip(times, targets, strict=True)]


def _start_again(service, log: list[str], what: str) -> None:
    """Start a killed part again; a start that fails (a port taken meanwhile on a busy machine, say) is tried once
    more, and what it printed is kept for the round's report."""
    for attempt in (1, 2):
        try:
            service.start()
            return
        except (RuntimeError, TimeoutError) as exc:
            log.append(f"{what} did not start (attempt {attempt}): {str(exc)[-600:]}")
    raise RuntimeError(f"{what} did not start again")


def inflict(fleet: ChaosFleet, faults: list[Fault], started: float, log: list[str], failed: list[str]) -> None:
    """SIGKILL each target at its moment and start it again after its down time (one at a time)."""
    try:
        for fault in faults:
            time.sleep(max(0.0, started + fault.at_s - time.monotonic()))
            if fault.target == "broker":
                part = fleet.broker
                part.process.kill()
            elif fault.target.startswith("api-"):
                part = fleet.apis["ab".index(fault.target[-1])]
                part.kill()
            else:
                part = fleet.agents[fault.target]
                part.kill()
            time.sleep(fault.down_s)
            _start_again(part, log, fault.target)
            log.append(f"{fault} done at {time.monotonic() - started:.1f}s")
    except Exception as exc:  # reported with the round, never lost in this thread
        failed.append(f"fault injection stopped: {exc}; {' | '.join(log[-3:])}")


# --- one round -----------------------------------------------------------------------------------------------
@dataclass
class RoundResult:
    round: int
    version: str
    state: str = "?"
    seconds: float = 0.0
    faults: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    duplicates: int = 0  # desired revisions devices received again and only acknowledged (agent logs)
    notes: list[str] = field(default_factory=list)  # starts that needed a second try

    @property
    def survived(self) -> bool:
        return not self.problems


def _acknowledged(fleet: ChaosFleet) -> int:
    """Desired revisions the agents received again and only acknowledged (the reconciler logs each)."""
    count = 0
    for agent in fleet.agents.values():
        try:
            count += agent.process.log_path.read_text(errors="replace").count(" acknowledged (have ")
        except OSError:
            pass
    return count


def _serving(fleet: ChaosFleet) -> dict[str, dict]:
    return {d["id"]: (d.get("models") or {}).get(MODEL) or {} for d in fleet.get("/v1/devices")}


def run_round(fleet: ChaosFleet, watch: ProgressWatch, rng: random.Random, number: int, version: str,
              registry: dict[str, str], faults: int, timeout_s: float = 150.0) -> RoundResult:
    result = RoundResult(number, version)
    started = time.monotonic()
    restarts_before = len(watch.restarts)
    acknowledged_before = _acknowledged(fleet)
    rollout = fleet.post("/v1/rollouts", {"model": MODEL, "version": version, "selector": "site=chaos",
                                          "waves": "1,50%,100%", "gates": {"wave_timeout_s": timeout_s * 0.8}})
    plan = plan_faults(rng, fleet, faults) if faults else []
    done_log: list[str] = []
    failed: list[str] = []
    chaos = threading.Thread(target=inflict, args=(fleet, plan, started, done_log, failed), daemon=True)
    chaos.start()
    deadline = started + timeout_s
    try:
        final = wait_for(lambda: (r := fleet.get(f"/v1/rollouts/{rollout['id']}"))["state"] in TERMINAL and r,
                         timeout_s, f"rollout {rollout['id']} to end", interval=0.5)
    except TimeoutError as exc:
        chaos.join(timeout=60)
        result.faults = [str(f) for f in plan]
        result.problems += failed + [str(exc)]
        result.seconds = time.monotonic() - started
        return result
    chaos.join(timeout=max(1.0, deadline - time.monotonic()))
    result.state, result.faults = final["state"], [str(f) for f in plan]
    # What each member must serve: the new version, or after an abort the version it had before.
    expected = {m["device_id"]: version if final["state"] == "succeeded" else m.get("previous_version")
                for m in final["devices"]}
    if set(expected) != set(fleet.agents):
        result.problems.append(f"rollout members {sorted(expected)} are not the fleet {sorted(fleet.agents)}")

    def settled() -> bool:
        serving = _serving(fleet)
        return all(serving.get(d, {}).get("version") == v and serving[d].get("state") == "serving" for d, v in expected.items())

    try:
        wait_for(settled, max(10.0, deadline - time.monotonic()), "every device to serve what the rollout says")
    except TimeoutError:
        serving = _serving(fleet)
        for d, v in sorted(expected.items()):
            got = serving.get(d, {})
            if got.get("version") != v or got.get("state") != "serving":
                result.problems.append(f"{d}: rollout {final['state']} says {v}, device reports "
                                       f"{got.get('state')} {got.get('version')} ({got.get('error')})")
    serving = _serving(fleet)
    for device, agent in fleet.agents.items():
        report = serving.get(device, {})
        if report.get("version") in registry and report.get("sha256") != registry[report["version"]]:
            result.problems.append(f"{device}: serves {report.get('sha256')}, not the registry's bundle of "
                                   f"{report.get('version')}")
        try:
            ready = httpx.get(f"{agent.url}/v2/health/ready", timeout=5).json()
            local = ((ready.get("models") or {}).get(MODEL) or {}).get("version")
        except (httpx.HTTPError, ValueError) as exc:
            local = f"unreachable ({exc})"
        if local != expected.get(device):
            result.problems.append(f"{device}: its own endpoint serves {local}, expected {expected.get(device)}")
    result.problems += failed + watch.restarts[restarts_before:]
    result.notes = [line for line in done_log if "did not start" in line]
    result.duplicates = _acknowledged(fleet) - acknowledged_before
    result.seconds = time.monotonic() - started
    return result


def run(rounds: int, seed: int, agents: int, faults: int, work: Path, postgres: Postgres | None = None,
        progress=print) -> list[RoundResult]:
    """Start the fleet, bring every device to a first version without faults, then `rounds` rounds with faults."""
    rng = random.Random(seed)
    versions = [f"1.0.{i}" for i in range(rounds + 1)]
    trusted_key, bundles = make_bundles(work / "bundles", versions)
    own_pg = postgres is None
    pg = postgres or Postgres().start()
    fleet = ChaosFleet(work / "fleet", trusted_key, pg, agents)
    watch: ProgressWatch | None = None
    try:
        fleet.start()
        watch = ProgressWatch(fleet.broker.port)
        registry = {}
        with fleet.client() as http:
            for version, path in bundles.items():
                r = http.post(fleet.apis[0].url + "/v1/models", content=path.read_bytes())
                r.raise_for_status()
                registry[version] = r.json()["sha256"]
        first = run_round(fleet, watch, rng, 0, versions[0], registry, faults=0)
        if not first.survived or first.state != "succeeded":
            raise RuntimeError(f"the fleet did not reach its first version without faults: {first.problems}")
        results = []
        for n, version in enumerate(versions[1:], start=1):
            result = run_round(fleet, watch, rng, n, version, registry, faults)
            results.append(result)
            progress(f"round {n}: {'survived' if result.survived else 'FAILED'} ({result.state}, "
                     f"{result.seconds:.0f}s, faults {', '.join(result.faults)})"
                     + "".join(f"\n    {p}" for p in result.problems)
                     + "".join(f"\n    note: {n}" for n in result.notes))
        return results
    finally:
        if watch is not None:
            watch.close()
        fleet.close()
        if own_pg:
            pg.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--faults", type=int, default=3, help="faults per round (broker, an API process, agents)")
    parser.add_argument("--json", action="store_true", help="print the rounds as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgefleet-chaos-") as tmp:
        results = run(args.rounds, args.seed, args.agents, args.faults, Path(tmp),
                      progress=(lambda _m: None) if args.json else print)
    survived = sum(r.survived for r in results)
    if args.json:
        print(json.dumps({"seed": args.seed, "survived": survived, "tried": len(results),
                          "rounds": [{**r.__dict__, "survived": r.survived} for r in results]}))
    else:
        print(f"\n{'round':>5}  {'outcome':<10} {'seconds':>7}  {'duplicates':>10}  {'faults':<56} result")
        for r in results:
            print(f"{r.round:>5}  {r.state:<10} {r.seconds:>7.1f}  {r.duplicates:>10}  {', '.join(r.faults):<56} "
                  f"{'survived' if r.survived else 'FAILED'}")
        print("(duplicates: desired revisions a device received again and only acknowledged)")
        print(f"\nrounds survived: {survived} of {len(results)} (seed {args.seed}, {args.agents} agents, "
              f"{args.faults} faults a round)")
    return 0 if survived == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

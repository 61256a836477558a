"""The core loop on real sessions: honest providers, rollback, failed checks, runtime changes, boot fallback."""

from __future__ import annotations

import time

import pytest

from edge_agent.engine import Engine
from edge_agent.reconcile import Reconciler
from edge_agent.settings import AgentSettings
from fleet_protocol.messages import Batching, Desired, DeviceState, ModelRef, Reported, RuntimeConfig
from fleet_protocol.signing import sha256_file
from tests.bundles import bad_golden_bundle
from tests.edge_agent.conftest import install


class Reports:
    """The network side of the reconciler, recording what it reports (no broker needed for these tests)."""

    def __init__(self) -> None:
        self.reports: list[Reported] = []

    def watch_artifact(self, sha256: str) -> None: ...
    def unwatch_artifact(self, sha256: str) -> None: ...
    def request_chunks(self, sha256: str, chunk_size: int, missing: list[int]) -> None: ...

    def report(self, reported: Reported) -> None:
        self.reports.append(reported)

    @property
    def last(self) -> Reported:
        return self.reports[-1]


def ref(path, version: str) -> ModelRef:
    return ModelRef(name="digits", version=version, sha256=sha256_file(path), size=path.stat().st_size)


@pytest.fixture
def agent(tmp_path, keys, store, digits):
    settings = AgentSettings(device_id="dev-t", data_dir=store.root, trusted_keys=str(keys.public_path))
    engine = Engine()
    reports = Reports()
    reconciler = Reconciler(settings, store, engine, reports)
    yield reconciler, engine, reports
    engine.close()


def apply(reconciler: Reconciler, desired: Desired) -> None:
    reconciler.submit(desired)
    reconciler._apply(desired)  # the worker's step, run here so the test sees its outcome at once


def test_required_provider_the_device_lacks_reports_failed_and_never_falls_back(agent, bundles):
    reconciler, engine, reports = agent
    apply(reconciler, Desired(revision=1, model=ref(bundles["1.0.0"], "1.0.0")))
    assert reports.last.state == DeviceState.serving and reports.last.provider == "CPUExecutionProvider"
    assert "CPUExecutionProvider" in reports.last.providers_available

    runtime = RuntimeConfig(require_provider="CUDAExecutionProvider")
    apply(reconciler, Desired(revision=2, model=ref(bundles["2.0.0"], "2.0.0"), runtime=runtime))
    assert reports.last.state == DeviceState.failed
    assert "CUDAExecutionProvider is required" in reports.last.error
    assert engine.current.version == "1.0.0"  # the new model was not put on the CPU; the old one keeps serving


def test_provider_preference_is_intersected_with_what_onnxruntime_offers(agent, bundles):
    reconciler, engine, reports = agent
    runtime = RuntimeConfig(providers=["tensorrt", "openvino", "CPUExecutionProvider"])
    apply(reconciler, Desired(revision=1, model=ref(bundles["1.0.0"], "1.0.0"), runtime=runtime))
    assert reports.last.state == DeviceState.serving
    assert engine.current.providers == ["CPUExecutionProvider"]


def test_rollback_on_command_serves_previous_and_says_so(agent, bundles, store):
    reconciler, engine, reports = agent
    apply(reconciler, Desired(revision=1, model=ref(bundles["1.0.0"], "1.0.0")))
    apply(reconciler, Desired(revision=2, model=ref(bundles["2.0.0"], "2.0.0")))
    assert engine.current.version == "2.0.0" and engine.previous is None  # released, not kept
    assert reconciler.rollback() == "serving digits 1.0.0"  # reloaded from disk and golden-checked
    assert engine.current.version == "1.0.0"
    assert reports.last.state == DeviceState.rolled_back and reports.last.golden_passed
    assert store.current().manifest.version == "1.0.0" and store.previous().manifest.version == "2.0.0"


def test_model_failing_its_golden_check_is_never_served(agent, bundles, keys, tmp_path, store):
    reconciler, engine, reports = agent
    apply(reconciler, Desired(revision=1, model=ref(bundles["1.0.0"], "1.0.0")))
    bad = bad_golden_bundle(keys, tmp_path / "bad", "3.0.0", epochs=20)
    install(store, bad, keys)
    apply(reconciler, Desired(revision=2, model=ref(bad, "3.0.0")))
    assert reports.last.state == DeviceState.failed and "GoldenCheckError" in reports.last.error
    assert engine.current.version == "1.0.0" and store.current().manifest.version == "1.0.0"


def test_runtime_change_rebuilds_the_session_and_batching_follows(agent, bundles):
    reconciler, engine, reports = agent
    model = ref(bundles["1.0.0"], "1.0.0")
    apply(reconciler, Desired(revision=1, model=model))
    first = engine.current
    apply(reconciler, Desired(revision=2, model=model, runtime=RuntimeConfig(batching=Batching(enabled=True))))
    assert engine.current is first and engine.batching.enabled  # batching is the engine's: no new session
    apply(reconciler, Desired(revision=3, model=model, runtime=RuntimeConfig(intra_op_threads=2)))
    assert engine.current is not first and engine.current.runtime.intra_op_threads == 2
    assert not engine.batching.enabled and reports.last.state == DeviceState.serving


def test_boot_serves_previous_when_current_is_broken_and_keeps_runtime_rules(tmp_path, keys, store, digits):
    settings = AgentSettings(device_id="dev-t", data_dir=store.root, trusted_keys=str(keys.public_path))
    store.promote(digits["1.0.0"].sha256)
    store.promote(digits["2.0.0"].sha256)
    digits["2.0.0"].model_path.write_bytes(b"not a model")  # bit rot in the current model
    engine = Engine()
    model = Reconciler(settings, store, engine).boot()
    assert model is not None and model.version == "1.0.0"
    assert store.current().sha256 == digits["1.0.0"].sha256 and store.previous() is None

    # The fleet's last runtime rules survive a restart: a device told to require CUDA stays off the CPU offline.
    store.save_runtime(RuntimeConfig(require_provider="CUDAExecutionProvider"))
    assert Reconciler(settings, store, Engine()).boot() is None


def test_rollback_command_over_the_local_api(agent, bundles):
    import httpx

    from edge_agent.server import create_app
    from tests.edge_agent.conftest import LocalServer

    reconciler, engine, reports = agent
    with LocalServer(create_app(engine, control=reconciler)) as server:
        assert httpx.post(f"{server.url}/admin/rollback").status_code == 409  # nothing to roll back to yet
        apply(reconciler, Desired(revision=1, model=ref(bundles["1.0.0"], "1.0.0")))
        apply(reconciler, Desired(revision=2, model=ref(bundles["2.0.0"], "2.0.0")))
        r = httpx.post(f"{server.url}/admin/rollback", timeout=30)
        assert r.status_code == 200 and r.json() == {"result": "serving digits 1.0.0"}
        assert httpx.get(f"{server.url}/v2/health/ready").json()["version"] == "1.0.0"


def test_a_desired_state_without_runtime_keeps_the_devices_own_settings(tmp_path, keys, store, digits, bundles):
    """The fleet sets a runtime only on purpose: a plain rollout must not wipe what the device was configured with."""
    settings = AgentSettings(device_id="dev-own", data_dir=store.root, trusted_keys=str(keys.public_path),
                             intra_op_threads=2, batching=True)
    engine, reports = Engine(), Reports()
    reconciler = Reconciler(settings, store, engine, reports)
    try:
        apply(reconciler, Desired(revision=1, model=ref(bundles["1.0.0"], "1.0.0")))
        assert reports.last.state == DeviceState.serving
        assert engine.current.runtime.intra_op_threads == 2 and engine.batching.enabled
        assert store.load_runtime() is None  # nothing of the fleet's to remember for an offline boot

        fleet = RuntimeConfig(intra_op_threads=1)
        apply(reconciler, Desired(revision=2, model=ref(bundles["1.0.0"], "1.0.0"), runtime=fleet))
        assert engine.current.runtime.intra_op_threads == 1 and store.load_runtime() == fleet
        apply(reconciler, Desired(revision=3, model=ref(bundles["2.0.0"], "2.0.0")))  # the fleet lets go again
        assert engine.current.runtime.intra_op_threads == 2 and store.load_runtime() is None
    finally:
        engine.close()


def test_a_rollback_that_timed_out_never_runs_later(tmp_path, keys, store, digits, bundles):
    """While the worker downloads, the command times out with a clear 409, and is dropped: it must not roll
    back the model that the download then brings."""
    from types import SimpleNamespace

    import httpx

    from edge_agent.server import create_app
    from tests.bundles import digits_bundle
    from tests.edge_agent.camera.helpers import wait_for
    from tests.edge_agent.conftest import LocalServer

    settings = AgentSettings(device_id="dev-busy", data_dir=store.root, trusted_keys=str(keys.public_path),
                             chunk_timeout_s=0.2)
    engine, reports = Engine(), Reports()
    reconciler = Reconciler(settings, store, engine, reports)
    apply(reconciler, Desired(revision=1, model=ref(bundles["1.0.0"], "1.0.0")))
    apply(reconciler, Desired(revision=2, model=ref(bundles["2.0.0"], "2.0.0")))
    new = digits_bundle(keys, tmp_path / "b", "3.0.0", epochs=1)
    new_ref = ModelRef(name="digits", version="3.0.0", sha256=sha256_file(new), size=new.stat().st_size, chunk_size=4096)
    reconciler.start()
    control = SimpleNamespace(rollback=lambda timeout=60.0: reconciler.rollback(timeout=0.5))
    try:
        reconciler.submit(Desired(revision=3, model=new_ref))  # no chunk arrives yet: the worker waits for them
        wait_for(lambda: reports.last.state == DeviceState.downloading, 5, "the download to start")
        with LocalServer(create_app(engine, control=control)) as server:
            r = httpx.post(f"{server.url}/admin/rollback", timeout=10)
        assert r.status_code == 409 and r.json()["error"] == \
            "the agent is busy applying desired revision 3; rollback not done, try again"

        data = new.read_bytes()
        for i in range(new_ref.chunk_count):
            reconciler.on_chunk(new_ref.sha256, i, data[i * new_ref.chunk_size:(i + 1) * new_ref.chunk_size])
        wait_for(lambda: reports.last.state == DeviceState.serving and reports.last.revision == 3, 30, "3.0.0 to be served")
        time.sleep(1.5)  # the worker wakes at least once a second: a pending rollback would have run by now
        assert engine.current.version == "3.0.0" and store.current().sha256 == new_ref.sha256
        assert DeviceState.rolled_back not in [r.state for r in reports.reports]
    finally:
        reconciler.stop()
        engine.close()


def test_rollback_command_is_refused_from_the_network(agent, bundles):
    """No authentication on /admin/rollback: a server bound to a LAN address (the camera page) must refuse it
    to anyone but the device itself."""
    import httpx

    from edge_agent.server import create_app
    from tests.edge_agent.conftest import LocalServer, lan_address

    address = lan_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    reconciler, engine, reports = agent
    apply(reconciler, Desired(revision=1, model=ref(bundles["1.0.0"], "1.0.0")))
    apply(reconciler, Desired(revision=2, model=ref(bundles["2.0.0"], "2.0.0")))
    with LocalServer(create_app(engine, control=reconciler), host="0.0.0.0") as server:
        r = httpx.post(f"http://{address}:{server.port}/admin/rollback", timeout=30)
        assert r.status_code == 403 and "127.0.0.1" in r.json()["error"]
        assert engine.current.version == "2.0.0" and reports.last.state == DeviceState.serving
        assert httpx.get(f"http://{address}:{server.port}/v2/health/ready").status_code == 200  # the rest is open
        r = httpx.post(f"{server.url}/admin/rollback", timeout=30)  # from the device itself
        assert r.status_code == 200 and engine.current.version == "1.0.0"

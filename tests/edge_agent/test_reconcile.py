"""The core loop on real sessions, per model: honest providers, runtimes persisted only once applied, rollback,
failed checks, memory budget, removal, boot fallback, duplicate revisions."""

from __future__ import annotations

import time

import pytest

from demo.cluster import wait_for
from edge_agent.reconcile import Reconciler
from edge_agent.runtime.host import ModelHost
from edge_agent.settings import AgentSettings
from fleet_protocol.messages import (
    Batching,
    BundleRef,
    Desired,
    ModelSpec,
    ModelState,
    Reported,
    Runtime,
)
from fleet_protocol.signing import sha256_file
from tests.bundles import bad_golden_bundle, digits_bundle
from tests.edge_agent.conftest import install


class Reports:
    """The network side of the reconciler, recording what it reports (no broker needed for these tests)."""

    def __init__(self) -> None:
        self.reports: list[Reported] = []
        self.fetches: list[tuple[str, list[int]]] = []

    def watch_artifact(self, sha256: str) -> None: ...
    def unwatch_artifact(self, sha256: str) -> None: ...

    def request_chunks(self, sha256: str, chunk_size: int, missing: list[int]) -> None:
        self.fetches.append((sha256, missing))

    def report(self, reported: Reported) -> None:
        self.reports.append(reported)

    @property
    def last(self) -> Reported:
        return self.reports[-1]

    def model(self, name: str = "digits"):
        return self.last.models[name]


def ref(path, version: str, name: str = "digits", chunk_size: int = 128 * 1024) -> BundleRef:
    return BundleRef(name=name, version=version, sha256=sha256_file(path), size=path.stat().st_size, chunk_size=chunk_size)


def spec(path, version: str, name: str = "digits", runtime: Runtime | None = None) -> ModelSpec:
    if runtime is None:
        return ModelSpec(bundle=ref(path, version, name))
    return ModelSpec(bundle=ref(path, version, name), runtime=runtime)


def make(store, keys, **settings) -> tuple[Reconciler, ModelHost, Reports]:
    config = AgentSettings(device_id="dev-t", data_dir=store.root, trusted_keys=str(keys.public_path), **settings)
    host, reports = ModelHost(), Reports()
    return Reconciler(config, store, host, reports), host, reports


@pytest.fixture
def other(store, keys, tmp_path):
    """A second model name on the same device (the digits network as `digits-b`), installed in the store."""
    path = digits_bundle(keys, tmp_path / "other", "1.0.0", epochs=1, name="digits-b")
    install(store, path, keys)
    return path


@pytest.fixture
def agent(store, keys, digits):
    reconciler, host, reports = make(store, keys)
    yield reconciler, host, reports
    host.close()


def apply(reconciler: Reconciler, desired: Desired) -> None:
    reconciler.submit(desired)
    reconciler.settle()  # the workers' step, run here so the test sees its outcome at once


def test_required_provider_missing_fails_that_model_only_and_a_restart_still_serves_everything(agent, bundles, other, store, keys):
    reconciler, host, reports = agent
    apply(reconciler, Desired(revision=1, models={"digits": spec(bundles["1.0.0"], "1.0.0"), "digits-b": spec(other, "1.0.0")}))
    assert reports.model().state == ModelState.serving and reports.model().provider == "CPUExecutionProvider"
    assert "CPUExecutionProvider" in reports.last.providers_available
    b = host.get("digits-b")

    cuda = Runtime(require_provider="CUDAExecutionProvider")
    apply(reconciler, Desired(revision=2, models={"digits": spec(bundles["2.0.0"], "2.0.0", runtime=cuda),
                                                  "digits-b": spec(other, "1.0.0")}))
    report = reports.model()
    assert report.state == ModelState.failed and "CUDAExecutionProvider is required" in report.error
    assert report.serving.version == "1.0.0" and report.desired.version == "2.0.0"
    assert host.get("digits").version == "1.0.0"  # not put on the CPU; the old one keeps serving
    assert host.get("digits-b") is b and reports.model("digits-b").state == ModelState.serving  # untouched
    assert store.runtime("digits") is None  # the refused runtime was never persisted

    # After a restart, everything still serves: the store holds only what applied.
    again, host2, _ = make(store, keys)
    assert sorted(m.name for m in again.boot()) == ["digits", "digits-b"]
    assert host2.get("digits").version == "1.0.0" and host2.get("digits").provider == "CPUExecutionProvider"
    host2.close()


def test_provider_preference_is_intersected_with_what_onnxruntime_offers(agent, bundles):
    reconciler, host, reports = agent
    runtime = Runtime(providers=["TensorrtExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"])
    apply(reconciler, Desired(revision=1, models={"digits": spec(bundles["1.0.0"], "1.0.0", runtime=runtime)}))
    assert reports.model().state == ModelState.serving
    assert host.get("digits").providers == ["CPUExecutionProvider"]
    assert reports.model().precision.value == "fp32" and reports.model().golden_passed is True


def test_rollback_on_command_serves_previous_and_says_so(agent, bundles, store):
    reconciler, host, reports = agent
    apply(reconciler, Desired(revision=1, models={"digits": spec(bundles["1.0.0"], "1.0.0")}))
    apply(reconciler, Desired(revision=2, models={"digits": spec(bundles["2.0.0"], "2.0.0")}))
    assert host.get("digits").version == "2.0.0"
    assert reconciler.rollback("digits") == "serving digits 1.0.0"  # reloaded from disk and golden-checked
    assert host.get("digits").version == "1.0.0"
    assert reports.model().state == ModelState.serving and reports.model().error == "rolled back on command"
    assert store.current("digits").manifest.version == "1.0.0" and store.previous("digits").manifest.version == "2.0.0"
    reconciler.settle()
    assert host.get("digits").version == "1.0.0"  # the same desired revision is not applied again


def test_model_failing_its_golden_check_is_never_served(agent, bundles, keys, tmp_path, store):
    reconciler, host, reports = agent
    apply(reconciler, Desired(revision=1, models={"digits": spec(bundles["1.0.0"], "1.0.0")}))
    bad = bad_golden_bundle(keys, tmp_path / "bad", "3.0.0", epochs=20)
    install(store, bad, keys)
    apply(reconciler, Desired(revision=2, models={"digits": spec(bad, "3.0.0")}))
    assert reports.model().state == ModelState.failed and "GoldenCheckError" in reports.model().error
    assert host.get("digits").version == "1.0.0" and store.current("digits").manifest.version == "1.0.0"


def test_runtime_change_rebuilds_the_session_and_batching_follows(agent, bundles, store):
    reconciler, host, reports = agent
    apply(reconciler, Desired(revision=1, models={"digits": spec(bundles["1.0.0"], "1.0.0")}))
    first = host.get("digits")
    batched = Runtime(batching=Batching(enabled=True))
    apply(reconciler, Desired(revision=2, models={"digits": spec(bundles["1.0.0"], "1.0.0", runtime=batched)}))
    assert host.get("digits").session is first.session and host.get("digits").batched  # no new session
    assert store.runtime("digits") == batched
    apply(reconciler, Desired(revision=3, models={"digits": spec(bundles["1.0.0"], "1.0.0", runtime=Runtime(intra_op_threads=2))}))
    assert host.get("digits").session is not first.session and host.get("digits").runtime.intra_op_threads == 2
    assert not host.get("digits").batched and reports.model().state == ModelState.serving


def test_boot_serves_previous_when_current_is_broken(store, keys, digits):
    store.promote("digits", digits["1.0.0"].sha256, None)
    store.promote("digits", digits["2.0.0"].sha256, None)
    digits["2.0.0"].model_path.write_bytes(b"not a model")  # bit rot in the current model
    reconciler, _, reports = make(store, keys)
    [model] = reconciler.boot()
    assert model.version == "1.0.0"
    assert store.current("digits").sha256 == digits["1.0.0"].sha256 and store.previous("digits") is None
    assert reports.model().state == ModelState.serving and reports.last.revision == 0


def test_a_model_left_out_of_the_desired_state_is_unloaded(agent, bundles, other, store):
    reconciler, host, reports = agent
    apply(reconciler, Desired(revision=1, models={"digits": spec(bundles["1.0.0"], "1.0.0"), "digits-b": spec(other, "1.0.0")}))
    kept = host.get("digits")
    apply(reconciler, Desired(revision=2, models={"digits": spec(bundles["1.0.0"], "1.0.0")}))
    assert host.names() == ["digits"] and host.get("digits") is kept
    assert list(reports.last.models) == ["digits"] and store.names() == ["digits"]
    apply(reconciler, Desired(revision=3))  # and back to no model at all
    assert host.names() == [] and reports.last.models == {} and reports.last.revision == 3


def test_a_model_over_the_memory_budget_is_refused_before_loading(agent, bundles, other):
    reconciler, host, reports = agent
    apply(reconciler, Desired(revision=1, models={"digits-b": spec(other, "1.0.0")}))
    b = host.get("digits-b")
    apply(reconciler, Desired(revision=2, memory_budget_mb=9,
                              models={"digits-b": spec(other, "1.0.0"), "digits": spec(bundles["2.0.0"], "2.0.0")}))
    report = reports.model()
    assert report.state == ModelState.failed and "MemoryBudgetError" in report.error and "9 MiB memory budget" in report.error
    assert host.get("digits") is None and host.get("digits-b") is b
    apply(reconciler, Desired(revision=3, memory_budget_mb=64,
                              models={"digits-b": spec(other, "1.0.0"), "digits": spec(bundles["2.0.0"], "2.0.0")}))
    assert reports.model().state == ModelState.serving


def test_a_desired_state_without_runtime_keeps_the_devices_own_settings(store, keys, digits, bundles):
    """The fleet sets a runtime only on purpose: a plain rollout must not wipe what the device was configured with."""
    reconciler, host, reports = make(store, keys, intra_op_threads=2, batching=True)
    try:
        apply(reconciler, Desired(revision=1, models={"digits": spec(bundles["1.0.0"], "1.0.0")}))
        assert reports.model().state == ModelState.serving
        assert host.get("digits").runtime.intra_op_threads == 2 and host.get("digits").batched
        assert store.runtime("digits") is None  # nothing of the fleet's to remember for an offline boot

        fleet = Runtime(intra_op_threads=1)
        apply(reconciler, Desired(revision=2, models={"digits": spec(bundles["1.0.0"], "1.0.0", runtime=fleet)}))
        assert host.get("digits").runtime.intra_op_threads == 1 and store.runtime("digits") == fleet
        apply(reconciler, Desired(revision=3, models={"digits": spec(bundles["2.0.0"], "2.0.0")}))  # the fleet lets go
        assert host.get("digits").runtime.intra_op_threads == 2 and store.runtime("digits") is None
    finally:
        host.close()


def test_a_provider_that_builds_an_engine_reports_building(agent, bundles, monkeypatch):
    from edge_agent.runtime.providers import CPU

    reconciler, _, reports = agent
    monkeypatch.setattr(CPU, "builds_engine", True)  # as TensorRT does: the session creation compiles
    apply(reconciler, Desired(revision=1, models={"digits": spec(bundles["1.0.0"], "1.0.0")}))
    states = [r.models["digits"].state for r in reports.reports if "digits" in r.models]
    assert ModelState.building in states and states[-1] == ModelState.serving
    assert ModelState.loading not in states


def _deliver(reconciler: Reconciler, path, r: BundleRef, indices=None) -> None:
    data = path.read_bytes()
    for i in indices if indices is not None else range(r.chunk_count):
        reconciler.on_chunk(r.sha256, i, data[i * r.chunk_size:(i + 1) * r.chunk_size])


def test_a_repeated_desired_revision_is_acknowledged_and_never_restarts_a_download(store, keys, digits, bundles, tmp_path):
    reconciler, host, reports = make(store, keys, chunk_timeout_s=0.3)
    new = digits_bundle(keys, tmp_path / "b", "3.0.0", epochs=1)
    new_ref = ref(new, "3.0.0", chunk_size=4096)
    desired = Desired(revision=5, models={"digits": ModelSpec(bundle=new_ref)})
    reconciler.start()
    try:
        reconciler.submit(desired)
        wait_for(lambda: reports.fetches, 10, "the first fetch")
        _deliver(reconciler, new, new_ref, range(new_ref.chunk_count // 2))
        wait_for(lambda: reports.model().state == ModelState.downloading and reports.model().progress >= 0.4, 10, "half the chunks")
        before = len(reports.reports)
        reconciler.submit(desired)  # the same revision again (hello answer, re-publication)
        reconciler.submit(desired.model_copy(update={"revision": 4}))  # an older one
        assert len(reports.reports) == before + 2 and reports.last.revision == 5  # both acknowledged
        time.sleep(0.8)  # a few chunk timeouts: the worker asks for what is missing, never for everything
        for _sha, missing in reports.fetches[1:]:
            assert len(missing) <= new_ref.chunk_count - new_ref.chunk_count // 2
        _deliver(reconciler, new, new_ref)
        wait_for(lambda: reports.model().state == ModelState.serving, 30, "3.0.0 to serve")
        assert host.get("digits").version == "3.0.0"
    finally:
        reconciler.stop()
        host.close()


def test_a_rollback_that_timed_out_never_runs_later(store, keys, digits, bundles, tmp_path):
    """While the worker downloads, the command times out with a clear 409, and is dropped: it must not roll
    back the model that the download then brings."""
    from types import SimpleNamespace

    import httpx

    from edge_agent.http.server import create_app
    from tests.edge_agent.conftest import LocalServer

    reconciler, host, reports = make(store, keys, chunk_timeout_s=0.2)
    apply(reconciler, Desired(revision=1, models={"digits": spec(bundles["1.0.0"], "1.0.0")}))
    apply(reconciler, Desired(revision=2, models={"digits": spec(bundles["2.0.0"], "2.0.0")}))
    new = digits_bundle(keys, tmp_path / "b", "3.0.0", epochs=1)
    new_ref = ref(new, "3.0.0", chunk_size=4096)
    reconciler.start()
    control = SimpleNamespace(rollback=lambda name, timeout=60.0: reconciler.rollback(name, timeout=0.5))
    try:
        reconciler.submit(Desired(revision=3, models={"digits": ModelSpec(bundle=new_ref)}))
        wait_for(lambda: reports.model().state == ModelState.downloading, 5, "the download to start")
        with LocalServer(create_app(host, control=control)) as server:
            r = httpx.post(f"{server.url}/admin/models/digits/rollback", timeout=10)
        assert r.status_code == 409 and r.json()["error"] == \
            "the agent is busy applying desired revision 3; rollback not done, try again"
        _deliver(reconciler, new, new_ref)
        wait_for(lambda: reports.model().state == ModelState.serving and reports.model().serving.version == "3.0.0",
                 30, "3.0.0 to be served")
        time.sleep(1.5)  # the worker wakes at least once a second: a pending rollback would have run by now
        assert host.get("digits").version == "3.0.0" and store.current("digits").sha256 == new_ref.sha256
        assert all(r.models["digits"].error != "rolled back on command" for r in reports.reports if "digits" in r.models)
    finally:
        reconciler.stop()
        host.close()


def test_rollback_command_over_the_local_api_and_refused_from_the_network(agent, bundles):
    """No authentication on the admin routes: a server bound to a LAN address must refuse them to anyone but
    the device itself."""
    import httpx

    from edge_agent.http.server import create_app
    from tests.edge_agent.conftest import LocalServer, lan_address

    reconciler, host, _ = agent
    apply(reconciler, Desired(revision=1, models={"digits": spec(bundles["1.0.0"], "1.0.0")}))
    with LocalServer(create_app(host, control=reconciler), host="0.0.0.0") as server:
        assert httpx.post(f"{server.url}/admin/models/digits/rollback").status_code == 409  # nothing to roll back to
        assert httpx.post(f"{server.url}/admin/models/nope/rollback").status_code == 409
        apply(reconciler, Desired(revision=2, models={"digits": spec(bundles["2.0.0"], "2.0.0")}))
        address = lan_address()
        if address is not None:
            r = httpx.post(f"http://{address}:{server.port}/admin/models/digits/rollback", timeout=30)
            assert r.status_code == 403 and "127.0.0.1" in r.json()["error"]
            assert host.get("digits").version == "2.0.0"
            assert httpx.get(f"http://{address}:{server.port}/v2/health/ready").status_code == 200  # the rest is open
        r = httpx.post(f"{server.url}/admin/models/digits/rollback", timeout=30)  # from the device itself
        assert r.status_code == 200 and r.json() == {"result": "serving digits 1.0.0"}
        assert httpx.get(f"{server.url}/v2/health/ready").json()["models"]["digits"]["version"] == "1.0.0"


class StubCameras:
    """The camera manager's interface as the reconciler uses it (edge_agent/camera/manager.py), recorded."""

    def __init__(self) -> None:
        self.applied: list[list] = []
        self.refuse: dict[str, str] = {}
        self.state = "running"

    def apply(self, cameras: list) -> None:
        self.applied.append(cameras)

    def report(self) -> dict:
        from fleet_protocol.messages import CameraReport, CameraState

        return {c.name: CameraReport(state=CameraState(self.state), models=c.models()) for c in (self.applied[-1] if self.applied else [])}

    def check(self, models: dict) -> dict[str, str]:
        return dict(self.refuse)


def test_cameras_follow_the_desired_state_and_refuse_a_model_they_cannot_use(agent, bundles, other):
    from fleet_protocol.cameras import Camera

    reconciler, host, reports = agent
    cameras = reconciler.cameras = StubCameras()
    door = Camera(name="door", source={"type": "file", "path": "door.mp4"}, detector="digits")
    apply(reconciler, Desired(revision=1, cameras=[door],
                              models={"digits": spec(bundles["1.0.0"], "1.0.0"), "digits-b": spec(other, "1.0.0")}))
    assert cameras.applied == [[door]]
    assert reports.last.cameras["door"].state.value == "running" and reports.last.cameras["door"].models == ["digits"]

    cameras.refuse = {"door": "no post-processing plug-in for task 'classification'"}
    apply(reconciler, Desired(revision=2, cameras=[door],
                              models={"digits": spec(bundles["2.0.0"], "2.0.0"), "digits-b": spec(other, "1.0.0")}))
    report = reports.model()
    assert report.state == ModelState.failed and "camera 'door': no post-processing plug-in" in report.error
    assert host.get("digits").version == "1.0.0"  # the camera's model keeps serving

    published = len(reports.reports)
    reconciler.refresh()
    assert len(reports.reports) == published  # nothing changed: nothing published
    cameras.state = "reconnecting"
    reconciler.refresh()
    assert reports.last.cameras["door"].state.value == "reconnecting"


def test_what_this_agent_cannot_do_is_reported_not_ignored(agent, bundles):
    """An encrypted shadow candidate: said in the report; the rest runs on. (Encrypted bundles: test_confidential.py.)"""
    from fleet_protocol.messages import Shadow, WrappedKey

    reconciler, host, reports = agent
    apply(reconciler, Desired(revision=1, models={"digits": spec(bundles["1.0.0"], "1.0.0")}))
    key = WrappedKey(key_id="k1", ephemeral_public_key="A" * 43, nonce="B" * 16, ciphertext="C" * 64)
    shadow = Shadow(bundle=ref(bundles["2.0.0"], "2.0.0"), key=key)
    apply(reconciler, Desired(revision=3, models={"digits": ModelSpec(bundle=ref(bundles["1.0.0"], "1.0.0"), shadow=shadow)}))
    report = reports.model()
    assert report.state == ModelState.serving and report.shadow.state == ModelState.failed
    assert "encrypted" in report.shadow.error and report.shadow.bundle.version == "2.0.0"

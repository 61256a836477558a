"""Desired state v2 through the core service (SQLite and PostgreSQL): composition and its precedence, profiles,
labels, device configuration, models assigned and removed, rollouts of several models on one device, hello."""

from __future__ import annotations

import pytest

from fleet_api.desired.compose import Assignment, NamedProfile, compose
from fleet_api.desired.specs import DeviceConfig, ProfileSpec
from fleet_api.errors import Conflict, Invalid, NotFound
from fleet_api.rollouts.states import (
    MEMBER_MOVES,
    ROLLOUT_MOVES,
    InvalidTransition,
    MemberState,
    RolloutState,
    check_member,
    check_rollout,
)
from fleet_protocol.messages import (
    BundleRef,
    Desired,
    Fetch,
    Hello,
    ModelState,
    Runtime,
)
from model_tools.pack import pack_bundle
from tests.bundles import digits
from tests.fleet_api.devices import (
    OPS,
    ROOT,
    desired_of,
    model_of,
    model_report,
    play_devices,
    report,
    upload,
)

SERVING, FAILED = ModelState.serving, ModelState.failed
CAM = {"name": "gate", "source": {"type": "rtsp", "url": "rtsp://cam.local/1"}, "detector": "digits"}


def ref(name: str, version: str = "1.0.0") -> BundleRef:
    return BundleRef(name=name, version=version, sha256=(name[0] * 64)[:64].replace(name[0], "a"), size=10)


# --- the pure function ------------------------------------------------------------------------------------
def test_composition_precedence_device_config_over_profiles_by_priority_assignment_runtime_first():
    low = NamedProfile("site", ProfileSpec(selector={"site": "p3"}, priority=1, cameras=[CAM], memory_budget_mb=512,
                                           runtime={"digits": Runtime(intra_op_threads=2), "faces": Runtime(intra_op_threads=3)}))
    high = NamedProfile("jetson", ProfileSpec(selector={"hw": "jetson"}, priority=10,
                                              runtime={"digits": Runtime(intra_op_threads=4)}))
    other = NamedProfile("elsewhere", ProfileSpec(selector={"site": "p9"}, priority=99, memory_budget_mb=1))
    labels = {"site": "p3", "hw": "jetson"}
    assigned = {"digits": Assignment(ref("digits")), "faces": Assignment(ref("faces"), rollout_id=7),
                "ocr": Assignment(ref("ocr"), runtime=Runtime(require_provider="CUDAExecutionProvider"), rollout_id=8)}

    c = compose(labels, None, [low, high, other], assigned)
    d = c.desired
    assert sorted(d.models) == ["digits", "faces", "ocr"]  # exactly the assigned models: profiles add none
    assert d.models["digits"].runtime.intra_op_threads == 4  # the higher priority profile wins
    assert d.models["faces"].runtime.intra_op_threads == 3 and d.models["faces"].rollout_id == 7
    assert d.models["ocr"].runtime.require_provider == "CUDAExecutionProvider"  # the rollout's runtime wins
    assert [cam.name for cam in d.cameras] == ["gate"] and d.memory_budget_mb == 512  # "elsewhere" does not match
    assert c.sources["models"]["digits"] == {"bundle": "assignment", "runtime": "profile:jetson"}
    assert c.sources["models"]["ocr"]["runtime"] == "rollout" and c.sources["cameras"] == "profile:site"
    assert c.sources["profiles"] == ["jetson", "site"]

    config = DeviceConfig(cameras=[], runtime={"digits": Runtime(intra_op_threads=1)})
    c = compose(labels, config, [low, high], assigned)
    assert c.desired.cameras == [] and c.sources["cameras"] == "device"  # [] set on the device: no cameras
    assert c.desired.models["digits"].runtime.intra_op_threads == 1 and c.sources["models"]["digits"]["runtime"] == "device"
    assert c.desired.memory_budget_mb == 512  # not set on the device: the profile's
    # Pure: the same inputs give the same body; a changed input gives another.
    assert compose(labels, config, [low, high], assigned).body() == c.body()
    moved = compose({"site": "p9", "hw": "jetson"}, config, [low, high, other], assigned)
    assert moved.body() != c.body() and moved.desired.memory_budget_mb == 1 and moved.body()["schema"] == 2


def test_unknown_fields_are_refused_in_every_spec():
    with pytest.raises(ValueError, match="require_providr"):
        DeviceConfig.model_validate({"runtime": {"digits": {"require_providr": "CUDAExecutionProvider"}}})
    with pytest.raises(ValueError, match="surprise"):
        ProfileSpec.model_validate({"selector": "site=a", "surprise": 1})
    with pytest.raises(ValueError, match="unique"):
        DeviceConfig.model_validate({"cameras": [CAM, CAM]})
    assert ProfileSpec.model_validate({"selector": "site=a, hw=x"}).selector == {"site": "a", "hw": "x"}


def test_the_transition_tables_cover_every_state_and_the_machine_consults_them():
    assert set(ROLLOUT_MOVES) == set(RolloutState) and set(MEMBER_MOVES) == set(MemberState)
    assert check_rollout(1, "running", RolloutState.paused) is RolloutState.paused
    for current, target in (("aborted", RolloutState.running), ("succeeded", RolloutState.paused),
                            ("rolled_back", RolloutState.rolled_back)):
        with pytest.raises(InvalidTransition):
            check_rollout(1, current, target)
    with pytest.raises(InvalidTransition):
        check_member("d", "reverted", MemberState.succeeded)
    with pytest.raises(ValueError):
        check_rollout(1, "exploded", RolloutState.running)


# --- through the service ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def letters_bundle(keys, tmp_path_factory):
    """A second model name: the digits CNN packed as `letters`."""
    zoo = digits(1)
    path, _ = pack_bundle(zoo.onnx, name="letters", version="1.0.0", golden_inputs=zoo.golden_inputs,
                          private_key_pem=keys.private_path.read_bytes(), out_dir=tmp_path_factory.mktemp("letters"),
                          task="classification", labels=zoo.labels, preprocessing=zoo.preprocessing)
    return path


@pytest.fixture
def fleet(make_service, bundles, letters_bundle):
    service = make_service()
    v1, v2 = upload(service, bundles["1.0.0"]), upload(service, bundles["2.0.0"])
    letters = upload(service, letters_bundle)
    for i in range(3):
        service.register_device(f"d{i}", {"site": "lab"})
    return service, v1, v2, letters


def revisions(service) -> dict[str, int]:
    return {d["id"]: d["desired_revision"] for d in service.list_devices()}


def test_profiles_labels_and_device_config_each_make_a_new_revision_through_the_outbox_audited(fleet):
    service, v1, _, _ = fleet
    assert revisions(service) == {"d0": 0, "d1": 0, "d2": 0}  # nothing set yet: nothing to send
    view, created = service.put_profile("lab-cams", ProfileSpec(selector={"site": "lab"}, cameras=[CAM]), OPS, create_only=True)
    assert created and view["devices_changed"] == ["d0", "d1", "d2"]
    assert revisions(service) == {"d0": 1, "d1": 1, "d2": 1}
    assert [c["name"] for c in desired_of(service, "d0")["cameras"]] == ["gate"]
    assert [Desired.parse(p).revision for t, p in service.publisher.desired() if "/d0/" in t] == [1]
    with pytest.raises(Conflict):
        service.put_profile("lab-cams", ProfileSpec(), OPS, create_only=True)
    # The same profile again changes nothing: no revision.
    view, created = service.put_profile("lab-cams", ProfileSpec(selector={"site": "lab"}, cameras=[CAM]), OPS)
    assert not created and view["devices_changed"] == [] and revisions(service)["d0"] == 1
    # Labels move d1 out of the profile's reach.
    service.update_labels("d1", {"site": "yard", "rack": "4"}, OPS)
    assert desired_of(service, "d1")["cameras"] == [] and service.get_device("d1")["labels"] == {"site": "yard", "rack": "4"}
    service.update_labels("d1", {"rack": None}, OPS)
    assert service.get_device("d1")["labels"] == {"site": "yard"}
    # Device config wins over the profile: d0 runs no camera.
    service.set_config("d0", DeviceConfig(cameras=[], memory_budget_mb=256), OPS)
    d0 = desired_of(service, "d0")
    assert d0["cameras"] == [] and d0["memory_budget_mb"] == 256 and d0["revision"] == 2
    assert service.get_config("d0")["config"]["memory_budget_mb"] == 256
    assert service.get_desired("d0")["sources"]["cameras"] == "device"
    # Deleting the profile takes its cameras from d2.
    assert service.delete_profile("lab-cams", OPS)["devices_changed"] == ["d2"]
    assert desired_of(service, "d2")["cameras"] == []
    with pytest.raises(NotFound):
        service.delete_profile("lab-cams", OPS)
    actions = [a["action"] for a in service.audit_log()]
    for action in ("profile.create", "profile.update", "profile.delete", "device.labels", "device.config"):
        assert action in actions
    # Every revision went out once, in order.
    sent = [(t.split("/")[-2], Desired.parse(p).revision) for t, p in service.publisher.desired()]
    assert len(sent) == len(set(sent)) and all(d["published_revision"] == d["desired_revision"] for d in service.list_devices())


def test_a_model_assigned_directly_and_removed_again(fleet):
    service, v1, v2, letters = fleet
    view = service.assign_model("d0", "digits", "1.0.0", Runtime(intra_op_threads=2), OPS)
    assert view["desired"]["models"]["digits"]["bundle"]["sha256"] == v1["sha256"]
    assert view["desired"]["models"]["digits"]["runtime"]["intra_op_threads"] == 2
    assert view["sources"]["models"]["digits"] == {"bundle": "assignment", "runtime": "assignment"}
    service.assign_model("d0", "letters", "1.0.0", None, OPS)
    assert sorted(desired_of(service, "d0")["models"]) == ["digits", "letters"]
    view = service.remove_model("d0", "digits", OPS)
    assert sorted(view["desired"]["models"]) == ["letters"] and view["revision"] == 3
    with pytest.raises(NotFound, match="has no model 'digits'"):
        service.remove_model("d0", "digits", OPS)
    with pytest.raises(NotFound, match="no bundle for model 'digits' version '9'"):
        service.assign_model("d0", "digits", "9", None, OPS)
    assert {"device.model.assign", "device.model.remove"} <= {a["action"] for a in service.audit_log()}


def test_rollouts_of_two_models_run_on_the_same_devices_at_once_and_leave_other_models_alone(fleet):
    service, v1, v2, letters = fleet
    for dev in ("d0", "d1", "d2"):
        service.assign_model(dev, "digits", "1.0.0", None, OPS)
    a = service.create_rollout("digits", "2.0.0", "site=lab", "100%", {}, OPS)
    b = service.create_rollout("letters", "1.0.0", "site=lab", "100%", {}, OPS)  # another model: no conflict
    with pytest.raises(Conflict, match="active rollout of model 'letters'"):
        service.create_rollout("letters", "1.0.0", "site=lab", "100%", {}, OPS)
    with pytest.raises(Conflict, match="rollout 1 is moving 'digits'"):
        service.assign_model("d0", "digits", "1.0.0", None, OPS)
    with pytest.raises(Conflict, match="rollout 2 is moving 'letters'"):
        service.remove_model("d0", "letters", OPS)
    d0 = desired_of(service, "d0")
    assert d0["models"]["digits"]["bundle"]["version"] == "2.0.0" and d0["models"]["digits"]["rollout_id"] == a["id"]
    assert d0["models"]["letters"]["rollout_id"] == b["id"]
    # Each device reports both models; each rollout judges only its own.
    for dev in ("d0", "d1", "d2"):
        rev = desired_of(service, dev)["revision"]
        report(service, dev, rev, letters, FAILED, "CUDAExecutionProvider is not available",
               others={"digits": model_report(v2)})
    assert service.get_rollout(a["id"])["state"] == "succeeded"
    b = service.get_rollout(b["id"])
    assert b["state"] == "aborted" and "CUDAExecutionProvider is not available" in b["reason"]
    # The aborted rollout took `letters` away again (the devices had none) and left digits 2.0.0 alone.
    for dev in ("d0", "d1", "d2"):
        d = desired_of(service, dev)
        assert sorted(d["models"]) == ["digits"] and d["models"]["digits"]["bundle"]["version"] == "2.0.0"


def test_a_rollout_carries_its_runtime_and_an_abort_restores_the_previous_bundle_and_runtime(fleet):
    service, v1, v2, _ = fleet
    service.assign_model("d0", "digits", "1.0.0", Runtime(intra_op_threads=2), OPS)
    cuda = Runtime(require_provider="CUDAExecutionProvider", precision="fp16")
    r = service.create_rollout("digits", "2.0.0", "", "100%", {}, OPS, runtime=cuda)
    assert r["runtime"]["require_provider"] == "CUDAExecutionProvider"
    spec = model_of(service, "d0", "digits")
    assert spec["runtime"]["require_provider"] == "CUDAExecutionProvider" and spec["runtime"]["precision"] == "fp16"
    assert service.get_desired("d0")["sources"]["models"]["digits"] == {"bundle": f"rollout:{r['id']}", "runtime": "rollout"}
    play_devices(service, r["id"], lambda dev: (FAILED, v1 if dev == "d0" else None))
    r = service.get_rollout(r["id"])
    assert r["state"] == "aborted"
    spec = model_of(service, "d0", "digits")  # back to what it had: 1.0.0 with its own runtime
    assert spec["bundle"]["version"] == "1.0.0" and spec["runtime"]["intra_op_threads"] == 2
    assert spec["runtime"]["require_provider"] is None and spec["rollout_id"] is None
    assert model_of(service, "d1", "digits") is None  # it had no digits before: it has none now
    # rolled back after success: back to "no model" too
    r2 = service.create_rollout("digits", "2.0.0", "", "100%", {}, OPS)
    play_devices(service, r2["id"], lambda dev: (SERVING, v2))
    assert service.get_rollout(r2["id"])["state"] == "succeeded"
    service.assign_model("d2", "digits", "1.0.0", None, OPS)  # changed directly since
    with pytest.raises(Conflict, match="d2.*changed since by a direct assignment"):
        service.control_rollout(r2["id"], "rollback", OPS)
    service.remove_model("d2", "digits", OPS)
    assert service.control_rollout(r2["id"], "rollback", OPS)["state"] == "rolled_back"
    assert model_of(service, "d1", "digits") is None and model_of(service, "d0", "digits")["bundle"]["version"] == "1.0.0"


def test_hello_republishes_the_desired_state_from_the_database(fleet):
    """A broker restarted without persistence lost the retained desired state: the device's hello brings it back."""
    service, v1, _, _ = fleet
    service.assign_model("d0", "digits", "1.0.0", None, OPS)
    before = len(service.publisher.desired())
    assert service.on_hello("d0", Hello(revision=0)) is True
    sent = service.publisher.desired()[before:]
    assert len(sent) == 1 and sent[0][0] == "edgefleet/v1/devices/d0/desired"
    assert Desired.parse(sent[0][1]).models["digits"].bundle.sha256 == v1["sha256"]
    assert [m for m in service.publisher.messages if m[0].endswith("/d0/desired")][-1][3] is True  # retained
    assert service.on_hello("d1", Hello()) is False  # nothing was ever set for it
    service.revoke_device("d2", ROOT)
    with pytest.raises(NotFound, match="revoked"):
        service.on_hello("d2", Hello())
    with pytest.raises(NotFound):
        service.on_hello("ghost", Hello())


def test_a_fetch_with_an_out_of_range_chunk_index_is_refused(fleet):
    service, v1, _, _ = fleet
    service.assign_model("d0", "digits", "1.0.0", None, OPS)
    chunk = model_of(service, "d0", "digits")["bundle"]["chunk_size"]
    count = -(-v1["size"] // chunk)
    assert service.on_fetch("d0", Fetch(sha256=v1["sha256"], chunk_size=chunk, missing=[count - 1])) == 1
    with pytest.raises(Invalid, match=f"chunk index {count} is out of range"):
        service.on_fetch("d0", Fetch(sha256=v1["sha256"], chunk_size=chunk, missing=[0, count]))


def test_labels_and_config_of_unknown_or_revoked_devices(fleet):
    service, *_ = fleet
    with pytest.raises(NotFound):
        service.update_labels("ghost", {"a": "b"}, OPS)
    service.revoke_device("d2", ROOT)
    with pytest.raises(NotFound, match="revoked"):
        service.set_config("d2", DeviceConfig(), OPS)


def test_the_migration_turns_a_schema_1_desired_model_into_an_assignment(db_url):
    """A database of the v1 API: its devices' one desired model each becomes their assignment, under the same revision."""
    import json as _json

    from sqlalchemy import text

    from fleet_api.db.session import make_engine, make_sessions, migrate
    from fleet_api.db.tables import Device, DeviceModel
    from fleet_api.desired import outbox

    engine = make_engine(db_url)
    try:
        migrate(engine, "0001")
        v1 = {"revision": 3, "model": {"name": "digits", "version": "1.0.0", "sha256": "b" * 64, "size": 1000,
                                       "chunk_size": 131072}, "runtime": {"intra_op_threads": 2, "sources": []}, "rollout_id": 4}
        with engine.begin() as conn:
            for dev, desired in (("old", v1), ("empty", None)):
                conn.execute(text(
                    "INSERT INTO devices (id, labels, created_at, desired_revision, desired, published_revision, online, revoked) "
                    "VALUES (:id, '{}', CURRENT_TIMESTAMP, 3, :d, 3, false, false)"), {"id": dev, "d": _json.dumps(desired) if desired else None})
        sessions = make_sessions(engine)  # upgrades to head
        with sessions() as db:
            row = db.get(DeviceModel, ("old", "digits"))
            assert (row.bundle_sha256, row.rollout_id, row.runtime) == ("b" * 64, 4, None)
            device = db.get(Device, "old")
            desired = Desired.parse(outbox.payload(device))
            assert desired.revision == 3 and desired.models["digits"].bundle.version == "1.0.0"
            assert db.get(Device, "empty").desired is None
    finally:
        engine.dispose()

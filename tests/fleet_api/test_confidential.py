"""Confidential models in the fleet API: data keys sealed at rest, wrapped per device in the desired state, device
keys enrolled at registration or pinned at first contact, revoked keys get nothing new, per-model policy."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from demo.cluster import wait_for
from fleet_api.app import create_app
from fleet_api.db.tables import ModelKey
from fleet_api.errors import Conflict, Invalid
from fleet_api.settings import ApiSettings
from fleet_protocol.encryption import DeviceKey, b64d, b64e, new_data_key
from fleet_protocol.messages import Reported, WrappedKey
from tests.bundles import digits_bundle
from tests.fleet_api.devices import OPS, ROOT, desired_of, model_of, upload

MASTER = new_data_key()


@pytest.fixture(scope="module")
def encrypted(keys, tmp_path_factory):
    """digits 1.0.0 encrypted (its bundle and .key file) and 2.0.0 in plaintext."""
    out = tmp_path_factory.mktemp("enc")
    path = digits_bundle(keys, out, "1.0.0", epochs=1, encrypt=True)
    return {"1.0.0": path, "key": json.loads(path.with_suffix(".key").read_text()),
            "2.0.0": digits_bundle(keys, out, "2.0.0", epochs=1)}


@pytest.fixture
def fleet(make_service):
    return make_service(master_key=b64e(MASTER))


def device_key(tmp_path, name) -> DeviceKey:
    return DeviceKey.load_or_create(tmp_path / f"{name}.pem")


def test_keys_are_sealed_wrapped_per_device_and_stable_across_recomposition(fleet, encrypted, tmp_path):
    view = upload(fleet, encrypted["1.0.0"])
    assert view["encryption_key_id"] == encrypted["key"]["key_id"]
    cam = device_key(tmp_path, "cam")
    fleet.register_device("cam-1", {"site": "a"}, ROOT, public_key=cam.public_b64)
    fleet.register_device("cam-2", {"site": "a"}, ROOT)  # no key enrolled
    # Its key is not here yet: no device may be sent a bundle it can never open.
    with pytest.raises(Conflict, match="never uploaded"):
        fleet.assign_model("cam-1", "digits", "1.0.0", None, OPS)
    with pytest.raises(Conflict, match="never uploaded"):
        fleet.create_rollout("digits", "1.0.0", "site=a", "100%", who=OPS)
    with pytest.raises(Invalid, match="no bundle of digits 1.0.0 is encrypted under key"):
        fleet.upload_key("digits", "1.0.0", {**encrypted["key"], "key_id": "other"}, ROOT)
    fleet.upload_key("digits", "1.0.0", encrypted["key"], ROOT)
    data_key = b64d(encrypted["key"]["key"])
    with fleet.transaction() as db:
        sealed = db.scalars(select(ModelKey)).one().sealed
    assert data_key not in sealed  # at rest only under the master key

    fleet.assign_model("cam-1", "digits", "1.0.0", None, OPS)
    fleet.assign_model("cam-2", "digits", "1.0.0", None, OPS)
    wrapped = WrappedKey.model_validate(model_of(fleet, "cam-1", "digits")["key"])
    assert cam.unwrap(wrapped) == data_key
    with pytest.raises(Exception, match="not for this device"):
        device_key(tmp_path, "thief").unwrap(wrapped)
    assert model_of(fleet, "cam-2", "digits")["key"] is None  # no enrolled key: nothing to open it with
    # Composed again (a label change), the same key wraps to the same bytes: no new revision for nothing.
    revision = desired_of(fleet, "cam-1")["revision"]
    fleet.update_labels("cam-1", {"site": "a"}, OPS)
    assert desired_of(fleet, "cam-1")["revision"] == revision

    # Revoked: the key leaves its desired state, and nothing new is wrapped for it.
    fleet.set_public_key("cam-1", None, ROOT)
    assert model_of(fleet, "cam-1", "digits")["key"] is None and fleet.get_device("cam-1")["key_revoked"]
    fleet.on_reported("cam-1", Reported(revision=revision + 1, public_key=cam.public_b64))
    assert model_of(fleet, "cam-1", "digits")["key"] is None  # a revoked key is not pinned again
    fleet.set_public_key("cam-1", cam.public_b64, ROOT)  # re-enrolled by an admin
    assert cam.unwrap(WrappedKey.model_validate(model_of(fleet, "cam-1", "digits")["key"])) == data_key


@pytest.mark.parametrize("mode", ["registration", "first_contact"])
def test_enrolment_modes(make_service, encrypted, tmp_path, mode):
    fleet = make_service(master_key=b64e(MASTER), key_enrolment=mode)
    upload(fleet, encrypted["1.0.0"])
    fleet.upload_key("digits", "1.0.0", encrypted["key"], ROOT)
    fleet.register_device("cam-1", {}, ROOT)
    fleet.assign_model("cam-1", "digits", "1.0.0", None, OPS)
    cam = device_key(tmp_path, "cam")
    fleet.on_reported("cam-1", Reported(revision=1, public_key=cam.public_b64))
    key = model_of(fleet, "cam-1", "digits")["key"]
    if mode == "registration":
        assert key is None and fleet.get_device("cam-1")["public_key"] is None
        return
    assert cam.unwrap(WrappedKey.model_validate(key)) == b64d(encrypted["key"]["key"])  # pinned, trust on first use
    # Later, another key (a cloned box, a swapped disk) does not replace the pinned one.
    fleet.on_reported("cam-1", Reported(revision=2, public_key=device_key(tmp_path, "other").public_b64))
    assert fleet.get_device("cam-1")["public_key"] == cam.public_b64


def test_a_model_that_requires_encryption_refuses_plaintext_versions(fleet, encrypted, tmp_path):
    upload(fleet, encrypted["1.0.0"])
    upload(fleet, encrypted["2.0.0"])
    fleet.upload_key("digits", "1.0.0", encrypted["key"], ROOT)
    fleet.register_device("cam-1", {"site": "a"}, ROOT, public_key=device_key(tmp_path, "cam").public_b64)
    fleet.set_policy("digits", True, ROOT)
    assert fleet.get_policy("digits") == {"name": "digits", "require_encryption": True}
    with pytest.raises(Conflict, match="requires encryption"):
        fleet.assign_model("cam-1", "digits", "2.0.0", None, OPS)
    with pytest.raises(Conflict, match="requires encryption"):
        fleet.create_rollout("digits", "2.0.0", "site=a", "100%", who=OPS)
    fleet.create_rollout("digits", "1.0.0", "site=a", "100%", who=OPS)
    assert model_of(fleet, "cam-1", "digits")["key"] is not None
    fleet.set_policy("digits", False, ROOT)
    assert fleet.get_policy("other")["require_encryption"] is False


def test_no_master_key_keeps_no_keys(make_service, encrypted):
    fleet = make_service()
    upload(fleet, encrypted["1.0.0"])
    with pytest.raises(Invalid, match="no master key"):
        fleet.upload_key("digits", "1.0.0", encrypted["key"], ROOT)


ADMIN = "eft_admin-token-for-tests"


def test_http_key_upload_policy_and_enrolment(broker, tmp_path, keys, encrypted):
    master_file = tmp_path / "master.key"
    master_file.write_text(b64e(MASTER) + "\n")  # as a k3s Secret mounts it
    settings = ApiSettings(database_url=f"sqlite:///{tmp_path / 'api.db'}", broker_url=broker.url,
                           artifact_dir=tmp_path / "artifacts", trusted_keys=str(keys.public_path), admin_token=ADMIN,
                           master_key_file=master_file)
    with TestClient(create_app(settings)) as api:
        api.headers["Authorization"] = f"Bearer {ADMIN}"
        wait_for(lambda: api.get("/readyz").status_code == 200, 10, "the API to connect")
        operator = api.post("/v1/tokens", json={"name": "ci", "role": "operator"}).json()["token"]
        body = encrypted["1.0.0"].read_bytes()
        key_json = json.dumps(encrypted["key"])
        # The key file with the upload needs an admin; an operator's upload with it is refused, and nothing is kept.
        r = api.post("/v1/models", content=body, headers={"Authorization": f"Bearer {operator}", "X-Data-Key": key_json})
        assert r.status_code == 403
        r = api.post("/v1/models", content=body, headers={"X-Data-Key": "{\"key_id\": \"x\"}"})
        assert r.status_code == 400 and "X-Data-Key: not a data key file" in r.json()["error"]
        r = api.post("/v1/models", content=body, headers={"X-Data-Key": key_json})
        assert r.status_code == 201 and r.json()["encryption_key_id"] == encrypted["key"]["key_id"]
        # Again through PUT .../key: the same key is fine; an unknown field or a short key is a 422.
        url = "/v1/models/digits/versions/1.0.0/key"
        assert api.put(url, json=encrypted["key"]).json()["stored"] is True
        assert api.put(url, json={**encrypted["key"], "extra": 1}).status_code == 422
        assert api.put(url, json={**encrypted["key"], "key": "abc"}).status_code == 422
        assert api.put(url, json=encrypted["key"], headers={"Authorization": f"Bearer {operator}"}).status_code == 403
        new_key = {**encrypted["key"], "key": b64e(new_data_key())}
        assert api.put(url, json=new_key).status_code == 409  # a stored key is never replaced
        assert api.put("/v1/models/digits/policy", json={"require_encryption": True}).json()["require_encryption"]
        assert api.get("/v1/models/digits/policy").json()["require_encryption"] is True

        cam = device_key(tmp_path, "cam")
        assert api.post("/v1/devices", json={"id": "cam-1", "public_key": "short"}).status_code == 422
        r = api.post("/v1/devices", json={"id": "cam-1", "public_key": cam.public_b64})
        assert r.status_code == 201 and r.json()["public_key"] == cam.public_b64
        desired = api.put("/v1/devices/cam-1/models/digits", json={"version": "1.0.0"}).json()["desired"]
        assert cam.unwrap(WrappedKey.model_validate(desired["models"]["digits"]["key"])) == b64d(encrypted["key"]["key"])
        r = api.delete("/v1/devices/cam-1/public-key")
        assert r.json()["key_revoked"] is True and r.json()["desired"]["models"]["digits"]["key"] is None
        audit = [e["action"] for e in api.get("/v1/audit").json()]
        assert {"model.key.upload", "model.policy", "device.key.revoke"} <= set(audit)
        assert b64d(encrypted["key"]["key"]) not in (tmp_path / "api.db").read_bytes()
        assert encrypted["key"]["key"] not in api.get("/v1/audit").text

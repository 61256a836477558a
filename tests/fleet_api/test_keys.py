"""The key store: data keys sealed under the master key, wrapped for a device's public key, never otherwise."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from fleet_api.db.tables import Base, ModelKey
from fleet_api.errors import Conflict, Invalid
from fleet_api.registry.keys import KeyStore
from fleet_protocol.encryption import DeviceKey, new_data_key


@pytest.fixture
def db(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'k.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        yield s


def test_data_keys_are_sealed_at_rest_and_wrapped_only_for_a_device_with_a_key(db, tmp_path):
    store = KeyStore(new_data_key())
    data_key = new_data_key()
    store.put(db, "k1", data_key, "digits", "1.0.0")
    db.commit()
    assert data_key not in db.get(ModelKey, "k1").sealed
    device = DeviceKey.load_or_create(tmp_path / "d.pem")
    wrapped = store.wrap_for(db, "k1", device.public_b64)
    assert wrapped is not None and device.unwrap(wrapped) == data_key
    assert store.wrap_for(db, "k1", None) is None  # no enrolled key: nothing to send
    assert store.wrap_for(db, "unknown", device.public_b64) is None
    store.put(db, "k1", data_key, "digits", "1.0.0")  # the same key again is fine
    with pytest.raises(Conflict):
        store.put(db, "k1", new_data_key(), "digits", "1.0.0")


def test_a_wrong_master_key_or_none_keeps_nothing_and_opens_nothing(db, tmp_path):
    KeyStore(new_data_key()).put(db, "k1", new_data_key(), "digits", "1.0.0")
    with pytest.raises(Invalid, match="no master key"):
        KeyStore(None).put(db, "k2", new_data_key(), "digits", "1.0.0")
    device = DeviceKey.load_or_create(tmp_path / "d.pem")
    assert KeyStore(new_data_key()).wrap_for(db, "k1", device.public_b64) is None

"""Data keys of encrypted models: sealed at rest under the master key, wrapped per device on the way out."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from sqlalchemy.orm import Session

from fleet_protocol.encryption import EncryptionError, seal, unseal, wrap_key
from fleet_protocol.messages import WrappedKey

from ..db.tables import Bundle, ModelKey, ModelPolicy
from ..errors import Conflict, Invalid


class KeyStore:
    def __init__(self, master_key: bytes | None) -> None:
        self.master_key = master_key

    def put(self, db: Session, key_id: str, data_key: bytes, name: str, version: str) -> None:
        if self.master_key is None:
            raise Invalid("this fleet API has no master key (EDGEFLEET_API_MASTER_KEY[_FILE]): it cannot keep model keys")
        if len(data_key) != 32:
            raise Invalid(f"a data key has 32 bytes, got {len(data_key)}")
        row = db.get(ModelKey, key_id)
        if row is not None:
            if unseal(self.master_key, row.sealed, key_id) != data_key or (row.name, row.version) != (name, version):
                raise Conflict(f"key {key_id} is already stored with other contents")
            return
        db.add(ModelKey(key_id=key_id, name=name, version=version, sealed=seal(self.master_key, data_key, key_id)))

    def has(self, db: Session, key_id: str) -> bool:
        return db.get(ModelKey, key_id) is not None

    def wrap_for(self, db: Session, key_id: str, device_public_key: str | None) -> WrappedKey | None:
        """The data key for one device, or None when it cannot have it (no key stored, no device key)."""
        row = db.get(ModelKey, key_id)
        if row is None or self.master_key is None or not device_public_key:
            return None
        # Derived, not random, wrapping: composing the same desired state again gives the same bytes (no new
        # revision), and a new device key or data key gives new ones. The seed never leaves this process.
        seed = hmac.new(self.master_key, f"wrap {key_id} {device_public_key}".encode(), hashlib.sha256).digest()
        try:
            return wrap_key(unseal(self.master_key, row.sealed, key_id), key_id, device_public_key, seed=seed)
        except EncryptionError:
            return None

    def check_deliverable(self, db: Session, name: str, version: str, bundles: Iterable[Bundle]) -> None:
        """Before a version goes to devices (rollout, assignment): the model's policy holds and every encrypted
        variant has its data key here, so no device is sent a bundle it can never open."""
        policy = db.get(ModelPolicy, name)
        for b in bundles:
            enc = (b.manifest or {}).get("encryption")
            if enc is None:
                if policy is not None and policy.require_encryption:
                    raise Conflict(f"model {name!r} requires encryption (its policy) and {version} "
                                   f"({b.hardware_class}) is a plaintext bundle: pack it with --encrypt")
            elif not self.has(db, enc["key_id"]):
                raise Conflict(f"{name} {version} ({b.hardware_class}) is encrypted and its data key {enc['key_id']} was "
                               f"never uploaded: PUT /v1/models/{name}/versions/{version}/key first")


def encrypted_key_id(bundle: Bundle) -> str | None:
    enc = (bundle.manifest or {}).get("encryption")
    return enc["key_id"] if enc else None

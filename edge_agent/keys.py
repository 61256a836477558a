"""The device's key pair and the data keys of its encrypted models.

- The X25519 key pair is made on first start (DATA_DIR/device_key.pem, mode 0600); only its public half ever
  leaves the device (Reported.public_key), so the fleet API can wrap data keys for this device alone.
- The fleet sends each encrypted model's data key wrapped for this device (ModelSpec.key). The wrapped keys are
  kept (DATA_DIR/keys.json, mode 0600, by bundle digest) so the device serves its models after a restart before
  any network is up, and so a rollback finds the previous version's key.
- An encrypted model is decrypted into memory only, after its bundle was verified (the signature covers the
  ciphertext's digest): nothing decrypted is written to disk.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from fleet_protocol.encryption import DeviceKey, EncryptionError, decrypt_model
from fleet_protocol.files import atomic_write
from fleet_protocol.manifest import Manifest
from fleet_protocol.messages import WrappedKey

log = logging.getLogger(__name__)

KEY_FILE = "device_key.pem"
WRAPPED_FILE = "keys.json"


class KeyMissing(EncryptionError):
    """An encrypted model came without a data key for this device (its key is not enrolled, or was revoked)."""


class ModelKeys:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.device = DeviceKey.load_or_create(self.root / KEY_FILE)
        self._path = self.root / WRAPPED_FILE
        self._lock = threading.Lock()
        self._wrapped: dict[str, WrappedKey] = {}
        try:
            raw = json.loads(self._path.read_text())
            self._wrapped = {sha: WrappedKey.model_validate(w) for sha, w in raw.items()}
        except FileNotFoundError:
            pass
        except (ValueError, TypeError) as exc:  # a damaged file: the fleet sends the keys again with the desired state
            log.error("%s unreadable (%s): keys come again with the next desired state", self._path, exc)

    @property
    def public_key(self) -> str:
        return self.device.public_b64

    def remember(self, sha256: str, wrapped: WrappedKey | None) -> None:
        """The key the fleet sent for a bundle (None: it sent none, e.g. the device key was revoked)."""
        with self._lock:
            if wrapped is None:
                if self._wrapped.pop(sha256, None) is None:
                    return
            elif self._wrapped.get(sha256) == wrapped:
                return
            else:
                self._wrapped[sha256] = wrapped
            self._write()

    def forget_except(self, keep: set[str]) -> None:
        """Drop the keys of bundles no longer on disk."""
        with self._lock:
            if set(self._wrapped) - keep:
                self._wrapped = {sha: w for sha, w in self._wrapped.items() if sha in keep}
                self._write()

    def get(self, sha256: str) -> WrappedKey | None:
        return self._wrapped.get(sha256)

    def decrypt(self, sha256: str, manifest: Manifest, model_path: Path) -> bytes:
        """The model's plaintext, in memory. KeyMissing / EncryptionError say why it cannot be had."""
        enc = manifest.encryption
        assert enc is not None
        wrapped = self.get(sha256)
        if wrapped is None:
            raise KeyMissing(f"{manifest.name} {manifest.version} is encrypted and the fleet sent no key for this "
                             "device (its public key is not enrolled, or was revoked)")
        if wrapped.key_id != enc.key_id:
            raise EncryptionError(f"{manifest.name} {manifest.version} is encrypted under key {enc.key_id}, "
                                  f"the fleet sent key {wrapped.key_id}")
        data_key = self.device.unwrap(wrapped)
        return decrypt_model(model_path.read_bytes(), data_key, enc.key_id)

    def _write(self) -> None:
        # owner-only (0600), like every file atomic_write makes
        atomic_write(self._path, json.dumps({sha: w.model_dump(mode="json") for sha, w in self._wrapped.items()}).encode())

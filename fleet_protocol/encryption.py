"""Confidential models: the model file encrypted with a data key, the data key wrapped for one device.

- A bundle's `model.onnx` may be AES-256-GCM ciphertext (`nonce ‖ ciphertext ‖ tag`) under a fresh 32-byte data
  key; the manifest names the cipher and the key id, and its file digest is the ciphertext's, so the signature
  still proves the bytes before anything is decrypted.
- A device owns an X25519 key pair (private half never leaves it). The fleet API sends the data key wrapped for
  the device's public key: an ephemeral X25519 exchange, HKDF-SHA256 over both public keys and the key id, then
  AES-256-GCM. Only that device can unwrap it; a copy of the artifact is useless to anyone else.
- At rest the API keeps data keys sealed under its master key (AES-256-GCM, the key id as associated data).
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .messages import WrappedKey

CIPHER = "AES-256-GCM"
KEY_BYTES = 32
NONCE_BYTES = 12
_WRAP_INFO = b"edgefleet/v1 model key wrap "
_MODEL_AAD = b"edgefleet/v1 model "


class EncryptionError(ValueError):
    """A key that is missing, malformed, or does not open what it should (wrong device, tampered data)."""


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def b64d(text: str, size: int | None = None) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.encode() + b"=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise EncryptionError(f"not base64: {exc}") from None
    if size is not None and len(raw) != size:
        raise EncryptionError(f"expected {size} bytes, got {len(raw)}")
    return raw


def new_key_id() -> str:
    return secrets.token_hex(8)


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


# --- the model file -----------------------------------------------------------------------------------------


def encrypt_model(plaintext: bytes, data_key: bytes, key_id: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(data_key).encrypt(nonce, plaintext, _MODEL_AAD + key_id.encode())


def decrypt_model(ciphertext: bytes, data_key: bytes, key_id: str) -> bytes:
    """Into memory only; a wrong key or a changed byte is a EncryptionError (GCM authenticates every byte)."""
    if len(data_key) != KEY_BYTES:
        raise EncryptionError(f"a data key has {KEY_BYTES} bytes, got {len(data_key)}")
    try:
        return AESGCM(data_key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], _MODEL_AAD + key_id.encode())
    except InvalidTag:
        raise EncryptionError("the model does not decrypt with its key (wrong key or tampered ciphertext)") from None


# --- device keys --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceKey:
    private: X25519PrivateKey

    @property
    def public_b64(self) -> str:
        return public_b64(self.private.public_key())

    @classmethod
    def load_or_create(cls, path: Path) -> DeviceKey:
        """The device's key pair, made on first start: PEM, mode 0600, written atomically."""
        path = Path(path)
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (ValueError, TypeError) as exc:
                raise EncryptionError(f"{path}: not a PEM private key: {exc}") from None
            if not isinstance(key, X25519PrivateKey):
                raise EncryptionError(f"{path}: not an X25519 key")
            return cls(key)
        key = X25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return cls(key)

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        eph = X25519PublicKey.from_public_bytes(b64d(wrapped.ephemeral_public_key, 32))
        kek = _kek(self.private.exchange(eph), eph, self.private.public_key(), wrapped.key_id)
        try:
            return AESGCM(kek).decrypt(b64d(wrapped.nonce, NONCE_BYTES), b64d(wrapped.ciphertext), wrapped.key_id.encode())
        except InvalidTag:
            raise EncryptionError("the wrapped key is not for this device (or was altered)") from None


def public_b64(key: X25519PublicKey) -> str:
    return b64e(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_public(text: str) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(b64d(text, 32))


def _kek(shared: bytes, eph: X25519PublicKey, device: X25519PublicKey, key_id: str) -> bytes:
    salt = eph.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) + device.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_WRAP_INFO + key_id.encode()).derive(shared)


def wrap_key(data_key: bytes, key_id: str, device_public: str, seed: bytes | None = None) -> WrappedKey:
    """The data key, readable only with the private half of `device_public` (urlsafe base64 of 32 bytes).

    `seed` (a secret, unique per data key and device, e.g. an HMAC under the fleet's master key) makes the
    ephemeral key and nonce derived instead of random: the same inputs give the same WrappedKey, so a desired
    state composed again is equal to the last one and needs no new revision. The nonce is then used with one
    key-encryption key and one plaintext only, which GCM allows."""
    device = load_public(device_public)
    if seed is None:
        eph = X25519PrivateKey.generate()
        nonce = os.urandom(NONCE_BYTES)
    else:
        derived = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES + NONCE_BYTES, salt=None,
                       info=_WRAP_INFO + b"derived " + key_id.encode()).derive(seed)
        eph, nonce = X25519PrivateKey.from_private_bytes(derived[:KEY_BYTES]), derived[KEY_BYTES:]
    kek = _kek(eph.exchange(device), eph.public_key(), device, key_id)
    return WrappedKey(
        key_id=key_id,
        ephemeral_public_key=public_b64(eph.public_key()),
        nonce=b64e(nonce),
        ciphertext=b64e(AESGCM(kek).encrypt(nonce, data_key, key_id.encode())),
    )


# --- at rest (the fleet API's key store) --------------------------------------------------------------------


def seal(master_key: bytes, data: bytes, label: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(master_key).encrypt(nonce, data, label.encode())


def unseal(master_key: bytes, sealed: bytes, label: str) -> bytes:
    try:
        return AESGCM(master_key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], label.encode())
    except InvalidTag:
        raise EncryptionError(f"sealed key {label!r} does not open with this master key") from None

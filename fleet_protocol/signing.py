"""sha256 digests and ed25519 signatures, the two proofs a bundle carries."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class SignatureError(ValueError):
    """A signature that does not verify, or a key that is not an ed25519 key."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def generate_keypair() -> tuple[bytes, bytes]:
    """→ (private PEM, public PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("the private key is not an ed25519 key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the public key is not an ed25519 key")
    return key


def public_keys(paths: str) -> list[Ed25519PublicKey]:
    """The trusted keys of a setting: comma-separated PEM files (the API's and the agent's `trusted_keys`)."""
    return [load_public_key(Path(p.strip()).read_bytes()) for p in paths.split(",") if p.strip()]


def key_id(public: Ed25519PublicKey) -> str:
    """Short fingerprint, to name which key signed what in logs and manifests."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(private: Ed25519PrivateKey, data: bytes) -> bytes:
    return private.sign(data)


def verify_any(keys: list[Ed25519PublicKey], signature: bytes, data: bytes) -> Ed25519PublicKey:
    """Return the trusted key that made `signature`; SignatureError when none did (key rotation keeps several)."""
    for key in keys:
        try:
            key.verify(signature, data)
            return key
        except InvalidSignature:
            continue
    raise SignatureError("bundle signature does not match any trusted key")

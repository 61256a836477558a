"""The bundle file: one tar with manifest.json, signature (ed25519 over the manifest) and the files it lists.

Reading verifies everything before anything is trusted: the member list, the signature, then each file's
size and sha256. A bundle that fails any check raises BundleError and leaves nothing behind.

A bundle's bytes are exactly what its signature covers. A bundle is known by the sha256 of its file, so two files
that carry the same signed content must be the same file: otherwise a copy with bytes appended, its end-of-archive
blocks cut off or a header field changed would verify, be registered under that version, and the genuine file
would then be refused as "other bytes". So the file must be the one canonical packing `write_bundle` makes:
manifest, signature, then the files by name, each with fixed header fields, zero padding, the two end blocks,
zero-filled to a whole tar record, and nothing after that. Every byte is then a fixed header, signed content
or padding.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from .files import atomic_file
from .manifest import FileEntry, Manifest
from .signing import SignatureError, key_id, sha256_bytes, sign, verify_any

MANIFEST = "manifest.json"
SIGNATURE = "signature"
MODEL = "model.onnx"
GOLDEN = "golden.npz"
MAX_MANIFEST_BYTES = 1 << 20


class BundleError(ValueError):
    """A bundle that is malformed, tampered with, or signed by a key we do not trust."""


def bundle_filename(name: str, version: str) -> str:
    return f"{name}-{version}.bundle"


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata: the same content always packs to the same bytes.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _header(name: str, size: int) -> bytes:
    return _tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> int:
    return -size % tarfile.BLOCKSIZE


def _end(offset: int) -> int:
    """Length of the end of an archive whose members end at `offset`: two zero blocks, then zeros to a record."""
    end = offset + 2 * tarfile.BLOCKSIZE
    return end + (-end % tarfile.RECORDSIZE) - offset


def _write_canonical(raw, members: list[tuple[str, bytes]]) -> None:
    offset = 0
    for name, data in members:
        for part in (_header(name, len(data)), data, b"\0" * _padding(len(data))):
            raw.write(part)
            offset += len(part)
    raw.write(b"\0" * _end(offset))


def _check_canonical(path: Path, members: list[tarfile.TarInfo]) -> None:
    """The file is the canonical packing of its members: same headers, zero padding, the end, nothing more.
    (Member contents are checked against the signed manifest by the caller.)"""
    with open(path, "rb") as f:
        offset = 0
        for m in members:
            header = _header(m.name, m.size)
            if m.offset != offset:
                raise BundleError(f"bundle is not in canonical form: unexpected bytes before {m.name}")
            f.seek(offset)
            if f.read(len(header)) != header:
                raise BundleError(f"bundle is not in canonical form: the header of {m.name} differs from the one it is packed with")
            f.seek(offset + len(header) + m.size)
            if f.read(_padding(m.size)).strip(b"\0"):
                raise BundleError(f"bundle is not in canonical form: data in the padding after {m.name}")
            offset += len(header) + m.size + _padding(m.size)
        tail = f.read(_end(offset) + 1)
    if len(tail) < _end(offset):
        raise BundleError("bundle is incomplete: its end-of-archive blocks are missing")
    if len(tail) > _end(offset) or tail.strip(b"\0"):
        raise BundleError("bundle has data after the end of the archive, which no signature covers")


def write_bundle(out: Path, manifest: Manifest, files: dict[str, bytes], private_key: Ed25519PrivateKey) -> Manifest:
    """Fill in the file digests, sign, and write atomically. Returns the manifest as written."""
    if MODEL not in files:
        raise BundleError(f"a bundle needs {MODEL}")
    entries = {n: FileEntry(sha256=sha256_bytes(b), size=len(b)) for n, b in sorted(files.items())}
    manifest = manifest.model_copy(update={"files": entries})
    manifest = Manifest.model_validate(manifest.model_dump())  # re-validate after the update
    manifest.extra.setdefault("signed_by", key_id(private_key.public_key()))
    body = manifest.canonical_bytes()
    signature = sign(private_key, body)
    out = Path(out)
    with atomic_file(out, durable=False) as raw:
        # The same bytes tarfile writes for these members (PAX format), by the same rule read_bundle checks.
        _write_canonical(raw, [(MANIFEST, body), (SIGNATURE, signature), *sorted(files.items())])
    return manifest


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: Manifest
    signed_by: str
    directory: Path | None  # where the files were extracted, when asked


@contextmanager
def _truncation_is_a_bundle_error() -> Iterator[None]:
    """A tar cut short (an interrupted upload or download) shows only when a member is read: say so plainly."""
    try:
        yield
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"bundle is truncated or damaged: {exc}") from None


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int) -> bytes:
    if info.size > limit:
        raise BundleError(f"{info.name} is too large ({info.size} bytes)")
    f = tar.extractfile(info)
    assert f is not None
    return f.read()


def read_bundle(path: Path, trusted_keys: list[Ed25519PublicKey], extract_to: Path | None = None) -> VerifiedBundle:
    """Verify a bundle; with `extract_to`, also write its files there (the folder must not exist yet).

    Files are extracted to a temporary sibling and renamed into place only when every check passed.
    """
    if not trusted_keys:
        raise BundleError("no trusted key configured: refusing to load any bundle")
    staging: Path | None = None
    try:
        try:
            tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - entered below; only the open's own errors mean "not a bundle"
        except (tarfile.TarError, OSError) as exc:
            raise BundleError(f"not a bundle (tar) file: {exc}") from None
        with tar, _truncation_is_a_bundle_error():
            members = tar.getmembers()
            names = [m.name for m in members]
            if len(set(names)) != len(names):
                raise BundleError("bundle has duplicate members")
            by_name = {m.name: m for m in members}
            for m in members:
                if not m.isfile() or "/" in m.name or m.name.startswith("."):
                    raise BundleError(f"bundle member {m.name!r} is not a plain top-level file")
            for required in (MANIFEST, SIGNATURE):
                if required not in by_name:
                    raise BundleError(f"bundle has no {required}")
            body = _read_member(tar, by_name[MANIFEST], MAX_MANIFEST_BYTES)
            signature = _read_member(tar, by_name[SIGNATURE], 1024)
            try:
                signer = verify_any(trusted_keys, signature, body)
            except SignatureError as exc:
                raise BundleError(str(exc)) from None
            try:
                manifest = Manifest.model_validate(json.loads(body))
            except (ValueError, ValidationError) as exc:
                raise BundleError(f"manifest is invalid: {exc}") from None
            listed = set(manifest.files)
            present = set(names) - {MANIFEST, SIGNATURE}
            if listed != present:
                raise BundleError(f"bundle files {sorted(present)} differ from the manifest's {sorted(listed)}")
            if MODEL not in listed:
                raise BundleError(f"bundle has no {MODEL}")
            if names != [MANIFEST, SIGNATURE, *sorted(listed)]:
                raise BundleError("bundle is not in canonical form: members out of order")
            _check_canonical(Path(path), members)
            if extract_to is not None:
                extract_to = Path(extract_to)
                extract_to.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=f".{extract_to.name}.", dir=extract_to.parent))
            for name, entry in manifest.files.items():
                info = by_name[name]
                if info.size != entry.size:
                    raise BundleError(f"{name}: size {info.size} differs from the manifest's {entry.size}")
                h = hashlib.sha256()
                src = tar.extractfile(info)
                assert src is not None
                dst = open(staging / name, "wb") if staging else None  # noqa: SIM115 - closed in the finally; only when extracting
                try:
                    while block := src.read(1 << 20):
                        h.update(block)
                        if dst:
                            dst.write(block)
                finally:
                    if dst:
                        dst.close()
                if h.hexdigest() != entry.sha256:
                    raise BundleError(f"{name}: sha256 differs from the manifest (corrupted or tampered)")
            if staging is not None and extract_to is not None:  # staging exists only when extracting
                (staging / MANIFEST).write_bytes(body)
                (staging / SIGNATURE).write_bytes(signature)
                os.replace(staging, extract_to)
                staging = None
        return VerifiedBundle(manifest=manifest, signed_by=key_id(signer), directory=extract_to)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)

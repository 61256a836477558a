"""The model store on local disk.

    DATA_DIR/models/{sha256}/     one verified, extracted bundle per folder (content-addressed)
    DATA_DIR/downloads/{sha256}/  chunks of a download in progress, one file each (resume after restart)
    DATA_DIR/state.json           {"models": {name: {"current": {sha256, runtime}, "previous": {…}}}}, replaced atomically
    DATA_DIR/cache/               engine caches of the providers that build one (TensorRT, OpenVINO)

A model becomes `current` of its name only after it loaded and passed its golden check, together with the
runtime it applied with, so whatever happens (kill -9 included) the agent boots on models that passed, with
runtimes that worked: a runtime the device refused (a required provider it lacks) is never written. A half-written download is never loaded: chunks are
written to temporary names and renamed, the bundle is verified as a whole, and extraction is a rename too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet_protocol.bundle import GOLDEN, MANIFEST, MODEL, BundleError, VerifiedBundle, read_bundle
from fleet_protocol.files import atomic_write
from fleet_protocol.manifest import Manifest
from fleet_protocol.messages import BundleRef, Runtime
from fleet_protocol.signing import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredModel:
    sha256: str
    directory: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL

    @property
    def golden_path(self) -> Path:
        return self.directory / GOLDEN


class DigestMismatch(BundleError):
    """The assembled artifact is not the one asked for: some chunk was corrupt. Its chunks were discarded."""


class PartialDownload:
    """Chunks of one artifact received so far; survives restarts."""

    def __init__(self, folder: Path, ref: BundleRef) -> None:
        self.folder = folder
        self.ref = ref
        folder.mkdir(parents=True, exist_ok=True)
        self._have = {int(p.name) for p in folder.iterdir() if p.name.isdigit()}

    def expected_size(self, index: int) -> int:
        last = self.ref.chunk_count - 1
        return self.ref.size - last * self.ref.chunk_size if index == last else self.ref.chunk_size

    def missing(self) -> list[int]:
        return [i for i in range(self.ref.chunk_count) if i not in self._have]

    def put(self, index: int, data: bytes) -> bool:
        """Store one chunk; False (and nothing stored) when it cannot belong to this artifact."""
        if not 0 <= index < self.ref.chunk_count or len(data) != self.expected_size(index):
            return False
        if index not in self._have:
            # No fsync per chunk: a chunk torn by a power cut fails the whole-artifact digest and is fetched again.
            atomic_write(self.folder / str(index), data, durable=False)
            self._have.add(index)
        return True

    @property
    def received(self) -> int:
        """How many distinct chunks are stored."""
        return len(self._have)

    @property
    def complete(self) -> bool:
        return len(self._have) == self.ref.chunk_count

    @property
    def progress(self) -> float:
        return len(self._have) / self.ref.chunk_count

    def assemble(self, dest: Path) -> None:
        with open(dest, "wb") as out:
            out.writelines((self.folder / str(i)).read_bytes() for i in range(self.ref.chunk_count))

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self._have.clear()
        self.folder.mkdir(parents=True, exist_ok=True)


class ModelStore:
    def __init__(self, root: Path, keep: int = 3) -> None:
        self.root = Path(root)
        self.keep = max(2, keep)
        self.models = self.root / "models"
        self.downloads = self.root / "downloads"
        for d in (self.models, self.downloads):
            d.mkdir(parents=True, exist_ok=True)
        self._state_path = self.root / "state.json"
        self.cache = self.root / "cache"
        self._lock = threading.RLock()  # one writer at a time: each model's worker promotes on its own
        self._claimed: dict[str, int] = {}  # artifacts workers download or load now: never garbage

    def claim(self, sha256: str) -> None:
        """A worker starts on this artifact: its download and its extracted bundle stay until `release`."""
        with self._lock:
            self._claimed[sha256] = self._claimed.get(sha256, 0) + 1

    def release(self, sha256: str) -> None:
        with self._lock:
            left = self._claimed.get(sha256, 0) - 1
            if left > 0:
                self._claimed[sha256] = left
            else:
                self._claimed.pop(sha256, None)

    # --- state ------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, dict[str, Any]]:
        """{name: {"current": {"sha256", "runtime"}, "previous": {...}}}; a v1 file (one model) is read as one name."""
        try:
            data = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        if "models" in data and isinstance(data["models"], dict):
            return data["models"]
        if "current" in data:  # written by a v1 agent: {"current": sha, "previous": sha}
            entry = {k: {"sha256": data[k], "runtime": None} for k in ("current", "previous") if data.get(k)}
            stored = self.get(data.get("current")) or self.get(data.get("previous"))
            return {stored.manifest.name: entry} if stored is not None else {}
        return {}

    def names(self) -> list[str]:
        return sorted(self._state())

    def _slot(self, name: str, which: str) -> dict[str, Any] | None:
        slot = self._state().get(name, {}).get(which)
        return slot if isinstance(slot, dict) else None

    def current(self, name: str) -> StoredModel | None:
        slot = self._slot(name, "current")
        return self.get(slot.get("sha256")) if slot else None

    def previous(self, name: str) -> StoredModel | None:
        slot = self._slot(name, "previous")
        return self.get(slot.get("sha256")) if slot else None

    def runtime(self, name: str, which: str = "current") -> Runtime | None:
        """The fleet's runtime this model applied with (None: the device's own settings)."""
        slot = self._slot(name, which)
        if not slot or slot.get("runtime") is None:
            return None
        try:
            return Runtime.model_validate(slot["runtime"])
        except ValueError:
            return None

    def promote(self, name: str, sha256: str, runtime: Runtime | None, active: AbstractSet[str] = frozenset()) -> None:
        """Make `sha256` the current of `name` and its old current previous, in one atomic replace. The runtime
        it applied with is remembered with it: only a runtime that applied is ever persisted.

        Unfinished downloads of artifacts not in `active` (superseded, timed out) are removed with the rest."""
        with self._lock:
            state = self._state()
            entry = state.get(name, {})
            new_slot = {"sha256": sha256, "runtime": runtime.model_dump(mode="json") if runtime is not None else None}
            current = entry.get("current")
            if current and current.get("sha256") == sha256:
                previous = entry.get("previous")
            else:
                previous = current or entry.get("previous")
            state[name] = {"current": new_slot, **({"previous": previous} if previous else {})}
            self._write_state(state, promoted=sha256, active=active)

    def fall_back(self, name: str, sha256: str, broken: str | None) -> None:
        """Boot found `broken` (the current) unusable and serves `sha256` (the previous): forget the broken one."""
        with self._lock:
            state = self._state()
            previous = state.get(name, {}).get("previous") or {"sha256": sha256, "runtime": None}
            state[name] = {"current": previous}
            self._write_state(state)
            if broken and broken != sha256:
                shutil.rmtree(self.models / broken, ignore_errors=True)

    def forget(self, name: str, active: AbstractSet[str] = frozenset()) -> None:
        """`name` is no longer desired: its bundles become ordinary garbage (kept up to `keep`)."""
        with self._lock:
            state = self._state()
            if state.pop(name, None) is not None:
                self._write_state(state, active=active)

    def _write_state(self, state: dict[str, Any], promoted: str | None = None, active: AbstractSet[str] = frozenset()) -> None:
        # The folders are touched so garbage collection sees the most recently served models as the newest.
        for sha in self._pinned(state):
            if (self.models / sha).is_dir():
                os.utime(self.models / sha)
        atomic_write(self._state_path, json.dumps({"models": state}).encode())
        self.collect_garbage(promoted=promoted, active=active)

    @staticmethod
    def _pinned(state: dict[str, Any]) -> set[str]:
        return {slot["sha256"] for entry in state.values() for slot in entry.values()
                if isinstance(slot, dict) and slot.get("sha256")}

    # --- models -----------------------------------------------------------------------------------------
    def get(self, sha256: str | None) -> StoredModel | None:
        if not sha256:
            return None
        folder = self.models / sha256
        try:
            manifest = Manifest.model_validate_json((folder / MANIFEST).read_bytes())
        except (OSError, ValueError):
            return None
        return StoredModel(sha256, folder, manifest)

    def partial(self, ref: BundleRef) -> PartialDownload:
        return PartialDownload(self.downloads / ref.sha256, ref)

    def install(self, partial: PartialDownload, trusted_keys: list) -> StoredModel:
        """Assemble, check the digest, verify the signature and every file, extract. BundleError on any failure."""
        ref = partial.ref
        if (existing := self.get(ref.sha256)) is not None:
            return existing
        fd, tmp_name = tempfile.mkstemp(prefix=".bundle-", dir=self.downloads)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            partial.assemble(tmp)
            digest = sha256_file(tmp)
            if digest != ref.sha256:
                partial.discard()  # some chunk was corrupt: start over rather than trust any of them
                raise DigestMismatch(f"downloaded artifact has sha256 {digest[:12]}…, expected {ref.sha256[:12]}…")
            try:
                verified: VerifiedBundle = read_bundle(tmp, trusted_keys, extract_to=self.models / ref.sha256)
                if verified.manifest.name != ref.name or verified.manifest.version != ref.version:
                    shutil.rmtree(self.models / ref.sha256, ignore_errors=True)
                    raise BundleError(
                        f"bundle is {verified.manifest.name} {verified.manifest.version}, desired state says {ref.name} {ref.version}"
                    )
            except BundleError:
                # The artifact is the one asked for, and it is refused as a whole: fetching it again cannot help.
                shutil.rmtree(partial.folder, ignore_errors=True)
                raise
        finally:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(partial.folder, ignore_errors=True)
        stored = self.get(ref.sha256)
        assert stored is not None
        return stored

    def collect_garbage(self, promoted: str | None = None, active: AbstractSet[str] = frozenset(), boot: bool = False) -> None:
        """Keep every model's current and previous, and the newest others up to `keep` in all; remove the rest
        and whatever a kill -9 left half-done (staging folders, temporary files, v1 optimized-graph files).

        With `promoted` (a model was just promoted) the unfinished downloads of every artifact not `active`
        go too. Without it (boot) they stay, so a download resumes after a restart. Bundles of `active`
        artifacts (a worker downloads or loads them) always stay; temporary files only go at `boot`."""
        with self._lock:
            self._collect(promoted, set(active) | set(self._claimed), boot)

    def _collect(self, promoted: str | None, active: set[str], boot: bool) -> None:
        state = self._state()
        pinned = self._pinned(state) | active  # a bundle a worker is downloading or loading stays too
        folders = sorted((p for p in self.models.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        kept = len([p for p in folders if p.name in pinned])  # pinned ones always stay; others up to `keep` in all
        for folder in folders:
            if folder.name in pinned or (folder.name.startswith(".") and folder.name[1:].split(".")[0] in pinned):
                continue  # a staging folder of an active download is being extracted right now
            if folder.name.startswith(".") or kept >= self.keep:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                kept += 1
        for stray in self.models.iterdir():
            if stray.is_file():
                stray.unlink(missing_ok=True)
        if boot:  # no worker is assembling a bundle now (at any other time another one may be)
            for tmp in self.downloads.glob(".bundle-*"):
                tmp.unlink(missing_ok=True)
        if promoted is not None:
            for folder in self.downloads.iterdir():
                if folder.is_dir() and folder.name != promoted and folder.name not in active:
                    shutil.rmtree(folder, ignore_errors=True)
        # v1 agents cached optimized graphs here; serving sessions no longer write them (memory, see runtime.session)
        shutil.rmtree(self.cache / "optimized", ignore_errors=True)

"""The model store on local disk.

    DATA_DIR/models/{sha256}/     one verified, extracted bundle per folder (content-addressed)
    DATA_DIR/downloads/{sha256}/  chunks of a download in progress, one file each (resume after restart)
    DATA_DIR/state.json           {"current": sha, "previous": sha}, replaced atomically
    DATA_DIR/runtime.json         the runtime config of the last desired state (providers, threads, batching)
    DATA_DIR/cache/optimized/     onnxruntime's optimized graphs, {sha256}-….onnx, so a restart does not re-optimize

A model becomes `current` only after it loaded and passed its golden check, so whatever happens (kill -9
included) the agent boots on a model that passed. A half-written download is never loaded: chunks are
written to temporary names and renamed, the bundle is verified as a whole, and extraction is a rename too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleet_protocol.bundle import BundleError, VerifiedBundle, read_bundle
from fleet_protocol.manifest import Manifest
from fleet_protocol.messages import ModelRef, RuntimeConfig
from fleet_protocol.signing import sha256_file

log = logging.getLogger(__name__)


def _atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory entry is: without this a power cut may undo it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class StoredModel:
    sha256: str
    directory: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.directory / "model.onnx"

    @property
    def golden_path(self) -> Path:
        return self.directory / "golden.npz"


class DigestMismatch(BundleError):
    """The assembled artifact is not the one asked for: some chunk was corrupt. Its chunks were discarded."""


class PartialDownload:
    """Chunks of one artifact received so far; survives restarts."""

    def __init__(self, folder: Path, ref: ModelRef) -> None:
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
            _atomic_write(self.folder / str(index), data, durable=False)
            self._have.add(index)
        return True

    @property
    def complete(self) -> bool:
        return len(self._have) == self.ref.chunk_count

    @property
    def progress(self) -> float:
        return len(self._have) / self.ref.chunk_count

    def assemble(self, dest: Path) -> None:
        with open(dest, "wb") as out:
            for i in range(self.ref.chunk_count):
                out.write((self.folder / str(i)).read_bytes())

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
        self._runtime_path = self.root / "runtime.json"
        self.cache = self.root / "cache"

    # --- state ------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, str | None]:
        try:
            return json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return {"current": None, "previous": None}

    def current(self) -> StoredModel | None:
        return self.get(self._state().get("current"))

    def previous(self) -> StoredModel | None:
        return self.get(self._state().get("previous"))

    def promote(self, sha256: str) -> None:
        """Make `sha256` current and the old current previous, in one atomic replace.

        Called by the reconciler's worker once a model passed its checks, so no download is in progress:
        the unfinished downloads left behind (superseded, timed out) are removed with the rest."""
        state = self._state()
        if state.get("current") == sha256:
            return
        new = {"current": sha256, "previous": state.get("current") or state.get("previous")}
        self._write_state(new, promoted=sha256)

    def fall_back(self, sha256: str, broken: str | None) -> None:
        """Boot found `broken` (the current) unusable and serves `sha256` (the previous): forget the broken one."""
        self._write_state({"current": sha256, "previous": None})
        if broken and broken != sha256:
            shutil.rmtree(self.models / broken, ignore_errors=True)

    def _write_state(self, state: dict[str, str | None], promoted: str | None = None) -> None:
        # The folder is touched so garbage collection sees the most recently served models as the newest.
        for sha in state.values():
            if sha and (self.models / sha).is_dir():
                os.utime(self.models / sha)
        _atomic_write(self._state_path, json.dumps(state).encode())
        self.collect_garbage(promoted=promoted)

    # --- runtime config ---------------------------------------------------------------------------------
    def save_runtime(self, runtime: RuntimeConfig | None) -> None:
        """Remember the fleet's runtime config, so an offline boot keeps its provider rules (None: forget it)."""
        if runtime is None:
            self._runtime_path.unlink(missing_ok=True)
            return
        data = runtime.to_bytes()
        try:
            if self._runtime_path.read_bytes() == data:
                return
        except OSError:
            pass
        _atomic_write(self._runtime_path, data)

    def load_runtime(self) -> RuntimeConfig | None:
        try:
            return RuntimeConfig.parse(self._runtime_path.read_bytes())
        except (OSError, ValueError):
            return None

    # --- models -----------------------------------------------------------------------------------------
    def get(self, sha256: str | None) -> StoredModel | None:
        if not sha256:
            return None
        folder = self.models / sha256
        try:
            manifest = Manifest.model_validate_json((folder / "manifest.json").read_bytes())
        except (OSError, ValueError):
            return None
        return StoredModel(sha256, folder, manifest)

    def partial(self, ref: ModelRef) -> PartialDownload:
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

    def collect_garbage(self, promoted: str | None = None) -> None:
        """Keep current, previous and the newest others up to `keep`; remove the rest, with their optimized
        graphs, and whatever a kill -9 left half-done (staging folders, temporary files).

        With `promoted` (a model was just promoted: no download is in progress) the unfinished downloads of
        every other artifact go too. Without it (boot) they stay, so a download resumes after a restart."""
        state = self._state()
        pinned = {state.get("current"), state.get("previous")}
        folders = sorted((p for p in self.models.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        kept = len([p for p in folders if p.name in pinned])
        alive: set[str] = set()
        for folder in folders:
            if folder.name in pinned:
                alive.add(folder.name)
                continue
            if folder.name.startswith(".") or kept >= self.keep:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                kept += 1
                alive.add(folder.name)
        for stray in self.models.iterdir():
            if stray.is_file():
                stray.unlink(missing_ok=True)
        for tmp in self.downloads.glob(".bundle-*"):
            tmp.unlink(missing_ok=True)
        if promoted is not None:
            for folder in self.downloads.iterdir():
                if folder.is_dir() and folder.name != promoted:
                    shutil.rmtree(folder, ignore_errors=True)
        optimized = self.cache / "optimized"
        if optimized.is_dir():
            for f in optimized.iterdir():
                if f.name.startswith(".") or f.name.split("-", 1)[0] not in alive:
                    f.unlink(missing_ok=True)

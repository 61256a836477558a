"""Models for the stand-alone camera (`edge-agent camera`): signed bundle files, verified with the trusted keys
the way the agent verifies what the fleet sends (signature, then every file's size and digest), held in a
small fixed host that the pipelines ask by name, exactly as they ask the agent's ModelHost."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleet_protocol.bundle import MODEL, BundleError, read_bundle
from fleet_protocol.manifest import Manifest
from fleet_protocol.messages import Runtime
from fleet_protocol.signing import sha256_file

from ..runtime.errors import ModelLoadError, ProviderError
from ..runtime.session import create_session

log = logging.getLogger(__name__)

class ModelError(ValueError):
    """The camera's model cannot be had: the message says why."""


@dataclass
class BundleModel:
    """A loaded bundle, shaped like the agent's LoadedModel (name, version, sha256, manifest, session, run)."""

    manifest: Manifest
    session: Any
    sha256: str
    _outputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._outputs = [o.name for o in self.session.get_outputs()]

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self._outputs, feeds)


class StaticHost:
    """Models by name, replaceable one at a time (tests hot-swap with `put`)."""

    def __init__(self, models: list[BundleModel] | None = None) -> None:
        self._models = {m.name: m for m in models or []}
        self._lock = threading.Lock()

    def get(self, name: str) -> BundleModel | None:
        return self._models.get(name)

    def names(self) -> list[str]:
        return sorted(self._models)

    def put(self, model: BundleModel) -> None:
        with self._lock:
            self._models = {**self._models, model.name: model}

    def remove(self, name: str) -> None:
        with self._lock:
            self._models = {k: v for k, v in self._models.items() if k != name}


def load(ref: str, trusted_keys: list, *, work_dir: Path | None = None, providers: list[str] | None = None,
         threads: int = 1) -> BundleModel:
    """A signed bundle file → a loaded model. ModelError when it cannot be had."""
    path = Path(ref)
    if not path.is_file():
        raise ModelError(f"{ref}: no such bundle file")
    if not trusted_keys:
        raise ModelError(f"{ref}: a bundle needs a trusted key to be verified (--trusted-key)")
    folder = Path(tempfile.mkdtemp(prefix="edgefleet-camera-", dir=work_dir)) / "model"
    try:
        try:
            bundle = read_bundle(path, trusted_keys, extract_to=folder)
        except BundleError as exc:
            raise ModelError(f"{ref}: {exc}") from None
        if bundle.manifest.encryption is not None:  # its data key only ever reaches an enrolled device's agent
            raise ModelError(f"{ref}: the model is encrypted; serve it through the fleet (an enrolled device)")
        runtime = Runtime(intra_op_threads=threads, providers=providers) if providers else Runtime(intra_op_threads=threads)
        try:
            # onnxruntime has read the file once the session exists: nothing extracted needs to stay behind.
            session = create_session(folder / MODEL, runtime)
        except (ModelLoadError, ProviderError) as exc:
            raise ModelError(f"{ref}: {exc}") from None
        return BundleModel(bundle.manifest, session, sha256_file(path))
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)

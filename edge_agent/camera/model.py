"""Where the camera's model comes from outside the agent: a signed bundle file, verified with the trusted keys
the way the agent verifies what the fleet sends (signature, then every file's size and digest)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import onnxruntime as ort

from fleet_protocol.bundle import BundleError, read_bundle
from fleet_protocol.signing import sha256_file

from ..runtime.providers import resolve
from .detector import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"]


class ModelError(ValueError):
    """The camera's model cannot be had: the message says why."""


def open_session(path: Path, providers: list[str] | None = None, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    chosen = resolve(providers or DEFAULT_PROVIDERS, ort.get_available_providers())
    return ort.InferenceSession(str(path), sess_options=options, providers=[p.name for p in chosen])


def load(ref: str, trusted_keys: list, *, work_dir: Path | None = None, providers: list[str] | None = None,
         threads: int = 1) -> tuple[ModelSpec, ort.InferenceSession]:
    """A signed bundle file → (its spec, an onnxruntime session). ModelError when it cannot be had."""
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
        spec = ModelSpec.from_manifest(bundle.manifest, key=sha256_file(path))
        # onnxruntime has read the file once the session exists: nothing extracted needs to stay behind.
        return spec, open_session(folder / "model.onnx", providers, threads)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)

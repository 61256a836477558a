"""Fixtures for the agent's tests: a model store holding two real digits models, loaded on real sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.engine import LoadedModel, golden_check, load
from edge_agent.providers import resolve
from edge_agent.store import ModelStore, StoredModel
from fleet_protocol.bundle import read_bundle
from fleet_protocol.messages import RuntimeConfig


def install(store: ModelStore, bundle: Path, keys) -> StoredModel:
    """What a finished download ends in: the verified bundle extracted into its content-addressed folder."""
    from fleet_protocol.signing import sha256_file

    sha = sha256_file(bundle)
    if store.get(sha) is None:
        read_bundle(bundle, [keys.public], extract_to=store.models / sha)
    stored = store.get(sha)
    assert stored is not None
    return stored


def load_checked(stored: StoredModel, cache_dir: Path, runtime: RuntimeConfig | None = None,
                 optimization: str = "all") -> LoadedModel:
    runtime = runtime or RuntimeConfig()
    providers = resolve(runtime.providers, ort.get_available_providers(), runtime.require_provider)
    model = load(stored, providers, threads=runtime.intra_op_threads, optimization=optimization, cache_dir=cache_dir,
                 require=runtime.require_provider, runtime=runtime)
    golden_check(model)
    return model


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "data")


@pytest.fixture
def digits(store, bundles, keys) -> dict[str, StoredModel]:
    return {version: install(store, path, keys) for version, path in bundles.items()}


@pytest.fixture
def images() -> np.ndarray:
    """Real digits from the held-out split, as the model takes them: N×1×8×8 float32."""
    from model_tools.zoo.digits import load_split

    return np.ascontiguousarray(load_split()[2][:64], dtype=np.float32).reshape(-1, 1, 8, 8)

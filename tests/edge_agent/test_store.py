"""The model store: content-addressed, atomic current/previous, keeps K, survives kill -9 anywhere."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

from edge_agent.reconcile import Reconciler
from edge_agent.runtime.host import ModelHost
from edge_agent.settings import AgentSettings
from edge_agent.store import ModelStore
from tests.bundles import digits_bundle
from tests.edge_agent.conftest import install, load_checked


def test_keeps_current_previous_and_the_newest_up_to_k(tmp_path, keys, bundles):
    store = ModelStore(tmp_path / "data", keep=3)
    paths = [bundles["1.0.0"], bundles["2.0.0"]] + [digits_bundle(keys, tmp_path / "b", f"{v}.0.0", epochs=1) for v in (3, 4, 5)]
    shas = []
    for path in paths:
        stored = install(store, path, keys)
        load_checked(stored, store.cache)
        store.promote("digits", stored.sha256, None)
        shas.append(stored.sha256)
        time.sleep(0.01)
    assert store.current("digits").sha256 == shas[-1] and store.previous("digits").sha256 == shas[-2]
    assert sorted(p.name for p in store.models.iterdir()) == sorted(shas[-3:])


def test_serving_sessions_write_no_optimized_graph_and_v1_caches_are_removed(store, digits):
    """The optimized-graph file cost 2× the model in RSS while loading (see runtime/session.py): gone."""
    (store.cache / "optimized").mkdir(parents=True)
    (store.cache / "optimized" / f"{digits['2.0.0'].sha256}-ort1.17-all-t1.onnx").write_bytes(b"left by a v1 agent")
    load_checked(digits["2.0.0"], store.cache)
    store.promote("digits", digits["2.0.0"].sha256, None)
    assert not (store.cache / "optimized").exists()


def test_every_models_current_and_previous_are_kept(tmp_path, keys, bundles):
    store = ModelStore(tmp_path / "data", keep=2)
    paths = {(n, v): digits_bundle(keys, tmp_path / n, f"{v}.0.0", epochs=1, name=n) for n in "ab" for v in (1, 2)}
    a, b = [], []
    for n, v in (("a", 1), ("b", 1), ("a", 2), ("b", 2)):
        stored = install(store, paths[n, v], keys)
        store.promote(n, stored.sha256, None)
        (a if n == "a" else b).append(stored)
    assert sorted(p.name for p in store.models.iterdir()) == sorted(s.sha256 for s in a + b)  # 4 pinned > keep
    assert store.names() == ["a", "b"] and store.current("b").sha256 == b[1].sha256
    store.forget("a")
    assert sorted(p.name for p in store.models.iterdir()) == sorted(s.sha256 for s in b)


def test_a_v1_state_file_is_read_as_one_model(tmp_path, keys, bundles):
    import json

    store = ModelStore(tmp_path / "data")
    stored = install(store, bundles["1.0.0"], keys)
    (store.root / "state.json").write_text(json.dumps({"current": stored.sha256, "previous": None}))
    assert store.names() == ["digits"] and store.current("digits").sha256 == stored.sha256


CHURN = textwrap.dedent("""
    import sys, itertools
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from edge_agent.store import ModelStore
    from fleet_protocol.bundle import read_bundle
    from fleet_protocol.signing import load_public_key, sha256_file
    from tests.edge_agent.conftest import load_checked
    import shutil
    key = load_public_key(Path({key!r}).read_bytes())
    store = ModelStore(Path({data!r}), keep=2)
    bundles = [Path(p) for p in {bundles!r}]
    for n, path in enumerate(itertools.cycle(bundles)):
        sha = sha256_file(path)
        if store.get(sha) is None:
            read_bundle(path, [key], extract_to=store.models / sha)
        stored = store.get(sha)
        load_checked(stored, store.cache)
        store.promote("digits", sha, None)
        if n == 0:
            print("ready", flush=True)  # one model has passed: from here on a kill may land anywhere
""")


def test_kill_9_at_any_point_boots_on_a_model_that_passed(tmp_path, keys, bundles):
    """A process installs, loads, checks and promotes models in a loop and is killed at random moments."""
    paths = [bundles["1.0.0"], bundles["2.0.0"], digits_bundle(keys, tmp_path / "b", "3.0.0", epochs=1)]
    data = tmp_path / "data"
    script = CHURN.format(root=os.getcwd(), key=str(keys.public_path), data=str(data), bundles=[str(p) for p in paths])
    rng = random.Random(7)
    settings = AgentSettings(device_id="dev-k", data_dir=data, trusted_keys=str(keys.public_path))
    booted = set()
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read().decode()[-2000:]
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = ModelStore(data, keep=2)
        [model] = Reconciler(settings, store, ModelHost()).boot()  # golden-checks what it serves
        assert model.sha256 == store.current("digits").sha256
        assert not [p for p in store.models.iterdir() if p.name.startswith(".")]  # half-extracted bundles gone
        booted.add(model.version)
    assert len(booted) >= 2  # the kills landed at different points of the churn


def _partial(store: ModelStore, path, name: str = "digits", version: str = "1.0.0", chunks: int | None = None):
    """A download of `path` as the reconciler makes one: chunks written into DATA_DIR/downloads/{sha256}/."""
    from fleet_protocol.messages import BundleRef
    from fleet_protocol.signing import sha256_file

    data = path.read_bytes()
    ref = BundleRef(name=name, version=version, sha256=sha256_file(path), size=len(data), chunk_size=4096)
    partial = store.partial(ref)
    for i in range(ref.chunk_count if chunks is None else chunks):
        assert partial.put(i, data[i * ref.chunk_size:(i + 1) * ref.chunk_size])
    return partial


def test_a_rejected_download_is_discarded(tmp_path, keys, bundles):
    import pytest

    from fleet_protocol.bundle import BundleError
    from tests.bundles import Keys

    store = ModelStore(tmp_path / "data")
    stranger = Keys(tmp_path / "stranger")  # a bundle signed by a key the device does not trust
    partial = _partial(store, bundles["1.0.0"])
    with pytest.raises(BundleError, match="signature"):
        store.install(partial, [stranger.public])
    assert not partial.folder.exists() and list(store.downloads.iterdir()) == []

    partial = _partial(store, bundles["1.0.0"], name="other")  # the desired state names another model
    with pytest.raises(BundleError, match="desired state says other"):
        store.install(partial, [keys.public])
    assert not partial.folder.exists() and list(store.downloads.iterdir()) == []
    assert list(store.models.iterdir()) == []


def test_unfinished_downloads_survive_boot_and_go_at_the_next_promote(tmp_path, keys, bundles):
    store = ModelStore(tmp_path / "data")
    other = digits_bundle(keys, tmp_path / "b", "3.0.0", epochs=1)
    abandoned = _partial(store, other, version="3.0.0", chunks=2)  # superseded or timed out half-way
    assert abandoned.missing()

    settings = AgentSettings(device_id="dev-gc", data_dir=store.root, trusted_keys=str(keys.public_path))
    Reconciler(settings, store, ModelHost()).boot()  # boot collects garbage but a download resumes after a restart
    assert sorted(p.name for p in abandoned.folder.iterdir()) == ["0", "1"]

    done = _partial(store, bundles["1.0.0"])
    stored = store.install(done, [keys.public])
    store.promote("digits", stored.sha256, None)
    assert list(store.downloads.iterdir()) == []  # the abandoned download is gone with the promote
    assert store.current("digits").sha256 == stored.sha256


def test_a_promote_never_collects_what_another_model_is_downloading(tmp_path, keys, bundles):
    """Two models reconcile at once: one promotes while the other is mid-download and assembling its bundle."""
    store = ModelStore(tmp_path / "data", keep=2)
    other = digits_bundle(keys, tmp_path / "b", "1.0.0", epochs=1, name="other")
    partial = _partial(store, other, name="other", chunks=2)
    store.claim(partial.ref.sha256)  # the other model's worker is on it
    assembling = store.downloads / ".bundle-inflight"
    assembling.write_bytes(b"half an assembled bundle")

    stored = install(store, bundles["1.0.0"], keys)
    store.promote("digits", stored.sha256, None)
    assert sorted(p.name for p in partial.folder.iterdir()) == ["0", "1"] and assembling.exists()
    store.forget("digits")
    assert partial.folder.exists() and assembling.exists()

    store.release(partial.ref.sha256)
    store.collect_garbage(boot=True)  # a restart: nothing is in flight any more, temporary files go
    assert not assembling.exists() and partial.folder.exists()  # the download itself resumes after a restart

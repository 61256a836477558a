"""Zero-downtime hot swap on real sessions: requests from several threads, without pause, while 20 swaps
alternate two real models under one name and a second model answers beside it. No request fails, and every
answer is exactly what one whole model version computes."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import numpy as np
import pytest

from edge_agent.runtime.host import ModelHost
from fleet_protocol.messages import Batching, Runtime
from tests.edge_agent.conftest import install, load_checked

SWAPS = 20
THREADS = 4


def _reference(models, images) -> dict[str, np.ndarray]:
    """Each version's output for every image, computed alone, before any concurrency."""
    return {m.version: m.run({"image": images})[0] for m in models}


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_twenty_swaps_under_load_fail_no_request(digits, store, images, batching):
    host = ModelHost()
    runtime = Runtime(batching=Batching(enabled=batching, max_batch_size=8, max_delay_ms=0.5))
    cache = store.cache
    first = load_checked(digits["1.0.0"], cache, runtime)
    second = load_checked(digits["2.0.0"], cache, runtime)
    reference = _reference([first, second], images)
    # The two models must disagree on the images, or the test could not tell which one answered.
    assert (reference["1.0.0"].argmax(1) != reference["2.0.0"].argmax(1)).sum() > 5
    del first, second
    host.swap(load_checked(digits["1.0.0"], cache, runtime))

    stop = threading.Event()
    failures: list[BaseException] = []
    answers: list[tuple[str, int, np.ndarray]] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        mine = []
        while not stop.is_set():
            i = int(rng.integers(len(images)))
            model = host.get("digits")  # one read: the request runs on this model to the end
            try:
                out = model.run({"image": images[i:i + 1]})
            except BaseException as exc:
                failures.append(exc)
                continue
            mine.append((model.version, i, out[0][0]))
        with lock:
            answers.extend(mine)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(THREADS)]
    for t in threads:
        t.start()
    retired: list[weakref.ref] = []
    versions = ["2.0.0", "1.0.0"] * (SWAPS // 2)
    for version in versions:
        new = load_checked(digits[version], cache, runtime)  # built, warmed up and golden-checked beside the old
        time.sleep(0.01)
        old = host.swap(new)
        retired.append(weakref.ref(old))
        del old, new
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()

    assert failures == []
    assert host.get("digits").version == "1.0.0"
    served = {v for v, _, _ in answers}
    assert served == {"1.0.0", "2.0.0"}, "both versions must have answered during the swaps"
    assert len(answers) > 200
    for version, i, probs in answers:
        # Bit-identical to the version the host said it used: no half-swapped or mixed computation.
        np.testing.assert_allclose(probs, reference[version][i], rtol=1e-5, atol=1e-6)
    host.close()
    gc.collect()
    # Every replaced session was released once its in-flight requests finished.
    assert [r() for r in retired if r() is not None and r() is not host.get("digits")] == []


def test_old_session_finishes_in_flight_request_then_is_released(digits, store, images):
    host = ModelHost()
    host.swap(load_checked(digits["1.0.0"], store.cache))
    model = host.get("digits")  # what a request read before the swap
    gone = weakref.ref(model)
    host.swap(load_checked(digits["2.0.0"], store.cache))
    out = model.run({"image": images[:1]})  # the in-flight request still completes on v1
    assert np.isclose(out[0].sum(), 1.0, atol=1e-4)
    del model
    gc.collect()
    assert gone() is None


def test_swapping_one_model_leaves_the_other_alone(digits, store, images, keys, tmp_path):
    """Two names on one host: swapping and removing one never touches the other's object or its answers."""
    from tests.bundles import digits_bundle

    other = install(store, digits_bundle(keys, tmp_path / "other", "1.0.0", epochs=1, name="digits-b"), keys)
    host = ModelHost()
    host.swap(load_checked(digits["1.0.0"], store.cache))
    host.swap(load_checked(other, store.cache))
    assert host.names() == ["digits", "digits-b"]
    kept = host.get("digits-b")
    host.swap(load_checked(digits["2.0.0"], store.cache))
    assert host.get("digits-b") is kept and host.get("digits").version == "2.0.0"
    host.remove("digits")
    assert host.names() == ["digits-b"] and host.get("digits-b") is kept
    assert kept.run({"image": images[:2]})[0].shape == (2, 10)
    host.close()

"""Zero-downtime hot swap on real sessions: requests from several threads, without pause, while 20 swaps
alternate two real models. No request fails, and every answer is exactly what one whole model computes."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import numpy as np
import pytest

from edge_agent.engine import Engine
from fleet_protocol.messages import Batching
from tests.edge_agent.conftest import load_checked

SWAPS = 20
THREADS = 4


def _reference(models, images) -> dict[str, np.ndarray]:
    """Each version's output for every image, computed alone, before any concurrency."""
    return {m.version: m.run({"image": images})["probabilities"] for m in models}


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_twenty_swaps_under_load_fail_no_request(digits, store, images, batching):
    engine = Engine()
    engine.configure_batching(Batching(enabled=batching, max_batch_size=8, max_delay_ms=0.5))
    cache = store.cache
    first = load_checked(digits["1.0.0"], cache)
    second = load_checked(digits["2.0.0"], cache)
    reference = _reference([first, second], images)
    # The two models must disagree on the images, or the test could not tell which one answered.
    assert (reference["1.0.0"].argmax(1) != reference["2.0.0"].argmax(1)).sum() > 5
    del first, second
    engine.swap(load_checked(digits["1.0.0"], cache))

    stop = threading.Event()
    failures: list[BaseException] = []
    answers: list[tuple[str, int, np.ndarray]] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        mine = []
        while not stop.is_set():
            i = int(rng.integers(len(images)))
            try:
                model, out = engine.predict({"image": images[i:i + 1]})
            except BaseException as exc:  # noqa: BLE001 - any failure is what this test counts
                failures.append(exc)
                continue
            mine.append((model.version, i, out["probabilities"][0]))
        with lock:
            answers.extend(mine)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(THREADS)]
    for t in threads:
        t.start()
    retired: list[weakref.ref] = []
    versions = ["2.0.0", "1.0.0"] * (SWAPS // 2)
    for version in versions:
        new = load_checked(digits[version], cache)  # built, warmed up and golden-checked beside the old
        time.sleep(0.01)
        old = engine.swap(new)
        retired.append(weakref.ref(old))
        del old, new
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()

    assert failures == []
    assert engine.current.version == "1.0.0"
    served = {v for v, _, _ in answers}
    assert served == {"1.0.0", "2.0.0"}, "both versions must have answered during the swaps"
    assert len(answers) > 200
    for version, i, probs in answers:
        # Bit-identical to the version the engine said it used: no half-swapped or mixed computation.
        np.testing.assert_allclose(probs, reference[version][i], rtol=1e-5, atol=1e-6)
    engine.close()
    gc.collect()
    # Every replaced session was released once its in-flight requests finished.
    assert [r() for r in retired if r() is not None and r() is not engine.current] == []


def test_old_session_finishes_in_flight_request_then_is_released(digits, store, images):
    engine = Engine()
    engine.swap(load_checked(digits["1.0.0"], store.cache))
    model = engine.model()  # what a request read before the swap
    gone = weakref.ref(model)
    engine.swap(load_checked(digits["2.0.0"], store.cache))
    out = engine.run_on(model, {"image": images[:1]})  # the in-flight request still completes on v1
    assert np.isclose(out["probabilities"].sum(), 1.0, atol=1e-4)
    del model
    gc.collect()
    assert gone() is None


def test_keep_previous_loaded_keeps_it_for_instant_rollback(digits, store):
    engine = Engine(keep_previous_loaded=True)
    v1 = load_checked(digits["1.0.0"], store.cache)
    engine.swap(v1)
    engine.swap(load_checked(digits["2.0.0"], store.cache))
    assert engine.previous is v1
    engine.swap(v1)
    assert engine.current is v1 and engine.previous.version == "2.0.0"

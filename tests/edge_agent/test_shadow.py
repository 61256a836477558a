"""Shadow evaluation on real models: agreement by task, the CPU budget, and the request path left alone."""

from __future__ import annotations

import random
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edge_agent.shadow.compare import Boxes, Text, Top1, box_f1, char_agreement, comparer_for
from edge_agent.shadow.runner import ShadowRunner
from tests.bundles import digits


def permuted(onnx_path, tmp_path) -> bytes:
    """The same network with its class scores shuffled: it passes its own golden check, yet reads every digit wrong."""
    model = onnx.load(str(onnx_path))
    out = model.graph.output[0]
    perm = np.roll(np.arange(10), 3).astype(np.int64)
    model.graph.initializer.append(numpy_helper.from_array(perm, "perm"))
    raw = out.name + "_raw"
    for node in model.graph.node:
        node.output[:] = [raw if o == out.name else o for o in node.output]
    model.graph.node.append(helper.make_node("Gather", [raw, "perm"], [out.name], axis=1))
    return model.SerializeToString()


def session(model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def inputs():
    from model_tools.zoo.digits import load_split

    _, _, x_test, _ = load_split()
    return digits(20), x_test[:120]


def runner_for(live: ort.InferenceSession, candidate: ort.InferenceSession, **kw) -> ShadowRunner:
    return ShadowRunner("2.0.0", lambda feeds: candidate.run(None, dict(feeds)), Top1(), sample_rate=1.0, cpu_budget=1.0, **kw)


def test_a_candidate_that_reads_digits_differently_disagrees_and_a_sound_one_agrees(inputs, tmp_path):
    zoo, images = inputs
    live = session(zoo.onnx)
    for candidate, low, high in ((session(zoo.onnx), 1.0, 1.0), (session(permuted(zoo.onnx, tmp_path)), 0.0, 0.2),
                                 (session(digits(1).onnx), 0.3, 0.99)):
        runner = runner_for(live, candidate)
        for img in images:
            feeds = {"image": img[None]}
            runner.process(feeds, live.run(None, feeds))
        t = runner.telemetry()
        assert t.samples == len(images)
        assert low <= t.agreement <= high, t
        assert t.latency_ms_p95 is not None and t.latency_ms_p95 >= t.latency_ms_p50 > 0
    assert t.max_abs_diff > 0


def test_the_cpu_budget_skips_samples_instead_of_slowing_the_device(inputs):
    zoo, images = inputs
    now = [0.0]
    live = session(zoo.onnx)
    runner = runner_for(live, live, clock=lambda: now[0])
    runner.cpu_budget = 0.05
    runner._allowance = 0.0
    feeds = {"image": images[0][None]}
    out = live.run(None, feeds)
    runner.offer(feeds, out)  # no allowance yet: skipped and counted
    assert runner.totals.dropped == 1 and not runner._queue
    now[0] += 1.0  # a second later 50 ms of CPU are allowed
    runner.offer(feeds, out)
    assert len(runner._queue) == 1


def test_offer_hands_work_to_the_worker_and_returns_at_once(inputs):
    zoo, images = inputs
    live = session(zoo.onnx)
    runner = ShadowRunner("2.0.0", lambda feeds: live.run(None, dict(feeds)), Top1(), sample_rate=0.5,
                          cpu_budget=1.0, rng=random.Random(7)).start()
    try:
        for img in images[:200]:
            feeds = {"image": img[None]}
            runner.offer(feeds, live.run(None, feeds))
            time.sleep(0.001)  # a stream of requests, not a burst
        deadline = time.monotonic() + 60
        while runner.totals.samples + runner.totals.dropped < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        t = runner.telemetry()
        # about half sampled (seeded), every sample either compared or counted as skipped
        assert 60 <= t.samples + t.dropped <= 140
        assert t.agreement == 1.0
    finally:
        runner.stop()


def test_a_failing_candidate_counts_as_disagreement_and_the_worker_survives(inputs):
    zoo, images = inputs
    live = session(zoo.onnx)

    def broken(feeds):
        raise RuntimeError("wrong input shape")

    runner = ShadowRunner("2.0.0", broken, Top1(), sample_rate=1.0, cpu_budget=1.0)
    feeds = {"image": images[0][None]}
    runner.process(feeds, live.run(None, feeds))
    assert runner.totals.errors == 1 and runner.telemetry().agreement == 0.0


def test_box_and_text_agreement():
    a = np.array([[0.1, 0.1, 0.3, 0.3, 0.9], [0.5, 0.5, 0.8, 0.8, 0.8]], np.float32)
    assert box_f1(a, a) == 1.0
    assert box_f1(a, a[:1]) == pytest.approx(2 / 3)
    assert box_f1(a, a + 0.5) == 0.0
    assert box_f1(np.zeros((0, 5)), np.zeros((0, 5))) == 1.0
    assert char_agreement("PLATE 42", "PLATE 42") == 1.0
    assert char_agreement("PLATE 42", "PLATE 47") == pytest.approx(7 / 8)
    assert Boxes(lambda out: out[0]).agreement([a], [a[:1]]) == pytest.approx(2 / 3)
    assert Text(lambda out: [str(out[0])]).agreement(["abc"], ["abd"]) == pytest.approx(2 / 3)
    assert isinstance(comparer_for("classification"), Top1)
    assert comparer_for("detection").__class__.__name__ == "Closeness"  # no decoder: raw closeness

"""The shadow candidate in the agent's core loop, on real sessions: loaded beside the live model through the
store, fed by the live request path, reported and counted in telemetry; removed with the spec; refused by the
memory check, the live model serving on."""

from __future__ import annotations

from demo.cluster import wait_for
from edge_agent.telemetry import build_telemetry
from fleet_protocol.messages import Desired, ModelSpec, ModelState, Shadow
from tests.edge_agent.test_reconcile import apply, make, ref


def test_a_shadow_candidate_compares_on_live_requests_and_goes_with_its_spec(store, keys, digits, bundles, images):
    reconciler, host, reports = make(store, keys)
    try:
        live = ModelSpec(bundle=ref(bundles["1.0.0"], "1.0.0"))
        apply(reconciler, Desired(revision=1, models={"digits": live}))
        shadow = Shadow(bundle=ref(bundles["2.0.0"], "2.0.0"), sample_rate=1.0, cpu_budget=1.0)
        apply(reconciler, Desired(revision=2, models={"digits": live.model_copy(update={"shadow": shadow})}))
        report = reports.model()
        assert report.state == ModelState.serving and report.serving.version == "1.0.0"
        assert report.shadow.state == ModelState.serving and report.shadow.bundle.version == "2.0.0"
        model = host.get("digits")
        assert model.version == "1.0.0" and model.shadow is not None
        runner = model.shadow
        for i in range(40):
            model.run({"image": images[i:i + 1]})  # what the HTTP server and the cameras call
            # paced like a camera: each sample compared (or counted as skipped) before the next request
            wait_for(lambda i=i: (t := runner.telemetry()).samples + t.dropped >= i + 1, 30, "the sample to be handled")
        t = build_telemetry(host.stats, host, 10.0).models["digits"]
        assert t.version == "1.0.0" and t.requests == 40
        assert t.shadow.version == "2.0.0" and t.shadow.samples + t.shadow.dropped >= 20
        assert 0.5 <= t.shadow.agreement <= 1.0 and t.shadow.latency_ms_p95 > 0  # 1 vs 20 epochs: mostly agree
        assert sum(t.confidence.counts) == 40 and sum(t.input_mean.counts) == 40
        # The spec without shadow: the candidate goes, the live model stays.
        apply(reconciler, Desired(revision=3, models={"digits": live}))
        assert host.get("digits").shadow is None and reports.model().shadow is None
        assert host.get("digits") is model
    finally:
        reconciler.stop()
        host.close()


def test_a_candidate_that_does_not_fit_the_memory_budget_is_refused_and_the_live_model_serves_on(
        store, keys, digits, bundles):
    reconciler, host, reports = make(store, keys)
    try:
        live = ModelSpec(bundle=ref(bundles["1.0.0"], "1.0.0"))
        apply(reconciler, Desired(revision=1, models={"digits": live}))
        shadow = Shadow(bundle=ref(bundles["2.0.0"], "2.0.0"))
        apply(reconciler, Desired(revision=2, memory_budget_mb=9, models={"digits": live.model_copy(update={"shadow": shadow})}))
        report = reports.model()
        assert report.state == ModelState.serving and report.serving.version == "1.0.0"
        assert report.shadow.state == ModelState.failed and "MemoryBudgetError" in report.shadow.error
        assert host.get("digits").shadow is None
    finally:
        reconciler.stop()
        host.close()

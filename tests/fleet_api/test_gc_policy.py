"""The API process's garbage collector: a block of telemetry is freed by reference counts, never collected."""

from __future__ import annotations

import gc
import json

from fleet_api.gc_policy import YOUNG_THRESHOLD, tune_for_serving
from fleet_api.mqtt.handlers import parse_telemetry

GOOD = {"schema": 2, "window_s": 10.0, "ts": 1796160000.0, "models": {"digits": {"version": "1.0.0", "requests": 5,
        "errors": 1, "latency_ms_p95": 4.0}}, "health": {"cpu_percent": 20.0, "agent_rss_mb": 80.0}}


def test_a_block_of_telemetry_sets_off_no_collection_once_tuned_for_serving():
    payloads = [json.dumps({**GOOD, "ts": 1796160000.0 + k}).encode() for k in range(1000)]  # a receiver's block
    threshold, collections = gc.get_threshold(), []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    try:
        tune_for_serving()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *threshold[1:]) and gc.get_freeze_count() > 0
        gc.callbacks.append(count)
        block = [parse_telemetry(p) for p in payloads]  # all alive at once, as until a block is observed
        assert len(block) == 1000 and collections == []
    finally:
        if count in gc.callbacks:
            gc.callbacks.remove(count)
        gc.set_threshold(*threshold)
        gc.unfreeze()

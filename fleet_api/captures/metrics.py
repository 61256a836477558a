"""Prometheus: samples stored and refused (counted as they come), bytes used and the quota (read at scrape time)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .store import CaptureStore

log = logging.getLogger(__name__)

STORED = Counter("edgefleet_api_captures_stored_total", "Captured samples stored")
REPEATED = Counter("edgefleet_api_captures_repeated_total",
                   "Captured samples sent again after a lost acknowledgement (acknowledged, not stored twice)")
REFUSED = Counter("edgefleet_api_captures_refused_total", "Captured samples refused", ["reason"])


class CaptureCollector(Collector):
    def __init__(self, store: CaptureStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            usage = self.store.usage()
        except Exception:  # a scrape must not fail because the database is briefly away
            log.exception("capture metrics unavailable")
            return
        used = GaugeMetricFamily("edgefleet_captures_bytes", "Bytes of captured samples stored (the fleet's quota use)")
        used.add_metric([], usage["bytes_used"])
        yield used
        quota = GaugeMetricFamily("edgefleet_captures_quota_bytes", "The fleet's quota for captured samples")
        quota.add_metric([], usage["quota_bytes"])
        yield quota
        count = GaugeMetricFamily("edgefleet_captures", "Captured samples stored, by model", labels=["model"])
        for m in usage["models"]:
            count.add_metric([m["model"]], m["count"])
        yield count

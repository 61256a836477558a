"""Prometheus: the active alerts, read from the database at scrape time (any replica gives the same answer)."""

from __future__ import annotations

import logging

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class AlertCollector(Collector):
    def __init__(self, insights) -> None:
        self.insights = insights

    def collect(self):
        try:
            active = self.insights.alerts(active=True, limit=1000)
        except Exception:  # a scrape must not fail because the database is briefly away
            log.exception("alert metrics unavailable")
            return
        # Like Prometheus' own ALERTS series: one per active alert, so it can be joined and routed alike.
        alerts = GaugeMetricFamily("edgefleet_alerts", "Active alerts of the insights (1 per alert)",
                                   labels=["alertname", "device", "model", "severity", "alertstate"])
        crossing = GaugeMetricFamily("edgefleet_alert_predicted_crossing_timestamp_seconds",
                                     "When an active alert predicts its threshold to be crossed (Unix time)",
                                     labels=["alertname", "device", "model"])
        counts: dict[tuple[str, str], int] = {}
        for a in active:
            alerts.add_metric([a.kind.value, a.device_id, a.model, a.severity.value, a.state.value], 1)
            if a.predicted_at is not None:
                crossing.add_metric([a.kind.value, a.device_id, a.model], a.predicted_at)
            counts[(a.kind.value, a.state.value)] = counts.get((a.kind.value, a.state.value), 0) + 1
        by_kind = GaugeMetricFamily("edgefleet_alerts_active", "Active alerts by kind and state", labels=["alertname", "alertstate"])
        for (kind, state), n in sorted(counts.items()):
            by_kind.add_metric([kind, state], n)
        yield alerts
        yield crossing
        yield by_kind

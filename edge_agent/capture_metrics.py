"""Data capture on the agent's /metrics, read from the sampler's, spool's and uploader's own counters when
scraped (the core stays free of per-sample prometheus calls: a plain counter step on the request path)."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .capture_upload import Uploader
from .sampler import Sampler


class CaptureCollector:
    def __init__(self, sampler: Sampler, uploader: Uploader) -> None:
        self.sampler = sampler
        self.uploader = uploader

    def collect(self):
        s, u = self.sampler, self.uploader
        kept = CounterMetricFamily("edgefleet_agent_capture_kept", "Samples kept for upload, by why they qualified",
                                   labels=["reason"])
        for reason, n in sorted(dict(s.kept).items()):
            kept.add_metric([reason], n)
        skipped = CounterMetricFamily(
            "edgefleet_agent_capture_skipped", "Samples not kept, by why (not_opted_in counts every answer seen "
            "while the device does not take part)", labels=["reason"])
        for reason, n in sorted(dict(s.skipped).items()):
            skipped.add_metric([reason], n)
        refused = CounterMetricFamily("edgefleet_agent_capture_refused", "Samples the fleet refused, by why",
                                      labels=["reason"])
        for reason, n in sorted(dict(u.refused).items()):
            refused.add_metric([reason], n)
        yield kept
        yield skipped
        yield refused
        yield CounterMetricFamily("edgefleet_agent_capture_uploaded", "Samples the fleet acknowledged as stored",
                                  value=u.uploaded)
        yield CounterMetricFamily("edgefleet_agent_capture_resent", "Samples sent again (no ack in time)",
                                  value=u.resent)
        yield CounterMetricFamily("edgefleet_agent_capture_spool_dropped",
                                  "Samples pushed out of a full spool before they were uploaded", value=s.spool.dropped)
        yield GaugeMetricFamily("edgefleet_agent_capture_spool_bytes", "Bytes of samples waiting for upload",
                                value=s.spool.total_bytes)
        yield GaugeMetricFamily("edgefleet_agent_capture_spool_samples", "Samples waiting for upload",
                                value=len(s.spool))
        yield GaugeMetricFamily("edgefleet_agent_capture_in_flight", "Samples sent and not yet acknowledged",
                                value=len(u.in_flight))

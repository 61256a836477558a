"""Prometheus metrics of the cameras, read from the pipelines' own counters when scraped (nothing is counted
twice, and the pipeline core stays free of prometheus_client). One collector serves every CameraManager."""

from __future__ import annotations

import threading
import weakref

from prometheus_client import REGISTRY
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from .pipeline import LATENCY_BUCKETS

_services: weakref.WeakSet = weakref.WeakSet()
_lock = threading.Lock()
_registered = False


class CameraCollector:
    def collect(self):
        gauges = {
            "capture_fps": GaugeMetricFamily("edgefleet_camera_capture_fps", "Frames per second read from the source", labels=["camera"]),
            "inference_fps": GaugeMetricFamily("edgefleet_camera_inference_fps", "Frames per second through the detector", labels=["camera"]),
            "up": GaugeMetricFamily("edgefleet_camera_up", "1 while the source delivers frames", labels=["camera"]),
        }
        counters = {
            "frames_captured": CounterMetricFamily("edgefleet_camera_frames_captured", "Frames read from the source", labels=["camera"]),
            "frames_processed": CounterMetricFamily("edgefleet_camera_frames_processed", "Frames through the detector", labels=["camera"]),
            "frames_dropped": CounterMetricFamily("edgefleet_camera_frames_dropped", "Frames dropped because the detector was busy (newest wins)", labels=["camera"]),
            "frames_corrupt": CounterMetricFamily("edgefleet_camera_frames_corrupt", "Frames that could not be decoded", labels=["camera"]),
            "reconnects": CounterMetricFamily("edgefleet_camera_reconnects", "Times the source came back after failing", labels=["camera"]),
            "events_sent": CounterMetricFamily("edgefleet_camera_events", "Events sent", labels=["camera"]),
        }
        latency = HistogramMetricFamily("edgefleet_camera_latency_seconds", "End-to-end latency: frame read to detections", labels=["camera"])
        for service in list(_services):
            for pipeline in list(service.pipelines.values()):
                s = pipeline.stats()
                name = [pipeline.name]
                for key, family in gauges.items():
                    family.add_metric(name, float(s["state"] == "live") if key == "up" else s[key])
                for key, counter in counters.items():
                    counter.add_metric(name, s[key])
                lat = pipeline.latency
                cumulative, buckets = 0, []
                for bound, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], lat.buckets, strict=True):
                    cumulative += n
                    buckets.append((bound, cumulative))
                latency.add_metric(name, buckets, lat.total)
        yield from gauges.values()
        yield from counters.values()
        yield latency


def register(service) -> None:
    global _registered
    with _lock:
        _services.add(service)
        if not _registered:
            REGISTRY.register(CameraCollector())
            _registered = True

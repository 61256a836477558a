"""Prometheus: fleet gauges computed from the database at scrape time (any replica gives the same answer)."""

from __future__ import annotations

import logging

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class FleetCollector(Collector):
    def __init__(self, service) -> None:
        self.service = service

    def collect(self):
        try:
            summary = self.service.fleet_summary()
        except Exception:  # a scrape must not fail because the database is briefly away
            log.exception("fleet metrics unavailable")
            return
        devices = GaugeMetricFamily("edgefleet_fleet_devices", "Devices by the reported state and version of each model",
                                    labels=["state", "model", "version"])
        for (state, model, version), n in sorted(summary["models"].items()):
            devices.add_metric([state, model, version], n)
        yield devices
        registered = GaugeMetricFamily("edgefleet_fleet_devices_registered", "Devices registered and not revoked")
        registered.add_metric([], summary["total"])
        yield registered
        online = GaugeMetricFamily("edgefleet_fleet_devices_online", "Devices whose broker status is online")
        online.add_metric([], summary["online"])
        yield online
        progress = GaugeMetricFamily("edgefleet_rollout_devices", "Devices of active rollouts by their rollout state",
                                     labels=["rollout", "model", "version", "state"])
        wave = GaugeMetricFamily("edgefleet_rollout_wave", "Current wave (1-based) of active rollouts",
                                 labels=["rollout", "model", "version", "state"])
        waves = GaugeMetricFamily("edgefleet_rollout_waves", "Number of waves of active rollouts", labels=["rollout"])
        for r in summary["active_rollouts"]:
            rid = str(r["id"])
            for state, n in sorted(r["devices"].items()):
                progress.add_metric([rid, r["model"], r["version"], state], n)
            wave.add_metric([rid, r["model"], r["version"], r["state"]], r["wave"])
            waves.add_metric([rid], r["waves"])
        yield progress
        yield wave
        yield waves
        yield from self._per_device_and_rollout_states()
        drift = getattr(self.service, "drift", None)
        if drift is not None:
            scores = GaugeMetricFamily("edgefleet_drift_psi", "Drift of a device's recent windows from its model "
                                       "version's baseline (population stability index)",
                                       labels=["device", "model", "version", "stat"])
            for s in drift.scores():
                scores.add_metric([s["device_id"], s["model"], s["version"], s["stat"]], s["psi"])
            yield scores
            alerts = GaugeMetricFamily("edgefleet_drift_alerts_open", "Open drift alerts", labels=["model", "stat"])
            counts: dict[tuple[str, str], int] = {}
            for a in drift.alerts(state="open"):
                counts[(a["model"], a["stat"])] = counts.get((a["model"], a["stat"]), 0) + 1
            for (model, stat), n in sorted(counts.items()):
                alerts.add_metric([model, stat], n)
            yield alerts


    def _per_device_and_rollout_states(self):
        """What the alerting rules in k3s/addons/observability need: which device is offline (not only how
        many), and rollouts by final state (an abort leaves the active-rollout gauges, it must still be seen)."""
        from sqlalchemy import func, select

        from .db.tables import Device, Rollout, aware

        try:
            with self.service.sessions() as db:
                devices = db.execute(select(Device.id, Device.online, Device.last_seen).where(Device.revoked.is_(False))).all()
                rollouts = db.execute(select(Rollout.state, func.count()).group_by(Rollout.state)).all()
        except Exception:
            log.exception("per-device metrics unavailable")
            return
        online = GaugeMetricFamily("edgefleet_device_online", "1 while the device's broker status is online", labels=["device"])
        seen = GaugeMetricFamily("edgefleet_device_last_seen_timestamp_seconds", "When the device last reported or changed status",
                                 labels=["device"])
        for device_id, is_online, last_seen in devices:
            online.add_metric([device_id], 1 if is_online else 0)
            if last_seen is not None:
                seen.add_metric([device_id], aware(last_seen).timestamp())
        yield online
        yield seen
        by_state = GaugeMetricFamily("edgefleet_rollouts", "Rollouts by state, all time", labels=["state"])
        counts = dict(rollouts)
        for state in ("pending", "running", "paused", "succeeded", "aborted", "rolled_back"):
            by_state.add_metric([state], counts.get(state, 0))
        yield by_state

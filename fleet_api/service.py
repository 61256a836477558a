"""The fleet core: one object the HTTP routes and the MQTT handlers both call.

It owns transactions (one per operation) and the order that makes desired state safe: change the database,
commit, then publish from the outbox. It knows nothing of FastAPI or paho.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_protocol.messages import Event, Fetch, Reported, Status, Telemetry
from fleet_protocol.topics import Topics

from .chunk_server import ChunkServer
from .db.tables import Bundle, Device, Rollout, RolloutDevice, TelemetrySample, utcnow
from .errors import NotFound
from .publisher import Publisher
from .registry import bundles as bundle_registry
from .registry import devices as device_registry
from .registry.artifacts import ArtifactStore
from .rollouts import desired as desired_state
from .rollouts import engine
from .settings import ApiSettings

log = logging.getLogger(__name__)

EVENTS = Counter("edgefleet_api_device_events_total", "Device events received", ["kind"])
REJECTED = Counter("edgefleet_api_messages_rejected_total", "Device messages rejected", ["channel", "reason"])


class FleetService:
    def __init__(self, settings: ApiSettings, sessions: sessionmaker[Session], publisher: Publisher) -> None:
        self.settings = settings
        self.sessions = sessions
        self.publisher = publisher
        self.topics = Topics(settings.topic_prefix)
        self.store = ArtifactStore(settings.artifact_dir)
        self.trusted_keys = settings.public_keys()
        self.chunks = ChunkServer(self.store, publisher, self.topics, settings.chunk_coalesce_ms / 1000)
        self._outbox_lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions() as db, db.begin():
            yield db

    def close(self) -> None:
        self.chunks.close()

    # --- models -------------------------------------------------------------------------------------------
    def upload_bundle(self, upload: Path) -> tuple[dict[str, Any], bool]:
        with self.transaction() as db:
            row, created = bundle_registry.register_bundle(db, self.store, upload, self.trusted_keys)
            return bundle_view(row), created

    def list_bundles(self) -> list[dict[str, Any]]:
        with self.transaction() as db:
            return [bundle_view(b) for b in bundle_registry.list_bundles(db)]

    # --- devices ------------------------------------------------------------------------------------------
    def register_device(self, device_id: str, labels: dict[str, str]) -> dict[str, Any]:
        with self.transaction() as db:
            return device_view(device_registry.register_device(db, device_id, labels))

    def list_devices(self) -> list[dict[str, Any]]:
        with self.transaction() as db:
            return [device_view(d) for d in device_registry.list_devices(db)]

    def get_device(self, device_id: str) -> dict[str, Any]:
        with self.transaction() as db:
            return device_view(device_registry.get_device(db, device_id))

    # --- rollouts -----------------------------------------------------------------------------------------
    def create_rollout(self, model: str, version: str, selector: str | dict, waves: str | list, gates: dict) -> dict[str, Any]:
        with self.transaction() as db:
            rollout = engine.create_rollout(
                db, model=model, version=version, selector=device_registry.parse_selector(selector), waves=waves,
                gates=gates, chunk_size=self.settings.chunk_size,
            )
            rollout_id = rollout.id
        self.flush_outbox()
        return self.get_rollout(rollout_id)

    def get_rollout(self, rollout_id: int) -> dict[str, Any]:
        with self.transaction() as db:
            rollout = db.get(Rollout, rollout_id)
            if rollout is None:
                raise NotFound(f"unknown rollout {rollout_id}")
            members = db.scalars(
                select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id).order_by(RolloutDevice.wave, RolloutDevice.device_id)
            ).all()
            return rollout_view(rollout, members)

    def list_rollouts(self) -> list[dict[str, Any]]:
        with self.transaction() as db:
            return [rollout_view(r, None) for r in db.scalars(select(Rollout).order_by(Rollout.id.desc()))]

    def tick(self) -> None:
        """Periodic work: gates that depend on time (soak, timeouts), then anything left in the outbox."""
        with self.transaction() as db:
            ids = engine.active_rollout_ids(db)
        for rollout_id in ids:
            with self.transaction() as db:
                engine.evaluate(db, rollout_id, self.settings.chunk_size)
        self.flush_outbox()

    def flush_outbox(self) -> int:
        """Publish every desired revision not yet acknowledged by the broker, once, in revision order."""
        sent = 0
        with self._outbox_lock:
            with self.transaction() as db:
                pending = desired_state.unpublished(db)
            for device_id, revision, payload in pending:
                if not self.publisher.publish(self.topics.desired(device_id), payload, qos=1, retain=True, wait=True):
                    log.warning("desired revision %d for %s not acknowledged; will retry", revision, device_id)
                    break
                with self.transaction() as db:
                    desired_state.mark_published(db, device_id, revision)
                sent += 1
        return sent

    # --- device messages (from the MQTT shell) ------------------------------------------------------------
    def on_reported(self, device_id: str, reported: Reported) -> None:
        with self.transaction() as db:
            device_registry.record_reported(db, device_id, reported)
            touched = engine.on_reported(db, device_id, reported)
        for rollout_id in touched:
            with self.transaction() as db:
                engine.evaluate(db, rollout_id, self.settings.chunk_size)
        if touched:
            self.flush_outbox()

    def on_status(self, device_id: str, status: Status) -> None:
        with self.transaction() as db:
            device_registry.record_status(db, device_id, status)

    def on_fetch(self, device_id: str, fetch: Fetch) -> int:
        with self.transaction() as db:
            device_registry.get_device(db, device_id)
            bundle = db.scalar(select(Bundle).where(Bundle.sha256 == fetch.sha256))
            if bundle is None:
                raise NotFound(f"unknown artifact {fetch.sha256[:12]}")
            size = bundle.size
        return self.chunks.request(fetch.sha256, size, fetch.chunk_size, fetch.missing)

    def on_telemetry(self, device_id: str, telemetry: Telemetry) -> None:
        with self.transaction() as db:
            device = device_registry.get_device(db, device_id)
            device.last_seen = utcnow()
            db.add(TelemetrySample(
                device_id=device_id, ts=dt.datetime.fromtimestamp(telemetry.ts, dt.timezone.utc),
                model_sha256=telemetry.model.sha256 if telemetry.model else None, requests=telemetry.requests,
                errors=telemetry.errors, latency_ms_p95=telemetry.latency_ms_p95, payload=telemetry.model_dump(mode="json"),
            ))

    def on_event(self, device_id: str, event: Event) -> None:
        with self.transaction() as db:
            device_registry.get_device(db, device_id)
        EVENTS.labels(event.kind).inc()
        log.debug("device %s event %s: %d detections", device_id, event.kind, len(event.detections))


def bundle_view(b: Bundle) -> dict[str, Any]:
    return {
        "name": b.name, "version": b.version, "hardware_class": b.hardware_class, "sha256": b.sha256, "size": b.size,
        "task": b.task, "signed_by": b.signed_by, "created_at": b.created_at.isoformat(),
        "quantization": (b.manifest.get("quantization") or {}).get("method"),
    }


def device_view(d: Device) -> dict[str, Any]:
    return {
        "id": d.id, "labels": d.labels, "online": d.online, "revoked": d.revoked,
        "last_seen": d.last_seen.isoformat() if d.last_seen else None,
        "desired_revision": d.desired_revision, "desired": d.desired, "reported": d.reported,
    }


def rollout_view(r: Rollout, members: list[RolloutDevice] | None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": r.id, "model": r.model, "version": r.version, "selector": r.selector, "waves": r.waves,
        "gates": r.gates, "state": r.state, "current_wave": r.current_wave, "reason": r.reason,
        "created_at": r.created_at.isoformat(),
    }
    if members is not None:
        view["devices"] = [
            {"device_id": m.device_id, "wave": m.wave, "state": m.state, "bundle_sha256": m.bundle_sha256,
             "revision": m.revision, "error": m.error}
            for m in members
        ]
    return view

"""The fleet core: one object the HTTP routes and the MQTT handlers both call.

It owns transactions (one per operation) and the order that makes desired state safe: change the database,
commit, then publish from the outbox. Every change made for a person carries its audit entry in the same
transaction. It knows nothing of FastAPI or paho.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from prometheus_client import Counter
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fleet_protocol.messages import Event, Fetch, Reported, Status, Telemetry
from fleet_protocol.topics import Topics

from . import auth, telemetry
from .auth import SYSTEM, Principal
from .chunk_server import ChunkServer
from .db.tables import Bundle, Device, Rollout, RolloutDevice
from .errors import Conflict, Invalid, NotFound
from .insights.rollouts import analyze_rollout
from .insights.service import InsightsService
from .publisher import BrokerAdmin, Publisher
from .registry import bundles as bundle_registry
from .registry import devices as device_registry
from .registry.artifacts import ArtifactStore
from .rollouts import desired as desired_state
from .rollouts import engine
from .settings import ApiSettings

log = logging.getLogger(__name__)

EVENTS = Counter("edgefleet_api_device_events_total", "Device events received", ["kind"])
REJECTED = Counter("edgefleet_api_messages_rejected_total", "Device messages rejected", ["channel", "reason"])
TELEMETRY = Counter("edgefleet_api_telemetry_messages_total", "Telemetry messages ingested")
DESIRED_SENT = Counter("edgefleet_api_desired_published_total", "Desired-state revisions published")

KNOWN_DEVICE_TTL_S = 30.0


class FleetService:
    def __init__(self, settings: ApiSettings, sessions: sessionmaker[Session], publisher: Publisher,
                 broker_admin: BrokerAdmin | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        # PostgreSQL locks rows; SQLite locks the whole file for a writer (see flush_outbox)
        self._row_locks = sessions.kw["bind"].dialect.name == "postgresql"
        self.publisher = publisher
        self.broker_admin = broker_admin
        self.topics = Topics(settings.topic_prefix)
        self.store = ArtifactStore(settings.artifact_dir)
        self.trusted_keys = settings.public_keys()
        self.chunks = ChunkServer(self.store, publisher, self.topics, settings.chunk_coalesce_ms / 1000)
        self.telemetry = telemetry.TelemetryBuffer()
        self.insights = InsightsService.from_settings(settings, sessions)  # alerts and failure analysis (issue 16)
        self._outbox_lock = threading.Lock()
        self._known: dict[str, float] = {}  # device id → when we last saw it registered (telemetry hot path)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions() as db, db.begin():
            yield db

    def close(self) -> None:
        self.chunks.close()
        self.insights.close()
        try:
            self.flush_telemetry()
        except Exception:  # shutting down: the database may be gone already
            log.exception("last telemetry flush failed")

    # --- auth and audit -----------------------------------------------------------------------------------
    def bootstrap(self) -> str | None:
        with self.transaction() as db:
            return auth.bootstrap(db, self.settings.admin_token)

    def authenticate(self, token: str | None, need: str) -> Principal:
        with self.transaction() as db:
            return auth.authenticate(db, token, need)

    def create_token(self, who: Principal, name: str, role: str) -> dict[str, Any]:
        with self.transaction() as db:
            row, token = auth.create_token(db, name, role, who.actor)
            auth.audit(db, who.actor, "token.create", f"token:{row.id}", {"name": name, "role": role})
            return {**auth.token_view(row), "token": token}

    def list_tokens(self) -> list[dict[str, Any]]:
        with self.transaction() as db:
            return [auth.token_view(t) for t in auth.list_tokens(db)]

    def revoke_token(self, who: Principal, token_id: int) -> dict[str, Any]:
        with self.transaction() as db:
            row = auth.revoke_token(db, token_id)
            auth.audit(db, who.actor, "token.revoke", f"token:{token_id}", {"name": row.name})
            return auth.token_view(row)

    def audit_log(self, limit: int = 100, action: str | None = None, before_id: int | None = None) -> list[dict[str, Any]]:
        with self.transaction() as db:
            return auth.list_audit(db, limit, action, before_id)

    # --- models -------------------------------------------------------------------------------------------
    def upload_bundle(self, upload: Path, who: Principal = SYSTEM) -> tuple[dict[str, Any], bool]:
        with self.transaction() as db:
            row, created = bundle_registry.register_bundle(db, self.store, upload, self.trusted_keys)
            if created:
                auth.audit(db, who.actor, "model.upload", f"{row.name}@{row.version}",
                           {"hardware_class": row.hardware_class, "sha256": row.sha256, "size": row.size})
            return bundle_view(row), created

    def list_bundles(self) -> list[dict[str, Any]]:
        with self.transaction() as db:
            return [bundle_view(b) for b in bundle_registry.list_bundles(db)]

    # --- devices ------------------------------------------------------------------------------------------
    def register_device(self, device_id: str, labels: dict[str, str], who: Principal = SYSTEM) -> dict[str, Any]:
        """Register a device; with dynamic security on, create its broker client and return its credentials
        once (the broker keeps only a hash). The broker call runs inside the transaction: if it fails,
        the device is not registered either."""
        with self.transaction() as db:
            device = device_registry.register_device(db, device_id, labels)
            credentials = None
            if self.broker_admin is not None:
                credentials = self._issue_credentials(device)
            auth.audit(db, who.actor, "device.register", f"device:{device_id}",
                       {"labels": device.labels, "broker_client": credentials is not None})
            view = device_view(device)
        self._known[device_id] = time.monotonic()
        if credentials:
            view["credentials"] = credentials
        return view

    def _issue_credentials(self, device: Device) -> dict[str, str]:
        assert self.broker_admin is not None
        password = secrets.token_urlsafe(24)
        username, client_id = device.id, f"device-{device.id}"  # the agent connects with client id device-{id}
        self.broker_admin.create_device_client(device.id, username, password, client_id)
        device.broker_username = username
        return {"username": username, "password": password, "client_id": client_id, "broker_url_hint": self.settings.broker_url}

    def rotate_credentials(self, device_id: str, who: Principal) -> dict[str, Any]:
        if self.broker_admin is None:
            raise Conflict("the API runs without broker dynamic security (EDGEFLEET_API_DYNSEC): devices have no own credentials")
        with self.transaction() as db:
            device = device_registry.get_active_device(db, device_id)
            credentials = self._issue_credentials(device)
            auth.audit(db, who.actor, "device.credentials.rotate", f"device:{device_id}")
            return {**device_view(device), "credentials": credentials}

    def revoke_device(self, device_id: str, who: Principal) -> dict[str, Any]:
        """Revoke: the broker client goes (the broker disconnects it), the device leaves active rollouts, and its
        retained desired state is cleared. The row stays, for history and the audit trail."""
        with self.transaction() as db:
            device = device_registry.get_device(db, device_id)
            if device.revoked:
                return device_view(device)
            if self.broker_admin is not None and device.broker_username:
                self.broker_admin.delete_device_client(device.id, device.broker_username)
            device.revoked = True
            device.online = False
            engine.remove_device(db, device_id)
            # Clearing the retained desired state goes through the outbox like any change, so it is retried
            # until the broker has it, and nothing publishes the old one again.
            device.desired = None
            device.desired_revision += 1
            auth.audit(db, who.actor, "device.revoke", f"device:{device_id}")
            view = device_view(device)
        self._known.pop(device_id, None)
        self.tick_rollouts()  # a wave may pass now that the device no longer counts; publishes the outbox
        return view

    def list_devices(self) -> list[dict[str, Any]]:
        with self.transaction() as db:
            return [device_view(d) for d in device_registry.list_devices(db)]

    def get_device(self, device_id: str) -> dict[str, Any]:
        with self.transaction() as db:
            return device_view(device_registry.get_device(db, device_id))

    def device_telemetry(self, device_id: str, since: dt.datetime | None = None, until: dt.datetime | None = None,
                         limit: int = 60) -> dict[str, Any]:
        self.flush_telemetry()  # what this replica holds in memory is part of the answer
        with self.transaction() as db:
            device_registry.get_device(db, device_id)
            return {"device_id": device_id, "minutes": telemetry.query(db, device_id, since, until, limit)}

    # --- rollouts -----------------------------------------------------------------------------------------
    def create_rollout(self, model: str, version: str, selector: str | dict, waves: str | list, gates: dict,
                       who: Principal = SYSTEM) -> dict[str, Any]:
        with self.transaction() as db:
            rollout = engine.create_rollout(
                db, model=model, version=version, selector=device_registry.parse_selector(selector), waves=waves,
                gates=gates, chunk_size=self.settings.chunk_size,
            )
            auth.audit(db, who.actor, "rollout.create", f"rollout:{rollout.id}",
                       {"model": model, "version": version, "selector": rollout.selector, "waves": rollout.waves,
                        "gates": rollout.gates})
            rollout_id = rollout.id
        self.evaluate(rollout_id)  # devices already serving the bundle may pass the first wave at once
        self.flush_outbox()
        return self.get_rollout(rollout_id)

    def control_rollout(self, rollout_id: int, action: str, who: Principal, reason: str | None = None) -> dict[str, Any]:
        """pause, resume, abort or rollback; the latter two send devices their previous model."""
        ops = {
            "pause": lambda db: engine.pause(db, rollout_id, reason),
            "resume": lambda db: engine.resume(db, rollout_id),
            "abort": lambda db: engine.abort_manually(db, rollout_id, reason),
            "rollback": lambda db: engine.rollback(db, rollout_id, reason),
        }
        with self.transaction() as db:
            rollout = ops[action](db)
            auth.audit(db, who.actor, f"rollout.{action}", f"rollout:{rollout_id}", {"reason": reason, "state": rollout.state})
        if action == "resume":
            self.evaluate(rollout_id)
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
            view = rollout_view(rollout, members)
            view["failure_analysis"] = analyze_rollout(db, rollout_id).view()
            return view

    def list_rollouts(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.transaction() as db:
            rollouts = db.scalars(select(Rollout).order_by(Rollout.id.desc()).limit(limit)).all()
            counts: dict[int, dict[str, int]] = {}
            for rid, state, n in db.execute(
                select(RolloutDevice.rollout_id, RolloutDevice.state, func.count())
                .where(RolloutDevice.rollout_id.in_([r.id for r in rollouts]))
                .group_by(RolloutDevice.rollout_id, RolloutDevice.state)
            ):
                counts.setdefault(rid, {})[state] = n
            return [{**rollout_view(r, None), "device_states": counts.get(r.id, {})} for r in rollouts]

    def evaluate(self, rollout_id: int) -> str:
        with self.transaction() as db:
            before = db.get(Rollout, rollout_id)
            state_before = before.state if before else None
            state = engine.evaluate(db, rollout_id, self.settings.chunk_size)
            if state != state_before and state in ("aborted", "succeeded"):
                r = db.get(Rollout, rollout_id)
                auth.audit(db, SYSTEM.actor, f"rollout.{'auto_abort' if state == 'aborted' else 'succeed'}",
                           f"rollout:{rollout_id}", {"reason": r.reason if r else None})
            return state

    def tick_rollouts(self) -> None:
        with self.transaction() as db:
            ids = engine.active_rollout_ids(db)
        for rollout_id in ids:
            self.evaluate(rollout_id)
        self.flush_outbox()

    def tick(self) -> None:
        """Periodic work: telemetry to the database, then gates that depend on time and telemetry (soak,
        timeouts), then anything left in the outbox."""
        try:
            self.flush_telemetry()
        except Exception:
            log.exception("telemetry flush failed; kept for the next tick")
        self.tick_rollouts()

    def _publish_desired(self, pending: list[tuple[str, int, bytes]]) -> list[bool]:
        if not pending:
            return []
        return self.publisher.publish_batch([(self.topics.desired(dev), payload, 1, True) for dev, _, payload in pending])

    def flush_outbox(self) -> int:
        """Publish every desired revision not yet acknowledged by the broker, once, in revision order.

        PostgreSQL: the claimed rows stay locked while we publish and mark them, so another API process skips them.
        SQLite locks the whole file for a writer, and waiting for the broker's acknowledgements (seconds, if the
        link drops) would stall every request: there the claim, the publish and the marking are three steps.
        """
        sent = 0
        with self._outbox_lock:
            while True:
                with self.transaction() as db:
                    pending = desired_state.claim_unpublished(db, self.settings.outbox_batch)
                    if self._row_locks:
                        acks = self._publish_desired(pending)
                        _mark_published(db, pending, acks)
                if not self._row_locks:
                    acks = self._publish_desired(pending)
                    with self.transaction() as db:
                        _mark_published(db, pending, acks)
                if not pending:
                    break
                done = sum(acks)
                sent += done
                DESIRED_SENT.inc(done)
                if done < len(pending):
                    log.warning("%d desired revision(s) not acknowledged by the broker; will retry", len(pending) - done)
                    break
        return sent

    # --- device messages (from the MQTT shell) ------------------------------------------------------------
    def on_reported(self, device_id: str, reported: Reported) -> None:
        with self.transaction() as db:
            device_registry.record_reported(db, device_id, reported)
            touched = engine.on_reported(db, device_id, reported)
        for rollout_id in touched:
            self.evaluate(rollout_id)
        if touched:
            self.flush_outbox()

    def on_status(self, device_id: str, status: Status) -> None:
        with self.transaction() as db:
            device_registry.record_status(db, device_id, status)

    def on_fetch(self, device_id: str, fetch: Fetch) -> int:
        with self.transaction() as db:
            device = device_registry.get_active_device(db, device_id)
            wanted = (device.desired or {}).get("model") or {}
            # Only what the device was told to fetch, cut as it was told: anything else would let one device
            # make the API publish any bundle, in any chunk size, as often as it likes.
            if wanted.get("sha256") != fetch.sha256 or wanted.get("chunk_size") != fetch.chunk_size:
                raise Invalid(f"artifact {fetch.sha256[:12]} in {fetch.chunk_size}-byte chunks is not in this device's desired state")
            bundle = db.scalar(select(Bundle).where(Bundle.sha256 == fetch.sha256))
            if bundle is None:
                raise NotFound(f"unknown artifact {fetch.sha256[:12]}")
            size = bundle.size
        return self.chunks.request(fetch.sha256, size, fetch.chunk_size, fetch.missing)

    def _check_known(self, device_id: str) -> None:
        seen = self._known.get(device_id)
        if seen is not None and time.monotonic() - seen < KNOWN_DEVICE_TTL_S:
            return
        with self.transaction() as db:
            device_registry.get_active_device(db, device_id)
        self._known[device_id] = time.monotonic()

    def on_telemetry(self, device_id: str, message: Telemetry) -> None:
        self._check_known(device_id)
        self.telemetry.add(device_id, message)
        self.insights.observe(device_id, message)
        TELEMETRY.inc()

    def flush_telemetry(self) -> int:
        return telemetry.flush(self.sessions, self.telemetry)

    def on_event(self, device_id: str, event: Event) -> None:
        self._check_known(device_id)
        EVENTS.labels(event.kind).inc()
        log.debug("device %s event %s: %d detections", device_id, event.kind, len(event.detections))

    # --- the dashboard and /metrics -----------------------------------------------------------------------
    def fleet_summary(self) -> dict[str, Any]:
        with self.transaction() as db:
            devices = db.execute(select(Device.id, Device.online, Device.revoked, Device.reported)).all()
            by_state: dict[tuple[str, str, str], int] = {}
            online = 0
            for _id, is_online, revoked, reported in devices:
                if revoked:
                    continue
                online += bool(is_online)
                rep = reported or {}
                model = rep.get("model") or {}
                key = (rep.get("state") or "unknown", model.get("name") or "", model.get("version") or "")
                by_state[key] = by_state.get(key, 0) + 1
            rollouts = []
            for r in db.scalars(select(Rollout).where(Rollout.state.in_(engine.ACTIVE))):
                states = dict(db.execute(
                    select(RolloutDevice.state, func.count()).where(RolloutDevice.rollout_id == r.id).group_by(RolloutDevice.state)
                ).all())
                rollouts.append({"id": r.id, "model": r.model, "version": r.version, "state": r.state,
                                 "wave": r.current_wave + 1, "waves": len(r.waves), "devices": states})
            return {"devices": by_state, "online": online, "total": sum(by_state.values()), "active_rollouts": rollouts}


def _mark_published(db: Session, pending: list[tuple[str, int, bytes]], acks: list[bool]) -> None:
    for (device_id, revision, _), ok in zip(pending, acks):
        if ok:
            desired_state.mark_published(db, device_id, revision)


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
        "desired_revision": d.desired_revision, "published_revision": d.published_revision, "desired": d.desired,
        "reported": d.reported, "broker_username": d.broker_username,
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

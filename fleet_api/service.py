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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fleet_protocol.capture import Sample, SampleAck
from fleet_protocol.encryption import EncryptionError, b64d, load_public
from fleet_protocol.messages import (
    Capture,
    Event,
    Fetch,
    Hello,
    Reported,
    Runtime,
    Status,
    Telemetry,
)
from fleet_protocol.signing import public_keys
from fleet_protocol.topics import Topics

from . import auth, telemetry
from .auth import SYSTEM, Principal
from .captures import metrics as capture_metrics
from .captures.store import CaptureStore, Filters, Stored
from .chunk_server import ChunkServer
from .db.tables import Bundle, Device, ModelPolicy, Rollout, RolloutDevice, utcnow
from .desired import outbox
from .desired import state as desired_state
from .desired.specs import DeviceConfig, ProfileSpec
from .drift_monitor import DriftMonitor
from .errors import Conflict, Invalid, NotFound
from .insights.rollouts import analyze_rollout
from .insights.service import InsightsService
from .publisher import BrokerAdmin, Publisher
from .registry import bundles as bundle_registry
from .registry import devices as device_registry
from .registry import profiles as profile_registry
from .registry.artifacts import ArtifactStore
from .registry.bundles import pick_variant
from .registry.devices import HARDWARE_LABEL
from .registry.keys import KeyStore, encrypted_key_id
from .rollouts import machine
from .rollouts import waves as wave_plan
from .rollouts.gates import Gates
from .rollouts.states import ACTIVE, RolloutState
from .settings import ApiSettings

log = logging.getLogger(__name__)

EVENTS = Counter("edgefleet_api_device_events_total", "Device events received", ["kind"])
REJECTED = Counter("edgefleet_api_messages_rejected_total", "Device messages rejected", ["channel", "reason"])
TELEMETRY = Counter("edgefleet_api_telemetry_messages_total", "Telemetry messages ingested")
DESIRED_SENT = Counter("edgefleet_api_desired_published_total", "Desired-state revisions published")
HELLOS = Counter("edgefleet_api_hellos_total", "Devices that asked for their desired state on connect")

KEY_MISMATCH = Counter("edgefleet_api_device_key_mismatch_total",
                       "Reported public keys that differ from the enrolled one (ignored)")

KNOWN_DEVICE_TTL_S = 30.0


def _check_public_key(text: str) -> None:
    try:
        load_public(text)
    except (EncryptionError, ValueError) as exc:
        raise Invalid(f"public_key: not an X25519 public key (32 bytes, urlsafe base64): {exc}") from None


class FleetService:
    def __init__(self, settings: ApiSettings, sessions: sessionmaker[Session], publisher: Publisher,
                 broker_admin: BrokerAdmin | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self._pruned_at: dt.datetime | None = None  # the last telemetry prune (retention), by the tick's clock
        self._prune_more = False  # its last batch was full: older rows may be left, the next tick goes on
        # PostgreSQL locks rows; SQLite locks the whole file for a writer (see flush_outbox)
        self._row_locks = sessions.kw["bind"].dialect.name == "postgresql"
        self.publisher = publisher
        self.broker_admin = broker_admin
        self.topics = Topics(settings.topic_prefix)
        self.store = ArtifactStore(settings.artifact_dir)
        self.trusted_keys = public_keys(settings.trusted_keys)
        self.keys = KeyStore(settings.master_key_bytes())
        self.chunks = ChunkServer(self.store, publisher, self.topics, settings.chunk_coalesce_ms / 1000,
                                  settings.fetch_sends_per_chunk, settings.fetch_budget_window_s,
                                  resend_after_s=settings.chunk_resend_after_s, retain_s=settings.chunk_retain_s)
        self.telemetry = telemetry.TelemetryBuffer()
        self.drift = DriftMonitor(settings.drift)
        self.insights = InsightsService.from_settings(settings, sessions)  # alerts and failure analysis (issue 16)
        self.captures = CaptureStore(sessions, settings.capture_dir or settings.artifact_dir / "captures",
                                     int(settings.capture_quota_mb * 1024 * 1024))
        self._outbox_lock = threading.Lock()
        self._outbox_dirty = threading.Event()
        self._known: dict[str, float] = {}  # device id → when we last saw it registered (telemetry hot path)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions() as db, db.begin():
            db.info[desired_state.KEYS] = self.keys  # composing a desired state wraps data keys with it
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
    def upload_bundle(self, upload: Path, who: Principal = SYSTEM,
                      data_key: dict[str, str] | None = None) -> tuple[dict[str, Any], bool]:
        """Register a bundle; `data_key` (the .key file of `model-tools bundle --encrypt`) is kept with it, in the
        same transaction: a bundle whose key is refused is not registered either."""
        with self.transaction() as db:
            row, created = bundle_registry.register_bundle(db, self.store, upload, self.trusted_keys)
            if created:
                auth.audit(db, who.actor, "model.upload", f"{row.name}@{row.version}",
                           {"hardware_class": row.hardware_class, "sha256": row.sha256, "size": row.size,
                            "encrypted": encrypted_key_id(row) is not None})
            if data_key is not None:
                self._put_key(db, row.name, row.version, data_key, who)
            return bundle_view(row), created

    def upload_key(self, name: str, version: str, data_key: dict[str, str], who: Principal = SYSTEM) -> dict[str, Any]:
        with self.transaction() as db:
            return self._put_key(db, name, version, data_key, who)

    def _put_key(self, db: Session, name: str, version: str, data_key: dict[str, str], who: Principal) -> dict[str, Any]:
        key_id = data_key["key_id"]
        rows = bundle_registry.variants(db, name, version)
        if not any(encrypted_key_id(b) == key_id for b in rows):
            raise Invalid(f"no bundle of {name} {version} is encrypted under key {key_id}")
        try:
            raw = b64d(data_key["key"])
        except EncryptionError as exc:
            raise Invalid(f"key: {exc}") from None
        self.keys.put(db, key_id, raw, name, version)
        auth.audit(db, who.actor, "model.key.upload", f"{name}@{version}", {"key_id": key_id})  # never the key
        return {"name": name, "version": version, "key_id": key_id, "stored": True}

    def set_policy(self, name: str, require_encryption: bool, who: Principal = SYSTEM) -> dict[str, Any]:
        """Takes effect for the rollouts and assignments made from now on; what devices run is left as it is."""
        with self.transaction() as db:
            row = db.get(ModelPolicy, name)
            if row is None:
                row = ModelPolicy(name=name)
                db.add(row)
            row.require_encryption = require_encryption
            auth.audit(db, who.actor, "model.policy", f"model:{name}", {"require_encryption": require_encryption})
            return {"name": name, "require_encryption": require_encryption}

    def get_policy(self, name: str) -> dict[str, Any]:
        with self.transaction() as db:
            row = db.get(ModelPolicy, name)
            return {"name": name, "require_encryption": bool(row and row.require_encryption)}

    def list_bundles(self) -> list[dict[str, Any]]:
        with self.transaction() as db:
            return [bundle_view(b) for b in bundle_registry.list_bundles(db)]

    # --- devices ------------------------------------------------------------------------------------------
    def register_device(self, device_id: str, labels: dict[str, str], who: Principal = SYSTEM,
                        public_key: str | None = None) -> dict[str, Any]:
        """Register a device; with dynamic security on, create its broker client and return its credentials
        once (the broker keeps only a hash). The broker call runs inside the transaction: if it fails,
        the device is not registered either. `public_key`: its X25519 key, enrolled for wrapped model keys."""
        if public_key is not None:
            _check_public_key(public_key)
        with self.transaction() as db:
            device = device_registry.register_device(db, device_id, labels)
            device.public_key = public_key
            credentials = None
            if self.broker_admin is not None:
                credentials = self._issue_credentials(device)
            desired_state.recompose(db, device, self.settings.chunk_size)  # profiles may match it already
            auth.audit(db, who.actor, "device.register", f"device:{device_id}",
                       {"labels": device.labels, "broker_client": credentials is not None})
            view = device_view(device)
        self._known[device_id] = time.monotonic()
        self.flush_outbox()
        if credentials:
            view["credentials"] = credentials
        return view

    def _issue_credentials(self, device: Device) -> dict[str, str]:
        assert self.broker_admin is not None
        password = secrets.token_urlsafe(24)
        from fleet_protocol.identity import device_login

        # Devices log in inside their own namespace, so no device id can name a service account (issue 12).
        username = client_id = device_login(device.id)
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
        retained desired state, reported state and status are cleared. The row stays, for history and audit."""
        with self.transaction() as db:
            device = device_registry.get_device(db, device_id, lock=True)
            if device.revoked:
                return device_view(device)
            if self.broker_admin is not None and device.broker_username:
                self.broker_admin.delete_device_client(device.id, device.broker_username)
            device.revoked = True
            device.key_revoked = True  # and no data key is ever wrapped for it again
            device.online = False
            machine.remove_device(db, device_id)
            # Clearing the retained messages goes through the outbox like any change, so it is retried until the
            # broker has it, and nothing publishes the old desired state again.
            device.desired = None
            device.desired_revision += 1
            auth.audit(db, who.actor, "device.revoke", f"device:{device_id}")
            view = device_view(device)
        self._known.pop(device_id, None)
        self.tick_rollouts()  # a wave may pass now that the device no longer counts; publishes the outbox
        return view

    def set_public_key(self, device_id: str, public_key: str | None, who: Principal = SYSTEM) -> dict[str, Any]:
        """Enrol (a key) or revoke (None) a device's public key. Revoked, the device gets no data key for anything
        new (a model it already serves goes on serving until it restarts) and no key is pinned for it again."""
        if public_key is not None:
            _check_public_key(public_key)
        with self.transaction() as db:
            device = device_registry.get_active_device(db, device_id, lock=True)
            device.public_key, device.key_revoked = public_key, public_key is None
            changed = desired_state.recompose(db, device, self.settings.chunk_size)
            auth.audit(db, who.actor, "device.key.enrol" if public_key else "device.key.revoke", f"device:{device_id}",
                       {"public_key": public_key, "new_revision": device.desired_revision if changed else None})
            view = device_view(device)
        self.flush_outbox()
        return view

    def _pin_key(self, db: Session, device: Device, reported: Reported) -> bool:
        """first_contact enrolment: the first key a device reports is trusted; a different one later is not."""
        offered = reported.public_key
        if not offered or offered == device.public_key:
            return False
        if device.public_key is not None:
            KEY_MISMATCH.inc()
            log.warning("device %s reports public key %s…, enrolled is %s…: ignored (PUT /v1/devices/%s/public-key "
                        "to change it)", device.id, offered[:8], device.public_key[:8], device.id)
            return False
        if self.settings.key_enrolment != "first_contact" or device.key_revoked:
            return False
        device.public_key = offered
        auth.audit(db, SYSTEM.actor, "device.key.pin", f"device:{device.id}", {"public_key": offered})
        return desired_state.recompose(db, device, self.settings.chunk_size)

    def list_devices(self) -> list[dict[str, Any]]:
        with self.transaction() as db:
            return [device_view(d) for d in device_registry.list_devices(db)]

    def get_device(self, device_id: str) -> dict[str, Any]:
        with self.transaction() as db:
            return device_view(device_registry.get_device(db, device_id))

    def update_labels(self, device_id: str, changes: dict[str, str | None], who: Principal = SYSTEM) -> dict[str, Any]:
        """Change labels (None removes one): the profiles that match may change, and so the desired state."""
        with self.transaction() as db:
            before = dict(device_registry.get_active_device(db, device_id).labels or {})
            device = device_registry.update_labels(db, device_id, changes)
            changed = desired_state.recompose(db, device, self.settings.chunk_size)
            auth.audit(db, who.actor, "device.labels", f"device:{device_id}",
                       {"before": before, "after": device.labels, "new_revision": device.desired_revision if changed else None})
            view = device_view(device)
        self.flush_outbox()
        return view

    def get_config(self, device_id: str) -> dict[str, Any]:
        with self.transaction() as db:
            device = device_registry.get_device(db, device_id)
            return config_view(device)

    def set_config(self, device_id: str, config: DeviceConfig, who: Principal = SYSTEM) -> dict[str, Any]:
        """Replace the device's own configuration (it wins over every profile)."""
        with self.transaction() as db:
            device = device_registry.get_active_device(db, device_id, lock=True)
            device.config = config.model_dump(mode="json", exclude_none=True)
            changed = desired_state.recompose(db, device, self.settings.chunk_size)
            auth.audit(db, who.actor, "device.config", f"device:{device_id}",
                       {"config": device.config, "new_revision": device.desired_revision if changed else None})
            view = config_view(device)
        self.flush_outbox()
        return view

    def set_capture(self, device_id: str, capture: Capture | None, who: Principal = SYSTEM) -> dict[str, Any]:
        """Only the `capture` of the device's own configuration (None: drop it, profiles decide), the rest kept."""
        with self.transaction() as db:
            device = device_registry.get_active_device(db, device_id, lock=True)
            config = dict(device.config or {})
            if capture is None:
                config.pop("capture", None)
            else:
                config["capture"] = capture.model_dump(mode="json")
            device.config = DeviceConfig.model_validate(config).model_dump(mode="json", exclude_none=True)
            changed = desired_state.recompose(db, device, self.settings.chunk_size)
            auth.audit(db, who.actor, "device.config", f"device:{device_id}",
                       {"capture": config.get("capture"), "new_revision": device.desired_revision if changed else None})
            view = config_view(device)
        self.flush_outbox()
        return view

    def assign_model(self, device_id: str, model: str, version: str, runtime: Runtime | None,
                     who: Principal = SYSTEM) -> dict[str, Any]:
        """Give one device a bundle of a model directly (its hardware variant), outside any rollout."""
        with self.transaction() as db:
            device = device_registry.get_active_device(db, device_id, lock=True)
            self._not_in_rollout(db, device_id, model)
            bundle = pick_variant(bundle_registry.variants(db, model, version), device.labels.get(HARDWARE_LABEL))
            self.keys.check_deliverable(db, model, version, [bundle])
            desired_state.assign(db, device_id, model, bundle.sha256,
                                 runtime.model_dump(mode="json") if runtime is not None else None, None)
            changed = desired_state.recompose(db, device, self.settings.chunk_size)
            auth.audit(db, who.actor, "device.model.assign", f"device:{device_id}",
                       {"model": model, "version": version, "sha256": bundle.sha256,
                        "runtime": runtime.model_dump(mode="json") if runtime else None,
                        "new_revision": device.desired_revision if changed else None})
            view = self._desired_view(db, device)
        self.flush_outbox()
        return view

    def remove_model(self, device_id: str, model: str, who: Principal = SYSTEM) -> dict[str, Any]:
        with self.transaction() as db:
            device = device_registry.get_active_device(db, device_id, lock=True)
            self._not_in_rollout(db, device_id, model)
            if not desired_state.unassign(db, device_id, model):
                raise NotFound(f"device {device_id!r} has no model {model!r}")
            desired_state.recompose(db, device, self.settings.chunk_size)
            auth.audit(db, who.actor, "device.model.remove", f"device:{device_id}",
                       {"model": model, "new_revision": device.desired_revision})
            view = self._desired_view(db, device)
        self.flush_outbox()
        return view

    @staticmethod
    def _not_in_rollout(db: Session, device_id: str, model: str) -> None:
        rollout_id = machine.active_rollout_of(db, device_id, model)
        if rollout_id is not None:
            raise Conflict(f"rollout {rollout_id} is moving {model!r} on device {device_id!r}; "
                           "finish, abort or pause-and-abort it first")

    def get_desired(self, device_id: str) -> dict[str, Any]:
        with self.transaction() as db:
            return self._desired_view(db, device_registry.get_device(db, device_id))

    def _desired_view(self, db: Session, device: Device) -> dict[str, Any]:
        composed = desired_state.compose_device(db, device, self.settings.chunk_size)
        return {"device_id": device.id, "revision": device.desired_revision, "published_revision": device.published_revision,
                "desired": device.desired, "sources": composed.sources, "problems": composed.problems}

    def device_telemetry(self, device_id: str, since: dt.datetime | None = None, until: dt.datetime | None = None,
                         limit: int = 60, model: str | None = None) -> dict[str, Any]:
        self.flush_telemetry()  # what this replica holds in memory is part of the answer
        with self.transaction() as db:
            device_registry.get_device(db, device_id)
            return {"device_id": device_id, "minutes": telemetry.query(db, device_id, since, until, limit, model)}

    # --- profiles -----------------------------------------------------------------------------------------
    def list_profiles(self) -> list[dict[str, Any]]:
        with self.transaction() as db:
            return [profile_registry.view(p) for p in profile_registry.list_all(db)]

    def get_profile(self, name: str) -> dict[str, Any]:
        with self.transaction() as db:
            return profile_registry.view(profile_registry.get(db, name))

    def put_profile(self, name: str, spec: ProfileSpec, who: Principal = SYSTEM, create_only: bool = False) -> tuple[dict[str, Any], bool]:
        with self.transaction() as db:
            if create_only:
                row, created = profile_registry.create(db, name, spec), True
            else:
                row, created = profile_registry.replace(db, name, spec)
            moved = desired_state.recompose_all(db, self.settings.chunk_size)
            auth.audit(db, who.actor, "profile.create" if created else "profile.update", f"profile:{name}",
                       {"spec": spec.model_dump(mode="json", exclude_none=True), "devices": moved[:100], "device_count": len(moved)})
            view = profile_registry.view(row)
        self.flush_outbox()
        return {**view, "devices_changed": moved}, created

    def delete_profile(self, name: str, who: Principal = SYSTEM) -> dict[str, Any]:
        with self.transaction() as db:
            row = profile_registry.delete(db, name)
            view = profile_registry.view(row)
            moved = desired_state.recompose_all(db, self.settings.chunk_size)
            auth.audit(db, who.actor, "profile.delete", f"profile:{name}", {"devices": moved[:100], "device_count": len(moved)})
        self.flush_outbox()
        return {**view, "devices_changed": moved}

    # --- rollouts -----------------------------------------------------------------------------------------
    def create_rollout(self, model: str, version: str, selector: str | dict, waves: str | list,
                       gates: Gates | dict[str, Any] | None = None, who: Principal = SYSTEM,
                       runtime: Runtime | None = None, now: dt.datetime | None = None,
                       shadow: dict[str, Any] | None = None) -> dict[str, Any]:
        if not isinstance(gates, Gates):
            try:
                gates = Gates.model_validate(gates or {})
            except ValidationError as exc:
                first = exc.errors()[0]
                raise Invalid(f"gates: {'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}") from None
        default_pace = self.settings.rollout_max_concurrent
        if default_pace and shadow is None and "max_concurrent" not in gates.model_fields_set:
            gates = gates.model_copy(update={"max_concurrent": default_pace})
        with self.transaction() as db:
            self.keys.check_deliverable(db, model, version, bundle_registry.variants(db, model, version))
            rollout = machine.create_rollout(
                db, model=model, version=version, selector=device_registry.parse_selector(selector), waves=waves,
                gates=gates, runtime=runtime, chunk_size=self.settings.chunk_size, now=now, shadow=shadow,
            )
            auth.audit(db, who.actor, "rollout.create", f"rollout:{rollout.id}",
                       {"model": model, "version": version, "selector": rollout.selector, "waves": rollout.waves,
                        "gates": rollout.gates, "runtime": rollout.runtime, "shadow": rollout.shadow})
            rollout_id = rollout.id
        self.evaluate(rollout_id, now)  # devices already serving the bundle may pass the first wave at once
        self.flush_outbox()
        return self.get_rollout(rollout_id)

    def control_rollout(self, rollout_id: int, action: str, who: Principal, reason: str | None = None,
                        now: dt.datetime | None = None) -> dict[str, Any]:
        """pause, resume, abort or rollback; the latter two give devices their previous bundle of the model."""
        chunk = self.settings.chunk_size
        ops = {
            "pause": lambda db: machine.pause(db, rollout_id, reason),
            "resume": lambda db: machine.resume(db, rollout_id, now),
            "abort": lambda db: machine.abort_manually(db, rollout_id, reason, chunk),
            "rollback": lambda db: machine.rollback(db, rollout_id, reason, chunk),
        }
        if action not in ops:
            raise Invalid(f"unknown action {action!r}; one of {sorted(ops)}")
        with self.transaction() as db:
            rollout = ops[action](db)
            auth.audit(db, who.actor, f"rollout.{action}", f"rollout:{rollout_id}", {"reason": reason, "state": rollout.state})
        if action == "resume":
            self.evaluate(rollout_id, now)
        self.flush_outbox()
        return self.get_rollout(rollout_id)

    def get_rollout(self, rollout_id: int) -> dict[str, Any]:
        with self.transaction() as db:
            rollout = db.get(Rollout, rollout_id)
            if rollout is None:
                raise NotFound(f"unknown rollout {rollout_id}")
            members = list(db.scalars(
                select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id).order_by(RolloutDevice.wave, RolloutDevice.device_id)
            ))
            reported: dict[str, Any] = dict(db.execute(select(Device.id, Device.reported).where(
                Device.id.in_([m.device_id for m in members]))).all()) if members else {}
            view = rollout_view(rollout, members, reported)
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

    def evaluate(self, rollout_id: int, now: dt.datetime | None = None) -> str:
        with self.transaction() as db:
            before, state = machine.evaluate(db, rollout_id, self.settings.chunk_size, now)
            if state != before and state in (RolloutState.aborted.value, RolloutState.succeeded.value):
                r = db.get(Rollout, rollout_id)
                auth.audit(db, SYSTEM.actor, f"rollout.{'auto_abort' if state == 'aborted' else 'succeed'}",
                           f"rollout:{rollout_id}", {"reason": r.reason if r else None})
            return state

    def tick_rollouts(self, now: dt.datetime | None = None) -> None:
        with self.transaction() as db:
            ids = machine.active_rollout_ids(db)
        for rollout_id in ids:
            self.evaluate(rollout_id, now)
        self.flush_outbox()

    def tick(self, now: dt.datetime | None = None) -> None:
        """Periodic work: telemetry to the database, then gates that depend on time and telemetry (soak,
        timeouts), then anything left in the outbox; once per prune interval, telemetry past its retention.
        `now` is injected by tests; the ticker passes none."""
        try:
            self.flush_telemetry()
        except Exception:
            log.exception("telemetry flush failed; kept for the next tick")
        self.tick_rollouts(now)
        # One batch per tick: a backlog (retention newly set, months of rows) is worked off over many ticks
        # instead of holding the rollouts and the outbox behind one long delete.
        now = now or utcnow()
        due = self._pruned_at is None or (now - self._pruned_at).total_seconds() >= self.settings.telemetry_prune_interval_s
        if due or self._prune_more:
            if due:
                self._pruned_at = now
            try:
                self._prune_more = self.prune_telemetry(now, max_batches=1) == telemetry.PRUNE_BATCH
            except Exception:
                self._prune_more = False
                log.exception("telemetry prune failed; tried again at the next interval")

    def prune_telemetry(self, now: dt.datetime | None = None, max_batches: int | None = None) -> int:
        """Delete telemetry minutes older than the retention (none when it is 0), in batches of
        `telemetry.PRUNE_BATCH`, at most `max_batches` of them; → rows deleted."""
        days = self.settings.telemetry_retention_days
        if not days:
            return 0
        deleted = telemetry.prune(self.sessions, (now or utcnow()) - dt.timedelta(days=days),
                                  telemetry.PRUNE_BATCH, max_batches)
        if deleted:
            log.info("telemetry: %d minute rows older than %g days deleted", deleted, days)
        return deleted

    def _publish_desired(self, pending: list[tuple[str, int, bytes]]) -> list[bool]:
        if not pending:
            return []
        messages: list[tuple[str, bytes, int, bool]] = []
        spans = []
        for dev, _, payload in pending:
            start = len(messages)
            messages.append((self.topics.desired(dev), payload, 1, True))
            if not payload:  # revoked: clear everything the broker retains of the device
                messages += [(self.topics.reported(dev), b"", 1, True), (self.topics.status(dev), b"", 1, True)]
            spans.append((start, len(messages)))
        acks = self.publisher.publish_batch(messages)
        return [all(acks[a:b]) for a, b in spans]

    def flush_outbox(self) -> int:
        """Publish every desired revision not yet acknowledged by the broker, in revision order (at least once:
        see desired/outbox.py for what is guaranteed).

        PostgreSQL: the claimed rows stay locked while we publish and mark them, so another API process skips them.
        SQLite locks the whole file for a writer, and waiting for the broker's acknowledgements (seconds, if the
        link drops) would stall every request: there the claim, the publish and the marking are three steps.
        """
        # One flush at a time per process. A caller that finds one running does not wait for it (it may be
        # waiting seconds for the broker): it marks the outbox dirty and the running flush goes round again.
        sent = 0
        self._outbox_dirty.set()
        while True:
            if not self._outbox_lock.acquire(blocking=False):
                return sent
            try:
                while self._outbox_dirty.is_set():
                    self._outbox_dirty.clear()
                    done, complete = self._flush_outbox_once()
                    sent += done
                    if not complete:
                        return sent  # the broker did not take everything: the next tick retries
            finally:
                self._outbox_lock.release()
            if not self._outbox_dirty.is_set():
                return sent

    def _flush_outbox_once(self) -> tuple[int, bool]:
        sent = 0
        while True:
            with self.transaction() as db:
                pending = outbox.claim_unpublished(db, self.settings.outbox_batch)
                if self._row_locks:
                    acks = self._publish_desired(pending)
                    _mark_published(db, pending, acks)
            if not self._row_locks:
                acks = self._publish_desired(pending)
                with self.transaction() as db:
                    _mark_published(db, pending, acks)
            if not pending:
                return sent, True
            done = sum(acks)
            sent += done
            DESIRED_SENT.inc(done)
            if done < len(pending):
                log.warning("%d desired revision(s) not acknowledged by the broker; will retry", len(pending) - done)
                return sent, False

    # --- device messages (from the MQTT shell) ------------------------------------------------------------
    def on_reported(self, device_id: str, reported: Reported, now: dt.datetime | None = None) -> None:
        with self.transaction() as db:
            device = device_registry.record_reported(db, device_id, reported)
            pinned = self._pin_key(db, device, reported)
        # Its own transaction, holding no device row: it locks rollouts, and a rollout step that holds one and
        # moves this device would otherwise wait for us while we wait for it (PostgreSQL deadlock).
        with self.transaction() as db:
            touched = machine.on_reported(db, device_id, reported, now)
            due = [rollout_id for rollout_id in touched if machine.worth_judging(db, rollout_id)]
        for rollout_id in due:
            self.evaluate(rollout_id, now)
        if touched or pinned:
            self.flush_outbox()

    def on_status(self, device_id: str, status: Status) -> None:
        with self.transaction() as db:
            device_registry.record_status(db, device_id, status)

    def on_hello(self, device_id: str, _hello: Hello) -> bool:
        """A device (re)connected and asks for its desired state: publish it again from the database, so a broker
        that lost its retained messages (restarted without persistence) costs nothing. → whether there was one."""
        with self.transaction() as db:
            device = device_registry.get_active_device(db, device_id, lock=True)
            device.last_seen = utcnow()
            if device.desired_revision == 0:
                return False  # nothing was ever set for it
            outbox.owe_again(device)
        HELLOS.inc()
        self.flush_outbox()
        return True

    def on_fetch(self, device_id: str, fetch: Fetch) -> int:
        with self.transaction() as db:
            device = device_registry.get_active_device(db, device_id)
            # Only what the device was told to fetch, cut as it was told: anything else would let one device
            # make the API publish any bundle, in any chunk size, as often as it likes.
            if (fetch.sha256, fetch.chunk_size) not in _wanted(device.desired):
                raise Invalid(f"artifact {fetch.sha256[:12]} in {fetch.chunk_size}-byte chunks is not in this device's desired state")
            bundle = db.scalar(select(Bundle).where(Bundle.sha256 == fetch.sha256))
            if bundle is None:
                raise NotFound(f"unknown artifact {fetch.sha256[:12]}")
            size = bundle.size
        count = -(-size // fetch.chunk_size)
        beyond = [i for i in fetch.missing if i >= count]
        if beyond:
            raise Invalid(f"chunk index {beyond[0]} is out of range: artifact {fetch.sha256[:12]} has {count} chunks")
        return self.chunks.request(fetch.sha256, size, fetch.chunk_size, fetch.missing, device=device_id)

    def known_recently(self, device_id: str) -> bool:
        """Whether the device was found registered and active less than KNOWN_DEVICE_TTL_S ago (no database)."""
        seen = self._known.get(device_id)
        return seen is not None and time.monotonic() - seen < KNOWN_DEVICE_TTL_S

    def _check_known(self, device_id: str) -> None:
        seen = self._known.get(device_id)
        if seen is not None and time.monotonic() - seen < KNOWN_DEVICE_TTL_S:
            return
        with self.transaction() as db:
            device_registry.get_active_device(db, device_id)
        self._known[device_id] = time.monotonic()

    def known_among(self, device_ids: Iterable[str]) -> set[str]:
        """Which of these devices are registered and active: one query for a block of telemetry (the telemetry
        receiver's), remembered as _check_known does."""
        ids = sorted(set(device_ids))
        if not ids:
            return set()
        with self.sessions() as db:
            found = set(db.scalars(select(Device.id).where(Device.id.in_(ids), Device.revoked.is_(False))))
        now = time.monotonic()
        for device_id in found:
            self._known[device_id] = now
        return found

    def on_telemetry(self, device_id: str, message: Telemetry) -> None:
        self._check_known(device_id)
        self.on_telemetry_batch([(device_id, message)])

    def on_telemetry_batch(self, messages: list[tuple[str, Telemetry]]) -> None:
        """Telemetry of devices known recently (the caller checked, with known_among): one lock and one clock
        reading for the whole block, in the rollups, the insights and the drift monitor alike."""
        self.telemetry.add_many(messages)
        TELEMETRY.inc(len(messages))
        self.insights.observe_many(messages)
        for alert in self.drift.add_many(messages):
            log.warning("drift alert %s: device %s, %s %s, %s PSI %.3f", alert.state.value, alert.device_id,
                        alert.model, alert.version, alert.stat, alert.score)
        # only while a shadow runs on a device: its numbers are what a shadow-mode wave waits for
        shadows = [(device_id, name, m.shadow) for device_id, message in messages
                   for name, m in message.models.items() if m.shadow is not None]
        if shadows:
            with self.transaction() as db:
                for device_id, name, shadow in shadows:
                    machine.record_shadow(db, device_id, name, shadow)

    def flush_telemetry(self) -> int:
        return telemetry.flush(self.sessions, self.telemetry)

    def on_event(self, device_id: str, event: Event) -> None:
        self._check_known(device_id)
        EVENTS.labels(event.kind).inc()
        log.debug("device %s event %s: %d detections", device_id, event.kind, len(event.detections))

    def on_capture(self, device_id: str, sample: tuple[Sample, bytes]) -> Stored:
        """A captured sample (unpacked and intact): store it unless the quota is full or its model is not one the
        device runs, then acknowledge it either way, so the device drops it from its spool. An unknown or revoked
        device gets no answer (NotFound: counted by the shell like any of its messages)."""
        header, data = sample
        with self.transaction() as db:
            device = device_registry.get_active_device(db, device_id)
            # The desired state's models, and what the device reports: a sample of a model just removed from the
            # desired state may still be in the device's spool. Any version: the dataset records which one.
            models = set((device.desired or {}).get("models") or {}) | set((device.reported or {}).get("models") or {})
        if header.model not in models:
            result = Stored(stored=False, refused="unknown_model")
        else:
            result = self.captures.put(device_id, header, data)
        if result.refused:
            capture_metrics.REFUSED.labels(result.refused).inc()
            log.info("device %s: sample %s of %s refused: %s", device_id, header.id, header.model, result.refused)
        else:
            (capture_metrics.REPEATED if result.repeat else capture_metrics.STORED).inc()
        self._ack_capture(device_id, SampleAck(id=header.id, stored=result.stored, refused=result.refused))
        return result

    def refuse_capture(self, device_id: str, sample_id: str) -> None:
        """A sample whose envelope names its id but is not intact (cut, or data not matching its sha256): the device
        is told `invalid`, so it does not send it again and again."""
        self._check_known(device_id)
        capture_metrics.REFUSED.labels("invalid").inc()
        self._ack_capture(device_id, SampleAck(id=sample_id, stored=False, refused="invalid"))

    def delete_capture(self, capture_id: int, who: Principal) -> dict[str, Any]:
        def record(db: Session, _n: int) -> None:
            auth.audit(db, who.actor, "capture.delete", f"capture:{capture_id}")

        return self.captures.delete(capture_id, record)

    def delete_captures(self, filters: Filters, who: Principal) -> int:
        """Every sample the filters match (all of them with no filter: the caller asked for that explicitly)."""
        def record(db: Session, n: int) -> None:
            detail = {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in vars(filters).items()
                      if v is not None}
            auth.audit(db, who.actor, "capture.delete", "captures", {**detail, "deleted": n})

        return self.captures.delete_matching(filters, record)

    def _ack_capture(self, device_id: str, ack: SampleAck) -> None:
        # Not waited for: a lost ack only makes the device send the sample again, which is acknowledged again.
        self.publisher.publish(self.topics.capture_ack(device_id), ack.to_bytes(), qos=1)

    # --- the dashboard and /metrics -----------------------------------------------------------------------
    def fleet_summary(self) -> dict[str, Any]:
        with self.transaction() as db:
            devices = db.execute(select(Device.id, Device.online, Device.revoked, Device.reported)).all()
            by_state: dict[tuple[str, str, str], int] = {}
            online = total = 0
            for _id, is_online, revoked, reported in devices:
                if revoked:
                    continue
                total += 1
                online += bool(is_online)
                for name, entry in ((reported or {}).get("models") or {}).items():
                    version = (entry.get("serving") or entry.get("desired") or {}).get("version") or ""
                    key = (entry.get("state") or "unknown", name, version)
                    by_state[key] = by_state.get(key, 0) + 1
            rollouts = []
            for r in db.scalars(select(Rollout).where(Rollout.state.in_([s.value for s in ACTIVE]))):
                states = dict(db.execute(
                    select(RolloutDevice.state, func.count()).where(RolloutDevice.rollout_id == r.id).group_by(RolloutDevice.state)
                ).all())
                rollouts.append({"id": r.id, "model": r.model, "version": r.version, "state": r.state,
                                 "wave": r.current_wave + 1, "waves": len(r.waves), "devices": states})
            return {"models": by_state, "online": online, "total": total, "active_rollouts": rollouts}


    # --- read-only views for the dashboard ----------------------------------------------------------------
    def model_versions(self, name: str) -> list[dict[str, Any]]:
        """Every variant of every version of one model, oldest first, each with its manifest."""
        with self.transaction() as db:
            rows = bundle_registry.list_bundles(db, name)
            if not rows:
                raise NotFound(f"unknown model {name!r}")
            return [{**bundle_view(b), "manifest": b.manifest} for b in rows]

    def preview_rollout(self, selector: str | dict, waves: str | list, model: str | None = None) -> dict[str, Any]:
        """What creating this rollout now would do, without doing it: the devices the selector matches (and
        which are busy in another active rollout of the same model) and the wave each one would be in (the
        machine's own order)."""
        with self.transaction() as db:
            parsed = device_registry.parse_selector(selector)
            targets = device_registry.select_devices(db, parsed)
            counts = wave_plan.plan(waves, len(targets)) if targets else []
            busy = dict(db.execute(
                select(RolloutDevice.device_id, RolloutDevice.rollout_id)
                .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
                .where(Rollout.state.in_([a.value for a in ACTIVE]), RolloutDevice.device_id.in_([d.id for d in targets]),
                       RolloutDevice.state != "removed", *([Rollout.model == model] if model else []))
            ).all())
            devices = [{**device_view(d), "wave": next(k for k, c in enumerate(counts) if i < c), "busy_in": busy.get(d.id)}
                       for i, d in enumerate(targets)]
            return {"selector": parsed, "waves": counts, "devices": devices}

    def device_rollouts(self, device_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The rollouts a device took part in, newest first, with how it went for this device."""
        with self.transaction() as db:
            device_registry.get_device(db, device_id)
            rows = db.execute(
                select(RolloutDevice, Rollout).join(Rollout, Rollout.id == RolloutDevice.rollout_id)
                .where(RolloutDevice.device_id == device_id).order_by(Rollout.id.desc()).limit(limit)
            ).all()
            return [{"rollout_id": r.id, "model": r.model, "version": r.version, "rollout_state": r.state,
                     "wave": m.wave, "state": m.state, "error": m.error, "previous": m.previous,
                     "updated_at": m.updated_at.isoformat() if m.updated_at else None} for m, r in rows]

    def rollout_previous(self, rollout_id: int) -> dict[str, dict[str, Any] | None]:
        """Per device of a rollout, the model it served before the rollout moved it (what an abort sends back)."""
        with self.transaction() as db:
            return dict(db.execute(
                select(RolloutDevice.device_id, RolloutDevice.previous).where(RolloutDevice.rollout_id == rollout_id)
            ).all())


def _wanted(desired: dict[str, Any] | None) -> set[tuple[str, int]]:
    """(sha256, chunk size) of every bundle the desired state names: the models' and their shadows'."""
    out = set()
    for spec in ((desired or {}).get("models") or {}).values():
        for bundle in (spec.get("bundle"), (spec.get("shadow") or {}).get("bundle")):
            if bundle:
                out.add((bundle["sha256"], bundle["chunk_size"]))
    return out


def _mark_published(db: Session, pending: list[tuple[str, int, bytes]], acks: list[bool]) -> None:
    for (device_id, revision, _), ok in zip(pending, acks, strict=True):
        if ok:
            outbox.mark_published(db, device_id, revision)


def bundle_view(b: Bundle) -> dict[str, Any]:
    return {
        "name": b.name, "version": b.version, "hardware_class": b.hardware_class, "sha256": b.sha256, "size": b.size,
        "task": b.task, "signed_by": b.signed_by, "created_at": b.created_at.isoformat(),
        "quantization": (b.manifest.get("quantization") or {}).get("method"),
        "encryption_key_id": encrypted_key_id(b),
    }


def model_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """One reported model, flattened for lists: what serves, where its desired bundle is, why it failed."""
    serving, desired = entry.get("serving") or {}, entry.get("desired") or {}
    return {
        "state": entry.get("state"), "version": serving.get("version"), "sha256": serving.get("sha256"),
        "desired_version": desired.get("version"), "provider": entry.get("provider"), "precision": entry.get("precision"),
        "progress": entry.get("progress"), "golden_passed": entry.get("golden_passed"), "error": entry.get("error"),
        "rollout_id": entry.get("rollout_id"),
    }


def device_view(d: Device) -> dict[str, Any]:
    reported = d.reported or {}
    return {
        "id": d.id, "labels": d.labels or {}, "online": d.online, "revoked": d.revoked,
        "last_seen": d.last_seen.isoformat() if d.last_seen else None,
        "desired_revision": d.desired_revision, "published_revision": d.published_revision,
        "reported_revision": reported.get("revision"),
        "models": {name: model_summary(e) for name, e in (reported.get("models") or {}).items()},
        "cameras": reported.get("cameras") or {},
        "error": reported.get("error"),
        "desired": d.desired, "reported": d.reported, "broker_username": d.broker_username,
        "public_key": d.public_key, "key_revoked": d.key_revoked,
    }


def config_view(d: Device) -> dict[str, Any]:
    return {"device_id": d.id, "config": DeviceConfig.model_validate(d.config or {}).model_dump(mode="json"),
            "desired_revision": d.desired_revision}


def member_view(m: RolloutDevice, model: str, reported: dict[str, Any] | None) -> dict[str, Any]:
    entry = ((reported or {}).get("models") or {}).get(model) or {}
    return {"device_id": m.device_id, "wave": m.wave, "state": m.state, "bundle_sha256": m.bundle_sha256,
            "revision": m.revision, "error": m.error,
            "previous_version": (m.previous or {}).get("version"), "shadow": m.shadow,
            "reported": model_summary(entry) if entry else None}


def rollout_view(r: Rollout, members: list[RolloutDevice] | None, reported: dict[str, Any] | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": r.id, "model": r.model, "version": r.version, "selector": r.selector, "waves": r.waves,
        "gates": r.gates, "runtime": r.runtime, "shadow": r.shadow, "state": r.state, "current_wave": r.current_wave, "reason": r.reason,
        "created_at": r.created_at.isoformat(),
    }
    if members is not None:
        reported = reported or {}
        view["devices"] = [member_view(m, r.model, reported.get(m.device_id)) for m in members]
        view["wave_progress"] = [
            {"wave": k + 1, "devices": len(in_wave), "states": _count(m.state for m in in_wave)}
            for k in range(len(r.waves)) for in_wave in [[m for m in members if m.wave == k]]
        ]
    return view


def _count(states: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in states:
        out[s] = out.get(s, 0) + 1
    return out

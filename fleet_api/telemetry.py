"""Telemetry: rolled up in memory per device, minute and model, written to the database in one transaction a tick.

A fleet of thousands sends a message per device every few seconds; one transaction per message would make the
database the bottleneck. What a crash loses is at most one tick of a QoS-0 stream that is lossy anyway.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from fleet_protocol.messages import Telemetry

from .db.tables import Device, TelemetryMinute, utcnow

log = logging.getLogger(__name__)

Key = tuple[str, dt.datetime, str]  # device id, minute, model sha256 ("" without a model)


def minute_of(ts: float) -> dt.datetime:
    t = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    return t.replace(second=0, microsecond=0)


@dataclass
class Rollup:
    model_version: str | None = None
    provider: str | None = None
    messages: int = 0
    requests: int = 0
    errors: int = 0
    latency_messages: int = 0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    p95_max: float | None = None
    cpu: float = 0.0
    memory_max: float | None = None

    def add(self, t: Telemetry) -> None:
        self.model_version = t.model.version if t.model else self.model_version
        self.provider = t.provider or self.provider
        self.messages += 1
        self.requests += t.requests
        self.errors += t.errors
        if t.latency_ms_p95 is not None:
            self.latency_messages += 1
            self.p50 += t.latency_ms_p50 or 0.0
            self.p95 += t.latency_ms_p95
            self.p99 += t.latency_ms_p99 or 0.0
            self.p95_max = max(self.p95_max or 0.0, t.latency_ms_p95)
        self.cpu += t.cpu_percent or 0.0
        if t.memory_mb is not None:
            self.memory_max = max(self.memory_max or 0.0, t.memory_mb)

    def merge_into(self, row: TelemetryMinute) -> None:
        row.model_version = self.model_version or row.model_version
        row.provider = self.provider or row.provider
        row.messages = (row.messages or 0) + self.messages
        row.requests = (row.requests or 0) + self.requests
        row.errors = (row.errors or 0) + self.errors
        row.latency_messages = (row.latency_messages or 0) + self.latency_messages
        row.latency_ms_p50_sum = (row.latency_ms_p50_sum or 0.0) + self.p50
        row.latency_ms_p95_sum = (row.latency_ms_p95_sum or 0.0) + self.p95
        row.latency_ms_p99_sum = (row.latency_ms_p99_sum or 0.0) + self.p99
        if self.p95_max is not None:
            row.latency_ms_p95_max = max(row.latency_ms_p95_max or 0.0, self.p95_max)
        row.cpu_percent_sum = (row.cpu_percent_sum or 0.0) + self.cpu
        if self.memory_max is not None:
            row.memory_mb_max = max(row.memory_mb_max or 0.0, self.memory_max)


@dataclass
class TelemetryBuffer:
    _rollups: dict[Key, Rollup] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, device_id: str, t: Telemetry, received: float | None = None) -> None:
        # Filed by when we received it, not by the device's clock: a camera without RTC or NTP may live in 1970,
        # and the health gates compare minutes with the server's own time.
        key = (device_id, minute_of(time.time() if received is None else received), t.model.sha256 if t.model else "")
        with self._lock:
            self._rollups.setdefault(key, Rollup()).add(t)

    def __len__(self) -> int:
        return len(self._rollups)

    def take(self) -> dict[Key, Rollup]:
        with self._lock:
            taken, self._rollups = self._rollups, {}
        return taken

    def put_back(self, taken: dict[Key, Rollup]) -> None:
        with self._lock:
            for key, rollup in taken.items():
                mine = self._rollups.get(key)
                if mine is None:
                    self._rollups[key] = rollup
                else:  # newer messages came meanwhile: fold the older ones in
                    _fold(mine, rollup)


def _fold(into: Rollup, other: Rollup) -> None:
    into.messages += other.messages
    into.requests += other.requests
    into.errors += other.errors
    into.latency_messages += other.latency_messages
    into.p50 += other.p50
    into.p95 += other.p95
    into.p99 += other.p99
    if other.p95_max is not None:
        into.p95_max = max(into.p95_max or 0.0, other.p95_max)
    into.cpu += other.cpu
    if other.memory_max is not None:
        into.memory_max = max(into.memory_max or 0.0, other.memory_max)


def write(db: Session, rollups: dict[Key, Rollup]) -> None:
    """Merge rollups into their minute rows (insert or add). Caller commits; IntegrityError means another
    replica inserted the same row meanwhile: the caller retries, and the row is then found."""
    by_device: dict[str, list[Key]] = {}
    for key in rollups:
        by_device.setdefault(key[0], []).append(key)
    minutes = {k[1] for k in rollups}
    existing: dict[Key, TelemetryMinute] = {}
    if rollups:
        rows = db.scalars(
            select(TelemetryMinute).where(
                TelemetryMinute.device_id.in_(list(by_device)), TelemetryMinute.minute.in_(list(minutes))
            ).with_for_update()
        )
        for row in rows:
            existing[(row.device_id, _aware(row.minute), row.model_sha256)] = row
    for key, rollup in rollups.items():
        row = existing.get(key)
        if row is None:
            row = TelemetryMinute(device_id=key[0], minute=key[1], model_sha256=key[2])
            db.add(row)
        rollup.merge_into(row)
    # telemetry is the liveness signal of devices that say nothing else
    db.execute(update(Device).where(Device.id.in_(list(by_device))).values(last_seen=utcnow()))


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)  # SQLite hands back naive datetimes


def flush(sessions, buffer: TelemetryBuffer) -> int:
    taken = buffer.take()
    if not taken:
        return 0
    for attempt in range(3):
        try:
            with sessions() as db, db.begin():
                write(db, taken)
            return len(taken)
        except IntegrityError as exc:  # another replica inserted the same minute first: merge again
            if attempt == 2:
                # Refused three times over: putting it back would block every later flush behind it.
                log.error("dropping %d telemetry rollups the database refuses: %s", len(taken), str(exc).splitlines()[0])
                return 0
        except OperationalError:  # the database is away: keep the minutes for the next tick
            buffer.put_back(taken)
            raise
    return 0


def row_view(r: TelemetryMinute) -> dict[str, Any]:
    n = r.latency_messages or 0
    return {
        "minute": _aware(r.minute).isoformat(), "model_sha256": r.model_sha256 or None, "model_version": r.model_version,
        "provider": r.provider, "messages": r.messages, "requests": r.requests, "errors": r.errors,
        "error_rate": (r.errors / r.requests) if r.requests else 0.0,
        "latency_ms_p50": r.latency_ms_p50_sum / n if n else None,
        "latency_ms_p95": r.latency_ms_p95_sum / n if n else None,
        "latency_ms_p99": r.latency_ms_p99_sum / n if n else None,
        "latency_ms_p95_max": r.latency_ms_p95_max,
        "cpu_percent": r.cpu_percent_sum / r.messages if r.messages else None, "memory_mb_max": r.memory_mb_max,
    }


def query(db: Session, device_id: str, since: dt.datetime | None, until: dt.datetime | None, limit: int) -> list[dict[str, Any]]:
    q = select(TelemetryMinute).where(TelemetryMinute.device_id == device_id)
    if since:
        q = q.where(TelemetryMinute.minute >= since)
    if until:
        q = q.where(TelemetryMinute.minute <= until)
    rows = db.scalars(q.order_by(TelemetryMinute.minute.desc(), TelemetryMinute.id).limit(max(1, min(limit, 10_000))))
    return [row_view(r) for r in rows]


@dataclass
class Health:
    messages: int = 0
    requests: int = 0
    errors: int = 0
    p95_ms: float | None = None  # mean of the per-message p95s

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def health(db: Session, device_ids: Iterable[str], shas: Iterable[str], since: dt.datetime) -> Health:
    """Aggregate telemetry of these devices while serving these bundles, from the minute of `since` on."""
    device_ids, shas = list(device_ids), [s for s in shas if s]
    if not device_ids or not shas:
        return Health()
    start = since.replace(second=0, microsecond=0)
    rows = db.scalars(
        select(TelemetryMinute).where(
            TelemetryMinute.device_id.in_(device_ids), TelemetryMinute.model_sha256.in_(shas), TelemetryMinute.minute >= start
        )
    ).all()
    h = Health()
    lat_n, lat_sum = 0, 0.0
    for r in rows:
        h.messages += r.messages
        h.requests += r.requests
        h.errors += r.errors
        lat_n += r.latency_messages
        lat_sum += r.latency_ms_p95_sum
    h.p95_ms = lat_sum / lat_n if lat_n else None
    return h

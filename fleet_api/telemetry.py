"""Telemetry: rolled up in memory per device, minute, model and version, written to the database once a tick.

A fleet of thousands sends a message per device every few seconds; one transaction per message would make the
database the bottleneck. What a crash loses is at most one tick of a QoS-0 stream that is lossy anyway. A
rollup the database refuses (a value out of its range, say) is counted and dropped on its own: the other
devices' minutes of that flush are stored.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import Counter
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from fleet_protocol.messages import ModelTelemetry, Telemetry

from .db.tables import Device, TelemetryMinute, aware, utcnow

log = logging.getLogger(__name__)

ROWS_PRUNED = Counter("edgefleet_api_telemetry_rows_pruned_total",
                      "Telemetry minute rows deleted for being older than the retention")
ROLLUPS_REFUSED = Counter("edgefleet_api_telemetry_rollups_refused_total",
                          "Telemetry minute rollups the database refused (dropped; the rest of the flush is stored)")

Key = tuple[str, dt.datetime, str, str]  # device id, minute, model name ("": the device itself), version
DEVICE = ""


def minute_of(ts: float) -> dt.datetime:
    t = dt.datetime.fromtimestamp(ts, dt.UTC)
    return t.replace(second=0, microsecond=0)


@dataclass(slots=True)
class Rollup:
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

    def add_model(self, t: ModelTelemetry) -> None:
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

    def add_device(self, t: Telemetry) -> None:
        self.messages += 1
        if t.health is not None:
            self.cpu += t.health.cpu_percent or 0.0
            memory = t.health.agent_rss_mb if t.health.agent_rss_mb is not None else t.health.memory_used_mb
            if memory is not None:
                self.memory_max = max(self.memory_max or 0.0, memory)

    def fold(self, other: Rollup) -> None:
        self.provider = other.provider or self.provider
        self.messages += other.messages
        self.requests += other.requests
        self.errors += other.errors
        self.latency_messages += other.latency_messages
        self.p50 += other.p50
        self.p95 += other.p95
        self.p99 += other.p99
        if other.p95_max is not None:
            self.p95_max = max(self.p95_max or 0.0, other.p95_max)
        self.cpu += other.cpu
        if other.memory_max is not None:
            self.memory_max = max(self.memory_max or 0.0, other.memory_max)

    def merge_into(self, row: TelemetryMinute) -> None:
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
    # the minute of the last message: made once a minute, not per message (datetime is most of add's cost)
    _minute: tuple[float, dt.datetime] = (0.0, dt.datetime.fromtimestamp(0, dt.UTC))

    def _minute_of(self, ts: float) -> dt.datetime:
        start = ts - ts % 60
        cached = self._minute
        if cached[0] == start:
            return cached[1]
        minute = minute_of(ts)
        self._minute = (start, minute)
        return minute

    def add(self, device_id: str, t: Telemetry, received: float | None = None) -> None:
        self.add_many(((device_id, t),), received)

    def add_many(self, messages: Iterable[tuple[str, Telemetry]], received: float | None = None) -> None:
        # Filed by when we received it, not by the device's clock: a camera without RTC or NTP may live in 1970,
        # and the health gates compare minutes with the server's own time.
        minute = self._minute_of(time.time() if received is None else received)
        with self._lock:
            rollups = self._rollups  # under the lock: take() swaps it
            for device_id, t in messages:
                key = (device_id, minute, DEVICE, "")
                r = rollups.get(key)
                if r is None:
                    r = rollups[key] = Rollup()
                r.add_device(t)
                for name, mt in t.models.items():
                    key = (device_id, minute, name, mt.version)
                    r = rollups.get(key)
                    if r is None:
                        r = rollups[key] = Rollup()
                    r.add_model(mt)

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
                    mine.fold(rollup)


def write(db: Session, rollups: dict[Key, Rollup]) -> None:
    """Merge rollups into their minute rows (insert or add). Caller commits. PostgreSQL and SQLite: one
    INSERT ... ON CONFLICT DO UPDATE that adds in the database (no read first, no ORM objects; on PostgreSQL
    one statement over arrays), rows in key order so replicas flushing the same minutes take their row locks in
    one order."""
    if not rollups:
        return
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        return _write_postgresql(db, rollups)
    if dialect != "sqlite":
        return _write_orm(db, rollups)
    from sqlalchemy.dialects import postgresql, sqlite

    # the two dialects' INSERT … ON CONFLICT are the same construct with the same methods
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    greatest = func.greatest if dialect == "postgresql" else func.max  # SQLite's two-argument max() is scalar
    rows = [{
        "device_id": k[0], "minute": k[1], "model": k[2], "model_version": k[3], "provider": r.provider,
        "messages": r.messages, "requests": r.requests, "errors": r.errors, "latency_messages": r.latency_messages,
        "latency_ms_p50_sum": r.p50, "latency_ms_p95_sum": r.p95, "latency_ms_p99_sum": r.p99,
        "latency_ms_p95_max": r.p95_max, "cpu_percent_sum": r.cpu, "memory_mb_max": r.memory_max,
    } for k, r in sorted(rollups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3]))]
    t = TelemetryMinute.__table__
    stmt = insert(TelemetryMinute)
    new = stmt.excluded

    def both_max(col: str):  # NULL-safe on both databases: NULL only when both are
        return greatest(func.coalesce(t.c[col], new[col]), func.coalesce(new[col], t.c[col]))

    stmt = stmt.on_conflict_do_update(
        index_elements=["device_id", "minute", "model", "model_version"],
        set_={
            "provider": func.coalesce(new.provider, t.c.provider),
            **{c: t.c[c] + new[c] for c in ("messages", "requests", "errors", "latency_messages", "latency_ms_p50_sum",
                                            "latency_ms_p95_sum", "latency_ms_p99_sum", "cpu_percent_sum")},
            "latency_ms_p95_max": both_max("latency_ms_p95_max"),
            "memory_mb_max": both_max("memory_mb_max"),
        },
    )
    db.execute(stmt, rows)
    # telemetry is the liveness signal of devices that say nothing else
    db.execute(update(Device).where(Device.id.in_(sorted({k[0] for k in rollups}))).values(last_seen=utcnow()))


# PostgreSQL: one statement whatever the number of rollups, its columns as arrays (unnest): SQLAlchemy's
# executemany of the INSERT ... ON CONFLICT below costs ~0.6 ms of API CPU per row, and a tick writes a row per
# device and model that sent anything (20,000 msg/s at one message per device every 10 s: ~40,000 rows a second).
_COLUMNS = ("device_id", "minute", "model", "model_version", "provider", "messages", "requests", "errors",
            "latency_messages", "latency_ms_p50_sum", "latency_ms_p95_sum", "latency_ms_p99_sum", "latency_ms_p95_max",
            "cpu_percent_sum", "memory_mb_max")
_TYPES = ("varchar", "timestamptz", "varchar", "varchar", "varchar", "integer", "bigint", "bigint", "integer",
          "float8", "float8", "float8", "float8", "float8", "float8")
_SUMS = ("messages", "requests", "errors", "latency_messages", "latency_ms_p50_sum", "latency_ms_p95_sum",
         "latency_ms_p99_sum", "cpu_percent_sum")
_PG_UPSERT = text(
    f"INSERT INTO telemetry_minutes ({', '.join(_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"CAST(:{c} AS {t}[])" for c, t in zip(_COLUMNS, _TYPES, strict=True))
    + ") ON CONFLICT (device_id, minute, model, model_version) DO UPDATE SET "
    "provider = COALESCE(EXCLUDED.provider, telemetry_minutes.provider), "
    + ", ".join(f"{c} = telemetry_minutes.{c} + EXCLUDED.{c}" for c in _SUMS)
    # GREATEST skips NULLs: NULL only when both are
    + ", latency_ms_p95_max = GREATEST(telemetry_minutes.latency_ms_p95_max, EXCLUDED.latency_ms_p95_max)"
    ", memory_mb_max = GREATEST(telemetry_minutes.memory_mb_max, EXCLUDED.memory_mb_max)"
)


def _text_array(values: Iterable[str | None]) -> str:
    return "{" + ",".join("NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for v in values) + "}"


def _number_array(values: Iterable[float | int | None]) -> str:
    return "{" + ",".join("NULL" if v is None else repr(v) for v in values) + "}"


def _write_postgresql(db: Session, rollups: dict[Key, Rollup]) -> None:
    """The arrays go as PostgreSQL array literals made here with str.join: psycopg's own list adaptation runs
    a regular expression per element in Python (~40 µs of CPU per row)."""
    keys = sorted(rollups)  # key order: replicas flushing the same minutes take their row locks in one order
    rs = [rollups[k] for k in keys]
    minutes = {m: m.isoformat() for m in {k[1] for k in keys}}
    db.execute(_PG_UPSERT, {
        "device_id": _text_array(k[0] for k in keys), "minute": _text_array(minutes[k[1]] for k in keys),
        "model": _text_array(k[2] for k in keys), "model_version": _text_array(k[3] for k in keys),
        "provider": _text_array(r.provider for r in rs),
        "messages": _number_array(r.messages for r in rs), "requests": _number_array(r.requests for r in rs),
        "errors": _number_array(r.errors for r in rs), "latency_messages": _number_array(r.latency_messages for r in rs),
        "latency_ms_p50_sum": _number_array(r.p50 for r in rs), "latency_ms_p95_sum": _number_array(r.p95 for r in rs),
        "latency_ms_p99_sum": _number_array(r.p99 for r in rs), "latency_ms_p95_max": _number_array(r.p95_max for r in rs),
        "cpu_percent_sum": _number_array(r.cpu for r in rs), "memory_mb_max": _number_array(r.memory_max for r in rs),
    })
    # telemetry is the liveness signal of devices that say nothing else (an array, not an IN list of N parameters)
    db.execute(text("UPDATE devices SET last_seen = :now WHERE id = ANY(CAST(:ids AS varchar[]))"),
               {"now": utcnow(), "ids": _text_array(sorted({k[0] for k in keys}))})


def _write_orm(db: Session, rollups: dict[Key, Rollup]) -> None:
    """Other databases: read the rows, add in Python. IntegrityError means another replica inserted the same
    row meanwhile: the caller retries, and the row is then found."""
    devices = sorted({k[0] for k in rollups})
    minutes = sorted({k[1] for k in rollups})
    existing: dict[Key, TelemetryMinute] = {}
    if rollups:
        rows = db.scalars(
            select(TelemetryMinute).where(TelemetryMinute.device_id.in_(devices), TelemetryMinute.minute.in_(minutes))
            .with_for_update().execution_options(populate_existing=True)
        )
        for row in rows:
            existing[(row.device_id, aware(row.minute), row.model, row.model_version)] = row
    for key, rollup in rollups.items():
        found = existing.get(key)
        if found is None:
            found = TelemetryMinute(device_id=key[0], minute=key[1], model=key[2], model_version=key[3])
            db.add(found)
        rollup.merge_into(found)
    db.flush()
    # telemetry is the liveness signal of devices that say nothing else
    db.execute(update(Device).where(Device.id.in_(devices)).values(last_seen=utcnow()))


def _write_all(sessions: Callable[[], Session], rollups: dict[Key, Rollup]) -> None:
    for attempt in range(3):
        try:
            with sessions() as db, db.begin():
                write(db, rollups)
            return
        except IntegrityError:  # another replica inserted the same minute first: merge again
            if attempt == 2:
                raise


def flush(sessions: Callable[[], Session], buffer: TelemetryBuffer) -> int:
    """Write what the buffer holds; → rollups stored. The database away: everything is kept for the next tick.
    A batch the database refuses is written rollup by rollup, and only the refused ones are dropped (counted)."""
    taken = buffer.take()
    if not taken:
        return 0
    try:
        _write_all(sessions, taken)
        return len(taken)
    except OperationalError:
        buffer.put_back(taken)
        raise
    except Exception as exc:
        log.warning("telemetry flush of %d rollups refused (%s); storing them one by one", len(taken),
                    str(exc).splitlines()[0][:200])
    stored = 0
    for key, rollup in taken.items():
        try:
            _write_all(sessions, {key: rollup})
            stored += 1
        except OperationalError:
            # the database went away mid-way: keep what is not stored yet
            keys = list(taken)
            buffer.put_back({k: taken[k] for k in keys[keys.index(key):]})
            raise
        except Exception as exc:
            ROLLUPS_REFUSED.inc()
            log.error("dropping the telemetry rollup of device %s, minute %s, model %r: %s", key[0],
                      key[1].isoformat(), key[2], str(exc).splitlines()[0][:200])
    return stored


PRUNE_BATCH = 10_000


def prune(sessions: Callable[[], Session], before: dt.datetime, batch: int = PRUNE_BATCH,
          max_batches: int | None = None) -> int:
    """Delete the minute rows older than `before`, `batch` rows per transaction (short locks beside the flusher's
    upserts, and an interrupted prune keeps what it deleted), at most `max_batches` of them; → rows deleted."""
    deleted = 0
    for _ in itertools.count() if max_batches is None else range(max_batches):
        with sessions() as db, db.begin():
            oldest = select(TelemetryMinute.id).where(TelemetryMinute.minute < before).limit(batch)
            result = db.execute(delete(TelemetryMinute).where(TelemetryMinute.id.in_(oldest)))
            n = cast(CursorResult, result).rowcount or 0  # a DELETE's result is a cursor's
        deleted += n
        ROWS_PRUNED.inc(n)
        if n < batch:
            break
    return deleted


def row_view(r: TelemetryMinute) -> dict[str, Any]:
    n = r.latency_messages or 0
    return {
        "minute": aware(r.minute).isoformat(), "model": r.model or None, "model_version": r.model_version or None,
        "provider": r.provider, "messages": r.messages, "requests": r.requests, "errors": r.errors,
        "error_rate": (r.errors / r.requests) if r.requests else 0.0,
        "latency_ms_p50": r.latency_ms_p50_sum / n if n else None,
        "latency_ms_p95": r.latency_ms_p95_sum / n if n else None,
        "latency_ms_p99": r.latency_ms_p99_sum / n if n else None,
        "latency_ms_p95_max": r.latency_ms_p95_max,
        "cpu_percent": r.cpu_percent_sum / r.messages if r.messages and not r.model else None,
        "memory_mb_max": r.memory_mb_max,
    }


def query(db: Session, device_id: str, since: dt.datetime | None, until: dt.datetime | None, limit: int,
          model: str | None = None) -> list[dict[str, Any]]:
    q = select(TelemetryMinute).where(TelemetryMinute.device_id == device_id)
    if model is not None:
        q = q.where(TelemetryMinute.model == model)
    if since:
        q = q.where(TelemetryMinute.minute >= since)
    if until:
        q = q.where(TelemetryMinute.minute <= until)
    rows = db.scalars(q.order_by(TelemetryMinute.minute.desc(), TelemetryMinute.model, TelemetryMinute.id)
                      .limit(max(1, min(limit, 10_000))))
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


def health(db: Session, device_ids: Iterable[str], model: str, versions: Iterable[str | None],
           since: dt.datetime) -> Health:
    """Aggregate telemetry of one model on these devices while at these versions, from the minute of `since` on."""
    device_ids, versions = list(device_ids), [v for v in versions if v]
    if not device_ids or not versions:
        return Health()
    start = since.replace(second=0, microsecond=0)
    rows = db.scalars(
        select(TelemetryMinute).where(
            TelemetryMinute.device_id.in_(device_ids), TelemetryMinute.model == model,
            TelemetryMinute.model_version.in_(versions), TelemetryMinute.minute >= start)
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

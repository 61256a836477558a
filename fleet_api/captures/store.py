"""Captured samples at rest: a row per sample in `captures`, its data a file under the capture folder.

A file is named by its row's identity — `{device}/{sample id}{.jpg|.npy}` — never shared between rows, so deleting
a sample removes exactly its file. Files are written to a temporary name and renamed into place, inside the
transaction that inserts the row: a crash leaves at worst a file without a row (never a row without its data).
Every store takes one lock (SQLite: the write lock of BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so the
quota check and the insert are one step across API replicas, and a sample sent twice is stored once.
"""

from __future__ import annotations

import ast
import datetime as dt
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Select, delete, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from fleet_protocol.capture import Refusal, Sample
from fleet_protocol.files import atomic_write

from ..db.tables import CaptureRow, aware, utcnow
from ..errors import NotFound

log = logging.getLogger(__name__)

QUOTA_LOCK_KEY = 0x6566636170  # PostgreSQL advisory lock: one store (quota check + insert) at a time, fleet-wide
# Called inside a delete's transaction with what it removes (its audit entry commits, or rolls back, with it).
Record = Callable[[Session, int], None]
SUFFIX = {"image/jpeg": ".jpg", "application/x-npy": ".npy"}


@dataclass(frozen=True)
class Stored:
    """The outcome of `CaptureStore.put`: stored (now or before), or refused and why."""

    stored: bool
    refused: Refusal | None = None
    repeat: bool = False  # the sample was stored before: its ack was lost, the device sent it again


@dataclass(frozen=True)
class Filters:
    """Which samples a list, a dataset or a bulk delete covers; None: any."""

    device: str | None = None
    model: str | None = None
    version: str | None = None
    reason: str | None = None
    since: dt.datetime | None = None  # taken at or after
    until: dt.datetime | None = None  # taken before

    def empty(self) -> bool:
        return all(v is None for v in vars(self).values())

    def apply(self, q: Select) -> Select:
        for column, value in ((CaptureRow.device_id, self.device), (CaptureRow.model, self.model),
                              (CaptureRow.version, self.version), (CaptureRow.reason, self.reason)):
            if value is not None:
                q = q.where(column == value)
        if self.since is not None:
            q = q.where(CaptureRow.taken_at >= self.since)
        if self.until is not None:
            q = q.where(CaptureRow.taken_at < self.until)
        return q


def view(r: CaptureRow) -> dict[str, Any]:
    return {"id": r.id, "device_id": r.device_id, "sample_id": r.sample_id, "model": r.model, "version": r.version,
            "camera": r.camera, "taken_at": aware(r.taken_at), "received_at": aware(r.received_at), "reason": r.reason,
            "confidence": r.confidence, "shadow_version": r.shadow_version, "outputs": r.outputs or {},
            "content_type": r.content_type, "width": r.width, "height": r.height, "faces_blurred": r.faces_blurred,
            "size": r.size, "sha256": r.sha256, "file": file_name(r)}


def file_name(r: Any) -> str:
    """The sample's path relative to the capture folder (`r`: a row, or a result row with its three columns);
    also its name inside a dataset ZIP (under data/)."""
    return f"{r.device_id}/{r.sample_id}{SUFFIX.get(r.content_type, '.bin')}"


class CaptureStore:
    def __init__(self, sessions: sessionmaker[Session], root: Path, quota_bytes: int) -> None:
        self.sessions = sessions
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.quota_bytes = quota_bytes
        self._postgres = sessions.kw["bind"].dialect.name == "postgresql"

    def path(self, row: CaptureRow) -> Path:
        return self.root / file_name(row)

    # --- storing ------------------------------------------------------------------------------------------
    def put(self, device_id: str, header: Sample, data: bytes, now: dt.datetime | None = None) -> Stored:
        """Store one sample (its header already checked against `data` by fleet_protocol.capture.unpack)."""
        with self.sessions() as db, db.begin():
            if self._postgres:
                db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": QUOTA_LOCK_KEY})
            known = db.scalar(select(CaptureRow.id).where(CaptureRow.device_id == device_id,
                                                          CaptureRow.sample_id == header.id))
            if known is not None:
                return Stored(stored=True, repeat=True)
            used = db.scalar(select(func.coalesce(func.sum(CaptureRow.size), 0))) or 0
            if used + header.size > self.quota_bytes:
                return Stored(stored=False, refused="quota")
            row = CaptureRow(
                device_id=device_id, sample_id=header.id, model=header.model, version=header.version,
                camera=header.camera, taken_at=dt.datetime.fromtimestamp(header.taken_at, dt.UTC),
                received_at=now or utcnow(), reason=header.reason, confidence=header.confidence,
                shadow_version=header.shadow_version, outputs=header.outputs, content_type=header.content_type,
                width=header.width, height=header.height, faces_blurred=header.faces_blurred, size=header.size,
                sha256=header.sha256)
            dest = self.path(row)
            atomic_write(dest, data)  # a reader never sees half a sample
            try:
                db.add(row)
                db.flush()
            except Exception:
                dest.unlink(missing_ok=True)
                raise
        return Stored(stored=True)

    # --- reading ------------------------------------------------------------------------------------------
    def list(self, filters: Filters, limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """→ (one page of samples, newest taken first; how many match in all)."""
        with self.sessions() as db:
            total = db.scalar(filters.apply(select(func.count()).select_from(CaptureRow))) or 0
            rows = db.scalars(filters.apply(select(CaptureRow)).order_by(CaptureRow.taken_at.desc(), CaptureRow.id.desc())
                              .limit(limit).offset(offset)).all()
            return [view(r) for r in rows], total

    def get(self, capture_id: int) -> dict[str, Any]:
        with self.sessions() as db:
            return view(self._row(db, capture_id))

    def data(self, capture_id: int) -> tuple[Path, str]:
        """→ (the sample's file, its content type)."""
        with self.sessions() as db:
            row = self._row(db, capture_id)
            path = self.path(row)
        if not path.is_file():
            raise NotFound(f"capture {capture_id}: its data file is missing")
        return path, row.content_type

    def iter_matching(self, filters: Filters, batch: int = 500) -> Iterator[tuple[dict[str, Any], Path]]:
        """Every matching sample, oldest first, with its file; read in batches so a large dataset is never one query
        result held in memory."""
        after = 0
        while True:
            with self.sessions() as db:
                rows = db.scalars(filters.apply(select(CaptureRow)).where(CaptureRow.id > after)
                                  .order_by(CaptureRow.id).limit(batch)).all()
            if not rows:
                return
            for r in rows:
                yield view(r), self.path(r)
            after = rows[-1].id

    def usage(self) -> dict[str, Any]:
        with self.sessions() as db:
            count, used = db.execute(select(func.count(), func.coalesce(func.sum(CaptureRow.size), 0))).one()
            per_device = db.execute(select(CaptureRow.device_id, func.count(), func.sum(CaptureRow.size))
                                    .group_by(CaptureRow.device_id).order_by(CaptureRow.device_id)).all()
            per_model = db.execute(select(CaptureRow.model, func.count(), func.sum(CaptureRow.size))
                                   .group_by(CaptureRow.model).order_by(CaptureRow.model)).all()
        return {"count": count, "bytes_used": int(used), "quota_bytes": self.quota_bytes,
                "devices": [{"device_id": d, "count": n, "bytes": int(b)} for d, n, b in per_device],
                "models": [{"model": m, "count": n, "bytes": int(b)} for m, n, b in per_model]}

    # --- deleting -----------------------------------------------------------------------------------------
    def delete(self, capture_id: int, record: Record | None = None) -> dict[str, Any]:
        with self.sessions() as db, db.begin():
            row = self._row(db, capture_id)
            out, path = view(row), self.path(row)
            db.delete(row)
            if record is not None:
                record(db, 1)
        path.unlink(missing_ok=True)  # after the commit: a failed delete keeps its data
        return out

    def delete_matching(self, filters: Filters, record: Record | None = None) -> int:
        """Delete every matching sample (the quota frees their bytes); → how many."""
        with self.sessions() as db, db.begin():
            rows = db.execute(filters.apply(select(CaptureRow.id, CaptureRow.device_id, CaptureRow.sample_id,
                                                   CaptureRow.content_type))).all()
            ids = [r.id for r in rows]
            for start in range(0, len(ids), 500):
                db.execute(delete(CaptureRow).where(CaptureRow.id.in_(ids[start:start + 500])))
            if record is not None:
                record(db, len(ids))
        for r in rows:
            (self.root / file_name(r)).unlink(missing_ok=True)
        return len(ids)

    @staticmethod
    def _row(db: Session, capture_id: int) -> CaptureRow:
        row = db.get(CaptureRow, capture_id)
        if row is None:
            raise NotFound(f"no capture {capture_id}")
        return row


def npy_header(path: Path) -> dict[str, Any] | None:
    """An .npy file's dtype and shape from its header (a Python literal, read without numpy and without
    evaluating anything); None when it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
        if head[:6] != b"\x93NUMPY":
            return None
        size = int.from_bytes(head[8:10], "little") if head[6] == 1 else int.from_bytes(head[8:12], "little")
        start = 10 if head[6] == 1 else 12
        meta = ast.literal_eval(head[start:start + size].decode("latin1").strip())
        return {"dtype": str(meta["descr"]), "shape": [int(n) for n in meta["shape"]]}
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, IndexError):
        return None

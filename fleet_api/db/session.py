"""Engine and sessions for SQLite (default) and PostgreSQL, from one URL; the schema comes from Alembic."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_INI = Path(__file__).with_name("alembic.ini")
# Any constant: API replicas starting together on one PostgreSQL take turns migrating.
MIGRATION_LOCK_KEY = 0x6564676566


def normalize_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record) -> None:  # WAL: readers never wait for the MQTT thread's writes
            # pysqlite's own implicit BEGIN is deferred; we issue BEGIN IMMEDIATE ourselves (see below).
            conn.isolation_level = None
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            # A deferred transaction that reads, then writes, fails with "database is locked" when another
            # process wrote meanwhile; IMMEDIATE takes the write lock up front, so two API processes on one
            # file queue up instead, and a rollout is never advanced from a stale read.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(MIGRATIONS_INI))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def make_sessions(engine: Engine, upgrade: bool = True) -> sessionmaker[Session]:
    if upgrade:
        migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)

"""Real databases with the real migrations for the insights tests: SQLite, and PostgreSQL where installed.

The fixtures live here (imported by the test modules) rather than in a conftest, so these tests need nothing of
FleetService; the PostgreSQL cluster is the session's `postgres` fixture when tests/conftest.py provides it."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import pytest

from fleet_api.db.session import make_engine, make_sessions

T0 = 1_800_000_000.0  # the simulated clock starts here (2027-01-15)
_n = itertools.count()


def sqlite_sessions(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    return engine, make_sessions(engine)


@pytest.fixture(scope="session")
def insights_pg(request):
    from demo.cluster import Postgres, find_postgres_bin

    try:
        yield request.getfixturevalue("postgres")
        return
    except pytest.FixtureLookupError:
        pass
    try:
        find_postgres_bin()
    except FileNotFoundError as exc:
        pytest.skip(f"PostgreSQL tests skipped: {exc}")
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_sessions(request, tmp_path):
    """(engine, sessions) on a fresh database of each kind."""
    if request.param == "sqlite":
        engine, sessions = sqlite_sessions(tmp_path)
    else:
        pg = request.getfixturevalue("insights_pg")
        engine = make_engine(pg.create_database(f"ins{next(_n)}_{uuid.uuid4().hex[:8]}"))
        sessions = make_sessions(engine)
    yield engine, sessions
    engine.dispose()

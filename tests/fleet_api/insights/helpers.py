"""A real SQLite database with the real migrations, for the insights tests (no FleetService needed)."""

from __future__ import annotations

from pathlib import Path

from fleet_api.db.session import make_engine, make_sessions

T0 = 1_800_000_000.0  # the simulated clock starts here (2027-01-15)


def sqlite_sessions(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    return engine, make_sessions(engine)

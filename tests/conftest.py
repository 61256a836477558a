"""Shared fixtures: real mosquitto on a free port, signing keys, real digits bundles."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.cluster import Broker
from tests.bundles import Keys, digits_bundle


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def bundles(keys, tmp_path_factory) -> dict[str, Path]:
    """digits 1.0.0 (1 epoch) and 2.0.0 (20 epochs): two real, different models."""
    out = tmp_path_factory.mktemp("bundles")
    return {"1.0.0": digits_bundle(keys, out, "1.0.0", epochs=1), "2.0.0": digits_bundle(keys, out, "2.0.0", epochs=20)}


@pytest.fixture
def broker(tmp_path) -> Broker:
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


# --- fleet_api fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL cluster per test session; each test makes its own database in it."""
    from demo.cluster import Postgres, find_postgres_bin

    try:
        find_postgres_bin()
    except FileNotFoundError as exc:
        pytest.skip(f"PostgreSQL tests skipped: {exc}")
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def dynsec_broker(tmp_path) -> Broker:
    """A mosquitto with the dynamic security plugin: no anonymous access, admin credentials on the object."""
    b = Broker(tmp_path / "dynsec-broker", dynsec=True).start()
    yield b
    b.stop()

"""Fleet API fixtures: the core service on a real SQLite file or a real PostgreSQL database."""

from __future__ import annotations

import itertools
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from demo.cluster import wait_for
from fleet_api.app import create_app
from fleet_api.db.session import make_engine, make_sessions
from fleet_api.service import FleetService
from fleet_api.settings import ApiSettings

_db_counter = itertools.count()
ADMIN = "eft_admin-token-for-tests"


class Acked:
    """A delivery the broker has already acknowledged."""

    def is_published(self) -> bool:
        return True


class RecordingPublisher:
    """Stands in for the broker in core tests: records what would be published; can be told to fail."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.fail = False
        self._lock = threading.Lock()

    def publish(self, topic, payload, qos=1, retain=False, wait=False) -> bool:
        if self.fail:
            return False
        with self._lock:
            self.messages.append((topic, payload, qos, retain))
        return True

    def publish_batch(self, messages, timeout=30.0):
        return [self.publish(t, p, q, r) for t, p, q, r in messages]

    def publish_tracked(self, topic, payload, qos=1, retain_s=0):
        return Acked() if self.publish(topic, payload, qos, retain=retain_s > 0) else None

    def desired(self) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p, _, _ in self.messages if t.endswith("/desired")]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    pg = request.getfixturevalue("postgres")
    return pg.create_database(f"t{next(_db_counter)}_{uuid.uuid4().hex[:8]}")


@pytest.fixture
def make_service(db_url, tmp_path, keys):
    made = []

    def make(publisher=None, **overrides) -> FleetService:
        settings = ApiSettings(database_url=db_url, artifact_dir=tmp_path / "artifacts", trusted_keys=str(keys.public_path),
                               **overrides)
        engine = make_engine(settings.database_url)
        service = FleetService(settings, make_sessions(engine), publisher or RecordingPublisher())
        made.append((service, engine))
        return service

    yield make
    for service, engine in made:
        service.close()
        engine.dispose()


@pytest.fixture
def api(broker, tmp_path, keys):
    """The whole app (HTTP, MQTT shell, core) on a real broker and SQLite, with an admin token on every request."""
    settings = ApiSettings(database_url=f"sqlite:///{tmp_path / 'api.db'}", broker_url=broker.url,
                           artifact_dir=tmp_path / "artifacts", trusted_keys=str(keys.public_path), admin_token=ADMIN,
                           tick_interval_s=0.2)
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        wait_for(lambda: client.get("/readyz").status_code == 200, 10, "the API to connect")
        yield client


@pytest.fixture
def device_client(broker):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-device", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    yield c
    c.disconnect()
    c.loop_stop()

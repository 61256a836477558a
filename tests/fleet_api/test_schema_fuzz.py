"""schemathesis against the fleet API's own OpenAPI schema, on a real API process: no input gives a 500.

Generated requests carry an admin token, so they reach the handlers rather than stopping at 401. The API
runs with a real broker and SQLite, seeded with a device and a model so paths with ids hit real rows too.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from demo.cluster import Broker, FleetApi
from demo.fleet import upload


@pytest.fixture(scope="module")
def live_api(tmp_path_factory, keys, bundles):
    root = tmp_path_factory.mktemp("fuzz")
    broker = Broker(root / "broker").start()
    api = FleetApi(root / "api", broker.url, keys.public_path)
    try:
        api.start()
        with api.client() as client:
            client.post("/v1/devices", json={"id": "cam-1", "labels": {"site": "a"}}).raise_for_status()
            upload(client, bundles["1.0.0"])
        yield api
    finally:
        api.stop()
        broker.stop()


def test_no_input_makes_the_api_fail_with_a_server_error(live_api):
    # schemathesis' pytest plug-in does not run under pytest 9 yet; its schema and Hypothesis strategies do.
    schema = schemathesis.openapi.from_url(f"{live_api.url}/openapi.json")
    headers = {"Authorization": f"Bearer {live_api.admin_token}"}
    failures: list[str] = []
    calls: list[int] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # the whole API, not an empty schema

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def exercise(case) -> None:
            response = case.call(headers=headers, timeout=10)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} → {response.status_code}: {response.text[:200]}")

        exercise()
    assert failures == []
    assert len(calls) >= 10 * len(operations)  # it really sent requests

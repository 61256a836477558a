"""A publish the broker refuses is not taken for delivered: the outbox must retry it, not mark it sent."""

from __future__ import annotations

import os

from demo.cluster import Broker as Mosquitto
from fleet_api.mqtt.broker import Broker


def test_publishes_the_broker_refuses_are_not_counted_as_delivered(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite allowed/#\n")  # anonymous clients may use allowed/# and nothing else
    # as root, mosquitto would drop to its own user, which cannot read a test's private folder
    run_as = "user root\n" if os.geteuid() == 0 else ""
    mosquitto = Mosquitto(tmp_path / "broker", extra_config=f"acl_file {acl}\n{run_as}").start()
    client = Broker(mosquitto.url)
    try:
        client.start()
        assert client.wait_connected(10)
        assert client.publish("allowed/a", b"x", qos=1, wait=True) is True
        assert client.publish("denied/a", b"x", qos=1, wait=True) is False
        assert client.publish_batch([("allowed/b", b"1", 1, True), ("denied/b", b"2", 1, True), ("allowed/c", b"3", 1, False)],
                                    timeout=10) == [True, False, True]
        refused = client.publish_tracked("denied/c", b"x")
        accepted = client.publish_tracked("allowed/d", b"x")
        assert refused is not None and accepted is not None
        assert refused.wait(10) is False and accepted.wait(10) is True
        # ids are reused: a refused id does not taint the next message that gets it
        assert all(client.publish(f"allowed/e{i}", b"x", qos=1, wait=True) for i in range(5))
    finally:
        client.stop()
        mosquitto.stop()

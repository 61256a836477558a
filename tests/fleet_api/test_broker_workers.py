"""Several workers: a device's messages are handled in order, one after the other, while another device's
messages go on beside them (a handler waiting for the database must not hold up the whole fleet)."""

from __future__ import annotations

import threading
from collections import defaultdict

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet_api.mqtt.broker import Broker
from fleet_protocol.topics import Topics

TOPICS = Topics()


def _devices_on_other_workers(api: Broker, first: str, n: int) -> list[str]:
    """Device ids whose worker is not `first`'s (which worker a device gets depends on the process's str hash)."""
    own = api._inbox_of(TOPICS.reported(first))
    return [d for d in (f"dev-{k}" for k in range(200)) if api._inbox_of(TOPICS.reported(d)) is not own][:n]


def test_a_blocked_device_holds_up_only_its_own_messages(broker):
    seen: dict[str, list[bytes]] = defaultdict(list)
    release, blocked, others_done, slow_done = (threading.Event() for _ in range(4))
    api = Broker(broker.url, subscriptions=[(f"{TOPICS.prefix}/devices/+/reported", 1)], workers=4)
    others: list[str] = []

    def on_message(topic: str, payload: bytes) -> None:
        device = TOPICS.parse_device(topic)[0]
        if device == "slow" and payload == b"0":
            blocked.set()
            assert release.wait(30), "never released"
        seen[device].append(payload)
        if len(seen["slow"]) == 20:
            slow_done.set()
        if others and all(len(seen[d]) == 20 for d in others):
            others_done.set()

    api.on_message = on_message
    others = _devices_on_other_workers(api, "slow", 3)
    assert len(others) == 3
    device = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    device.connect("127.0.0.1", broker.port)
    device.loop_start()
    try:
        api.start()
        assert api.wait_connected(10)
        for k in range(20):
            device.publish(TOPICS.reported("slow"), str(k).encode(), qos=1)
        assert blocked.wait(10)
        for k in range(20):
            for d in others:
                device.publish(TOPICS.reported(d), str(k).encode(), qos=1)
        # the other devices' messages are all handled while the slow device's first one still waits
        assert others_done.wait(20)
        assert seen["slow"] == []
        release.set()
        assert slow_done.wait(20)
        assert seen["slow"] == [str(k).encode() for k in range(20)]  # in the order sent
        for d in others:
            assert seen[d] == [str(k).encode() for k in range(20)]
    finally:
        release.set()
        device.loop_stop()
        device.disconnect()
        api.stop()


def test_one_worker_keeps_everything_in_one_order(broker):
    api = Broker(broker.url, workers=1)
    assert {id(api._inbox_of(TOPICS.reported(f"d{k}"))) for k in range(50)} == {id(api._inboxes[0])}

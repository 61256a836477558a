"""What the core needs from a broker. The MQTT shell implements both; tests may record."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Delivery(Protocol):
    def is_published(self) -> bool:
        """True once the broker acknowledged the message."""
        ...


class Publisher(Protocol):
    def publish_tracked(self, topic: str, payload: bytes, qos: int = 1, retain_s: int = 0) -> Delivery | None:
        """Queue a publish without waiting; the handle tells when the broker has it. None when not connected.
        `retain_s` > 0: retained, and expired by the broker after that many seconds (MQTT 5)."""
        ...

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, wait: bool = False) -> bool:
        """Publish; with `wait`, block until the broker acknowledged (QoS ≥ 1). False when not delivered."""
        ...

    def publish_batch(self, messages: Sequence[tuple[str, bytes, int, bool]], timeout: float = 30.0) -> list[bool]:
        """Publish (topic, payload, qos, retain) messages and wait for all acknowledgements; one flag each."""
        ...


class BrokerAdmin(Protocol):
    """Per-device broker identities (mosquitto's dynamic security plugin in the MQTT shell)."""

    def create_device_client(self, device_id: str, username: str, password: str, client_id: str) -> None:
        """Create (or replace) the device's client with a role limited to its own topics; raises Unavailable."""
        ...

    def delete_device_client(self, device_id: str, username: str) -> None:
        """Remove the client and its role; the broker disconnects it. Raises Unavailable."""
        ...

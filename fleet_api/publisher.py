"""What the core needs from a broker: publish a payload. The MQTT shell implements it; tests may record."""

from __future__ import annotations

from typing import Protocol


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, wait: bool = False) -> bool:
        """Publish; with `wait`, block until the broker acknowledged (QoS ≥ 1). False when not delivered."""
        ...

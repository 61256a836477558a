"""MQTT topic names. One place builds and parses them, so a rename cannot drift between sides."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "edgefleet/v1"

# Per-device channels, in the order of the protocol table (DESIGN.md).
# `hello`: a device asks for its desired state on every connect; the API answers from its database.
# `capture` / `capture_ack`: captured samples up, their acknowledgements down (fleet_protocol/capture.py).
DEVICE_CHANNELS = ("desired", "reported", "hello", "fetch", "telemetry", "events", "status", "capture",
                   "capture_ack")


@dataclass(frozen=True)
class Topics:
    prefix: str = DEFAULT_PREFIX

    def device(self, device_id: str, channel: str) -> str:
        if channel not in DEVICE_CHANNELS:
            raise ValueError(f"unknown device channel {channel!r}")
        return f"{self.prefix}/devices/{device_id}/{channel}"

    def desired(self, device_id: str) -> str:
        return self.device(device_id, "desired")

    def reported(self, device_id: str) -> str:
        return self.device(device_id, "reported")

    def hello(self, device_id: str) -> str:
        return self.device(device_id, "hello")

    def fetch(self, device_id: str) -> str:
        return self.device(device_id, "fetch")

    def telemetry(self, device_id: str) -> str:
        return self.device(device_id, "telemetry")

    def events(self, device_id: str) -> str:
        return self.device(device_id, "events")

    def status(self, device_id: str) -> str:
        return self.device(device_id, "status")

    def capture(self, device_id: str) -> str:
        return self.device(device_id, "capture")

    def capture_ack(self, device_id: str) -> str:
        return self.device(device_id, "capture_ack")

    def all_devices(self, channel: str) -> str:
        """Wildcard subscription for one channel of every device."""
        if channel not in DEVICE_CHANNELS:
            raise ValueError(f"unknown device channel {channel!r}")
        return f"{self.prefix}/devices/+/{channel}"

    def artifact_chunk(self, sha256: str, index: int) -> str:
        return f"{self.prefix}/artifacts/{sha256}/{index}"

    def artifact_chunks(self, sha256: str) -> str:
        return f"{self.prefix}/artifacts/{sha256}/+"

    def parse_device(self, topic: str) -> tuple[str, str]:
        """`prefix/devices/{id}/{channel}` → (id, channel); ValueError for anything else."""
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            raise ValueError(f"not a device topic: {topic!r}")
        parts = topic[len(head):].split("/")
        if len(parts) != 2 or not parts[0] or parts[1] not in DEVICE_CHANNELS:
            raise ValueError(f"not a device topic: {topic!r}")
        return parts[0], parts[1]

    def parse_artifact_chunk(self, topic: str) -> tuple[str, int]:
        """`prefix/artifacts/{sha256}/{index}` → (sha256, index); ValueError for anything else."""
        head = f"{self.prefix}/artifacts/"
        if not topic.startswith(head):
            raise ValueError(f"not an artifact topic: {topic!r}")
        parts = topic[len(head):].split("/")
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"not an artifact topic: {topic!r}")
        return parts[0], int(parts[1])

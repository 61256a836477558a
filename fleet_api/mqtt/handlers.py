"""Device messages: parse and validate the topic and payload, then call the core. Bad input is counted and logged."""

from __future__ import annotations

import logging

from fleet_protocol.messages import Event, Fetch, ProtocolError, Reported, Status, Telemetry
from fleet_protocol.topics import Topics

from ..errors import FleetError
from ..service import REJECTED, FleetService

log = logging.getLogger(__name__)

# channel → (message schema, FleetService method)
ROUTES = {
    "reported": (Reported, "on_reported"),
    "status": (Status, "on_status"),
    "fetch": (Fetch, "on_fetch"),
    "telemetry": (Telemetry, "on_telemetry"),
    "events": (Event, "on_event"),
}
CHANNELS = tuple(ROUTES)


def subscriptions(topics: Topics, shared_group: str = "") -> list[tuple[str, int]]:
    subs = []
    for channel in CHANNELS:
        topic = topics.all_devices(channel)
        # Retained reported/status must reach every replica; the high-volume channels are shared among them.
        if shared_group and channel in ("fetch", "telemetry", "events"):
            topic = f"$share/{shared_group}/{topic}"
        subs.append((topic, 0 if channel == "telemetry" else 1))
    return subs


def handle(service: FleetService, topic: str, payload: bytes) -> None:
    try:
        device_id, channel = service.topics.parse_device(topic)
    except ValueError:
        REJECTED.labels("unknown", "topic").inc()
        log.warning("ignoring message on unexpected topic %r", topic)
        return
    if channel not in ROUTES:
        REJECTED.labels(channel, "direction").inc()
        log.warning("ignoring a device message on %r: that channel goes to devices, not from them", topic)
        return
    if channel in ("status", "reported") and not payload:
        return  # a cleared retained message
    message_type, method = ROUTES[channel]
    try:
        getattr(service, method)(device_id, message_type.parse(payload))
    except ProtocolError as exc:
        REJECTED.labels(channel, "malformed").inc()
        log.warning("device %s: %s", device_id, exc)
    except FleetError as exc:
        REJECTED.labels(channel, type(exc).__name__.lower()).inc()
        log.warning("device %s: %s message rejected: %s", device_id, channel, exc)

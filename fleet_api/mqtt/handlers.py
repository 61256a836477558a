"""Device messages: parse and validate the topic and payload, then call the core.

Bad input — not JSON, a field out of bounds, an unknown field, a schema this API does not know, a message
larger than the contract allows, an unknown or revoked device — is counted
(`edgefleet_api_messages_rejected_total{channel, reason}`) and logged in one line; the next message is handled
as usual. Nothing a device sends can stop the handler.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from fleet_protocol import capture
from fleet_protocol.messages import (
    MAX_MESSAGE_BYTES,
    Event,
    Fetch,
    Hello,
    Message,
    ProtocolError,
    Reported,
    Status,
    Telemetry,
    UnknownSchema,
)
from fleet_protocol.topics import Topics

from ..errors import FleetError
from ..service import REJECTED, FleetService

log = logging.getLogger(__name__)

# channel → (message schema, FleetService method)
ROUTES: dict[str, tuple[type[Message], str]] = {
    "reported": (Reported, "on_reported"),
    "status": (Status, "on_status"),
    "hello": (Hello, "on_hello"),
    "fetch": (Fetch, "on_fetch"),
    "telemetry": (Telemetry, "on_telemetry"),
    "events": (Event, "on_event"),
    "capture": (capture.Sample, "on_capture"),  # binary: header + data (PARSERS)
}
CHANNELS = tuple(ROUTES)
# Retained reported/status must reach every replica (brokers send no retained messages to shared subscriptions);
# the rest is split among them. Any replica answers a hello: it reads the database.
# A sample is stored once whichever replica takes it (the database keeps one per device and id).
SHARED = ("hello", "fetch", "telemetry", "events", "capture")


def subscriptions(topics: Topics, shared_group: str = "") -> list[tuple[str, int]]:
    subs = []
    for channel in CHANNELS:
        topic = topics.all_devices(channel)
        if shared_group and channel in SHARED:
            topic = f"$share/{shared_group}/{topic}"
        subs.append((topic, 0 if channel == "telemetry" else 1))
    return subs


def parse_telemetry(payload: bytes) -> Telemetry:
    """Telemetry is most of what a fleet sends: validate the bytes in one pass (pydantic-core's own JSON parser),
    and only when that fails parse again the slow way, to tell an unknown schema from a malformed message.
    The model's validator itself, as model_validate_json calls it: the same validation without its Python
    wrapper, on every message."""
    if len(payload) <= MAX_MESSAGE_BYTES:
        try:
            return Telemetry.__pydantic_validator__.validate_json(payload)
        except ValidationError:
            pass
    return Telemetry.parse(payload)


# Channels whose payload is not one JSON message of ROUTES' schema.
PARSERS: dict[str, Callable[[bytes], Any]] = {"telemetry": parse_telemetry, "capture": capture.unpack}
_SAMPLE_ID = re.compile(rb'"id"\s*:\s*"([0-9a-f]{32})"')


def sample_id_of(payload: bytes) -> str | None:
    """The id a refused sample envelope names in its header, if it names one: so the device can be told `invalid`
    instead of sending it again. Only the header's bytes are looked at, never the data."""
    if len(payload) < 8 or payload[:4] != capture.MAGIC:
        return None
    length = min(int.from_bytes(payload[4:8], "big"), capture.MAX_HEADER_BYTES)
    found = _SAMPLE_ID.search(payload[8:8 + length])
    return found.group(1).decode() if found else None


def telemetry_subscription(topics: Topics, shared_group: str = "") -> str:
    """What the telemetry receiver subscribes to: the telemetry channel, shared among replicas as in subscriptions()."""
    topic = topics.all_devices("telemetry")
    return f"$share/{shared_group}/{topic}" if shared_group else topic


def handle(service: FleetService, topic: str, payload: bytes) -> None:
    try:
        device_id, channel = service.topics.parse_device(topic)
    except ValueError:
        REJECTED.labels("unknown", "topic").inc()
        log.warning("ignoring message on unexpected topic %r", topic[:200])
        return
    if channel not in ROUTES:
        REJECTED.labels(channel, "direction").inc()
        log.warning("ignoring a device message on %r: that channel goes to devices, not from them", topic)
        return
    if channel in ("status", "reported") and not payload:
        return  # a cleared retained message
    message_type, method = ROUTES[channel]
    try:
        parse = PARSERS.get(channel, message_type.parse)
        getattr(service, method)(device_id, parse(payload))
    except UnknownSchema as exc:
        REJECTED.labels(channel, "schema").inc()
        log.warning("device %s: %s message refused: %s", device_id, channel, exc)
    except ProtocolError as exc:
        REJECTED.labels(channel, "malformed").inc()
        log.warning("device %s: %s", device_id, exc)
        if channel == "capture" and (sample_id := sample_id_of(payload)) is not None:
            _refuse_sample(service, device_id, sample_id)
    except FleetError as exc:
        REJECTED.labels(channel, type(exc).__name__.lower()).inc()
        log.warning("device %s: %s message rejected: %s", device_id, channel, exc)
    except Exception:  # a bug or the database away: counted, logged with its traceback, the next message goes on
        REJECTED.labels(channel, "error").inc()
        log.exception("device %s: handling a %s message failed", device_id, channel)


def _refuse_sample(service: FleetService, device_id: str, sample_id: str) -> None:
    try:
        service.refuse_capture(device_id, sample_id)
    except FleetError as exc:  # an unknown device: already counted as a malformed message, no answer
        log.warning("device %s: no answer to a refused sample: %s", device_id, exc)
    except Exception:
        log.exception("device %s: answering a refused sample failed", device_id)


def handle_fast(service: FleetService, topic: str, payload: bytes) -> bool:
    """Telemetry of a device seen recently, on the MQTT network thread: parse and roll up, nothing that waits
    (no database). → False for anything else, which then takes the usual path through the worker."""
    if not topic.endswith("/telemetry"):
        return False
    try:
        device_id, channel = service.topics.parse_device(topic)
    except ValueError:
        return False
    if channel != "telemetry" or not service.known_recently(device_id):
        return False
    try:
        service.on_telemetry(device_id, parse_telemetry(payload))
    except ProtocolError:
        return False  # the worker counts and logs it, as any bad message
    return True


def handle_telemetry_batch(service: FleetService, messages: Sequence[tuple[str, bytes]]) -> None:
    """A block of telemetry from the telemetry receiver: devices not seen lately are looked up in one query, the
    known ones' messages parsed and rolled up together. A bad message is counted and logged on its own, those of
    unknown or revoked devices counted together with one log line per block (reason `notfound`, as handle()
    counts them); an odd topic takes handle()'s usual way, which counts and logs it."""
    head = f"{service.topics.prefix}/devices/"
    cut, tail = len(head), -len("/telemetry")
    ids = [topic[cut:tail] if topic.startswith(head) and topic.endswith("/telemetry") else "" for topic, _ in messages]
    known = service.known_recently
    stale = {device_id for device_id in ids if device_id and not known(device_id)}
    unknown: set[str] = set()
    reason = "notfound"
    if stale:
        try:
            unknown = stale - service.known_among(stale)
        except Exception:  # the database away: their messages are counted as failed, the known ones go on
            log.exception("looking up %d devices for their telemetry failed", len(stale))
            unknown, reason = stale, "error"
    good, refused = [], 0
    for (topic, payload), device_id in zip(messages, ids, strict=True):
        if device_id in unknown:  # looked up just now: no query per message, however many a stranger sends
            refused += 1
            continue
        if not device_id or "/" in device_id:
            handle(service, topic, payload)
            continue
        try:
            good.append((device_id, parse_telemetry(payload)))
        except UnknownSchema as exc:
            REJECTED.labels("telemetry", "schema").inc()
            log.warning("device %s: telemetry message refused: %s", device_id, exc)
        except ProtocolError as exc:
            REJECTED.labels("telemetry", "malformed").inc()
            log.warning("device %s: %s", device_id, exc)
    if refused:
        REJECTED.labels("telemetry", reason).inc(refused)
        log.warning("refused %d telemetry messages of devices %s: %s", refused,
                    "not registered or revoked" if reason == "notfound" else "that could not be looked up",
                    ", ".join(sorted(unknown)[:10]) + (" …" if len(unknown) > 10 else ""))
    if not good:
        return
    try:
        service.on_telemetry_batch(good)
    except Exception:  # a bug or the database away (a shadow's numbers): counted, logged, the next block goes on
        REJECTED.labels("telemetry", "error").inc(len(good))
        log.exception("handling a block of %d telemetry messages failed", len(good))

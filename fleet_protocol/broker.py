"""Broker addresses as every deployable writes them: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS), and what a
device asks of its broker's session."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

# MQTT 5 Receive Maximum a device sends in CONNECT: at most this many QoS 1 messages in flight to it (mosquitto's
# default is 20). It lowers what a site broker holds for each downloading device, though it does not bound it:
# measured on mosquitto 2.0.11 with 500 slow readers of a 5.25 MB retained bundle, 1,120 MB at 20 and 804 MB
# at 4 (docs/scale.md, "Site broker memory"). 4 × 128 KiB still fills a 5 MB/s link at 100 ms round trips.
DEVICE_RECEIVE_MAXIMUM = 4


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
    tls = u.scheme in ("mqtts", "ssl")
    try:
        port = u.port
    except ValueError:
        raise ValueError(f"broker URL {url!r} has an invalid port") from None
    return BrokerAddress(u.hostname or "127.0.0.1", port or (8883 if tls else 1883), tls)

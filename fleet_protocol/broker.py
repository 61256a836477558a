"""Broker addresses as every deployable writes them: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse


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

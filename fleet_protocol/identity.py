"""Broker identities: every device logs in inside one namespace of its own.

A device's broker username and client id are both `device-{id}`. Service accounts (the fleet API's own login,
the dynamic-security admin, operators) never carry that prefix — the API refuses to start with such a login —
so no device id, whatever it is, can name, replace or delete a service account.
"""

from __future__ import annotations

DEVICE_LOGIN_PREFIX = "device-"


def device_login(device_id: str) -> str:
    """The broker username and client id of a device."""
    return DEVICE_LOGIN_PREFIX + device_id


def is_device_login(name: str) -> bool:
    return name.startswith(DEVICE_LOGIN_PREFIX)

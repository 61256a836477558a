"""Per-device broker identities through mosquitto's dynamic security plugin (`$CONTROL/dynamic-security/v1`).

Each device gets a client (username = device id, client id `device-{id}`) and a role of its own whose ACLs
name only its own topics: subscribe to its `desired` and to artifact chunks, publish on its reported, fetch,
telemetry, events and status. The broker's default denies everything else a client sends or subscribes to.
The API's own client gets a role that lets it publish desired states and chunks.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any

from fleet_protocol.topics import Topics

from ..errors import Unavailable
from .broker import Broker

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
API_ROLE = "edgefleet-api"
DEVICE_SEND = ("reported", "hello", "fetch", "telemetry", "events", "status")
TOLERATED = ("already exists", "not found", "already has", "internal error")  # idempotent re-runs


def device_role(device_id: str) -> str:
    return f"edgefleet-device-{device_id}"


def device_acls(topics: Topics, device_id: str) -> list[dict[str, Any]]:
    acls = [
        {"acltype": "subscribeLiteral", "topic": topics.desired(device_id), "priority": 10, "allow": True},
        {"acltype": "subscribePattern", "topic": f"{topics.prefix}/artifacts/#", "priority": 10, "allow": True},
    ]
    acls += [{"acltype": "publishClientSend", "topic": topics.device(device_id, ch), "priority": 10, "allow": True}
             for ch in DEVICE_SEND]
    return acls


def api_acls(topics: Topics) -> list[dict[str, Any]]:
    return [
        {"acltype": "publishClientSend", "topic": f"{topics.prefix}/devices/+/desired", "priority": 10, "allow": True},
        # clearing a revoked device's retained reported state and status
        {"acltype": "publishClientSend", "topic": f"{topics.prefix}/devices/+/reported", "priority": 10, "allow": True},
        {"acltype": "publishClientSend", "topic": f"{topics.prefix}/devices/+/status", "priority": 10, "allow": True},
        {"acltype": "publishClientSend", "topic": f"{topics.prefix}/artifacts/#", "priority": 10, "allow": True},
        {"acltype": "subscribePattern", "topic": f"{topics.prefix}/devices/#", "priority": 10, "allow": True},
        {"acltype": "publishClientReceive", "topic": f"{topics.prefix}/devices/#", "priority": 10, "allow": True},
    ]


class DynSec:
    """Implements the core's BrokerAdmin over the API's broker connection."""

    def __init__(self, broker: Broker, topics: Topics, api_username: str | None, timeout_s: float = 5.0) -> None:
        self.broker = broker
        self.topics = topics
        self.api_username = api_username
        self.timeout_s = timeout_s
        self._waiting: dict[str, tuple[threading.Event, list]] = {}
        self._lock = threading.Lock()
        broker.on_control = self._on_control
        broker.subscriptions.append((RESPONSE_TOPIC, 1))

    # --- BrokerAdmin ------------------------------------------------------------------------------------
    def create_device_client(self, device_id: str, username: str, password: str, client_id: str) -> None:
        role = device_role(device_id)
        # Replacing is simpler than diffing: an old client of this name (a re-registration) goes first.
        self.call([{"command": "deleteClient", "username": username},
                   {"command": "deleteRole", "rolename": role}], tolerate=True)
        self.call([
            {"command": "createRole", "rolename": role, "textname": f"edgefleet device {device_id}",
             "acls": device_acls(self.topics, device_id)},
            {"command": "createClient", "username": username, "password": password, "clientid": client_id,
             "textname": f"edgefleet device {device_id}", "roles": [{"rolename": role, "priority": 10}]},
        ])

    def delete_device_client(self, device_id: str, username: str) -> None:
        self.call([{"command": "deleteClient", "username": username},
                   {"command": "deleteRole", "rolename": device_role(device_id)}], tolerate=True)

    def ensure_api_role(self) -> None:
        """Give the API's own client the right to publish desired states and chunks (idempotent)."""
        commands: list[dict[str, Any]] = [{"command": "createRole", "rolename": API_ROLE, "textname": "edgefleet fleet API"}]
        commands += [{"command": "addRoleACL", "rolename": API_ROLE, **acl} for acl in api_acls(self.topics)]
        self.call(commands, tolerate=True)
        if not self.api_username:
            return
        client = self.call([{"command": "getClient", "username": self.api_username}])[0].get("data", {}).get("client", {})
        if API_ROLE not in {r.get("rolename") for r in client.get("roles", [])}:
            # The broker cuts our session to apply the new role; we reconnect and come through here again.
            # mosquitto 2.0 may answer "Internal error" here although the role was added (it kicked the asking
            # client); the check above, on the next connection, tells.
            log.info("adding role %s to the API's broker client %s", API_ROLE, self.api_username)
            self.call([{"command": "addClientRole", "username": self.api_username, "rolename": API_ROLE, "priority": 10}],
                      tolerate=True)

    # --- the request/response exchange ------------------------------------------------------------------
    def call(self, commands: list[dict[str, Any]], tolerate: bool = False) -> list[dict[str, Any]]:
        """Send commands, wait for the plugin's answers; raise Unavailable on an error or no answer."""
        if not self.broker.wait_connected(self.timeout_s):
            raise Unavailable("the broker is not reachable: cannot manage device credentials now")
        ids = []
        waiting: list[tuple[threading.Event, list]] = []
        with self._lock:
            for command in commands:
                cid = uuid.uuid4().hex
                command["correlationData"] = cid
                slot: tuple[threading.Event, list] = (threading.Event(), [])
                self._waiting[cid] = slot
                ids.append(cid)
                waiting.append(slot)
        try:
            if not self.broker.publish(CONTROL_TOPIC, json.dumps({"commands": commands}).encode(), qos=1, wait=True):
                raise Unavailable("the broker did not accept the dynamic-security command")
            responses = []
            for command, (event, box) in zip(commands, waiting, strict=True):
                if not event.wait(self.timeout_s):
                    raise Unavailable(f"no answer from the broker's dynamic security plugin to {command['command']}; "
                                      "is the plugin loaded and the API's MQTT user its admin?")
                responses.append(box[0])
        finally:
            with self._lock:
                for cid in ids:
                    self._waiting.pop(cid, None)
        for command, response in zip(commands, responses, strict=True):
            error = response.get("error")
            if error and not (tolerate and any(t in error.lower() for t in TOLERATED)):
                raise Unavailable(f"broker refused {command['command']}: {error}")
        return responses

    def _on_control(self, topic: str, payload: bytes) -> None:
        if topic != RESPONSE_TOPIC:
            return
        try:
            responses = json.loads(payload).get("responses", [])
        except (ValueError, AttributeError):
            log.warning("unreadable dynamic-security response: %r", payload[:200])
            return
        with self._lock:
            for response in responses:
                slot = self._waiting.get(str(response.get("correlationData")))
                if slot is not None:
                    slot[1].append(response)
                    slot[0].set()

"""Per-device broker identities through mosquitto's dynamic security plugin (`$CONTROL/dynamic-security/v1`).

Each device gets a client (username and client id `device-{id}`, fleet_protocol.identity) and a role of its own
whose ACLs name only its own topics: subscribe to its `desired`, publish on its reported, hello, fetch, telemetry,
events and status. The broker's default denies everything else a client sends or subscribes to.

Device logins live in their own namespace: this class creates, replaces and deletes only `device-…` clients, and
refuses to run with an API login in that namespace, so a device registered as `admin` cannot touch the admin.

Artifacts: a device may subscribe to, and receive, only the chunks of the bundles its current desired state names.
`ArtifactGrants` wraps the API's publisher: before a device's desired state goes to the broker, the device's role
is given exactly those artifacts (and loses the others). A receive-deny on `artifacts/#` under the grants cuts
off a subscription made while it was allowed: mosquitto keeps subscriptions when a role's ACLs change.
The API's own client gets a role that lets it publish desired states and chunks.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter

from fleet_protocol.identity import device_login, is_device_login
from fleet_protocol.topics import Topics

from ..errors import Unavailable
from ..publisher import Delivery, Publisher
from .broker import Broker

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
API_ROLE = "edgefleet-api"
DEVICE_SEND = ("reported", "hello", "fetch", "telemetry", "events", "status", "capture")
TOLERATED = ("already exists", "not found", "already has", "internal error")  # idempotent re-runs
GRANTS_PER_CALL = 100  # devices per control message: keeps it well under the broker's message size limit

ARTIFACT_GRANTS = Counter("edgefleet_api_artifact_grants_total", "Artifact ACL changes on device roles", ["change"])


def device_role(device_id: str) -> str:
    return f"edgefleet-device-{device_id}"


def artifact_topic(topics: Topics, sha256: str) -> str:
    return f"{topics.prefix}/artifacts/{sha256}/#"


def device_acls(topics: Topics, device_id: str) -> list[dict[str, Any]]:
    acls = [
        {"acltype": "subscribeLiteral", "topic": topics.desired(device_id), "priority": 10, "allow": True},
        {"acltype": "subscribeLiteral", "topic": topics.capture_ack(device_id), "priority": 10, "allow": True},
        # Below every grant: no artifact reaches the device unless its desired state names it.
        {"acltype": "publishClientReceive", "topic": f"{topics.prefix}/artifacts/#", "priority": 0, "allow": False},
    ]
    acls += [{"acltype": "publishClientSend", "topic": f"{topics.prefix}/devices/{device_id}/{ch}", "priority": 10,
              "allow": True} for ch in DEVICE_SEND]
    return acls


def artifact_acls(topics: Topics, sha256: str) -> list[dict[str, Any]]:
    topic = artifact_topic(topics, sha256)
    return [{"acltype": "subscribePattern", "topic": topic, "priority": 10, "allow": True},
            {"acltype": "publishClientReceive", "topic": topic, "priority": 10, "allow": True}]


def api_acls(topics: Topics) -> list[dict[str, Any]]:
    return [
        {"acltype": "publishClientSend", "topic": f"{topics.prefix}/devices/+/desired", "priority": 10, "allow": True},
        {"acltype": "publishClientSend", "topic": f"{topics.prefix}/devices/+/capture_ack", "priority": 10,
         "allow": True},
        # clearing a revoked device's retained reported state and status
        {"acltype": "publishClientSend", "topic": f"{topics.prefix}/devices/+/reported", "priority": 10, "allow": True},
        {"acltype": "publishClientSend", "topic": f"{topics.prefix}/devices/+/status", "priority": 10, "allow": True},
        {"acltype": "publishClientSend", "topic": f"{topics.prefix}/artifacts/#", "priority": 10, "allow": True},
        {"acltype": "subscribePattern", "topic": f"{topics.prefix}/devices/#", "priority": 10, "allow": True},
        {"acltype": "publishClientReceive", "topic": f"{topics.prefix}/devices/#", "priority": 10, "allow": True},
    ]


def desired_artifacts(payload: bytes) -> set[str]:
    """Every bundle digest a desired state names (any `sha256` in it: the model, and in v2 each model and shadow)."""
    if not payload:
        return set()  # a cleared desired state (revocation)
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "sha256" and isinstance(value, str) and len(value) == 64:
                    found.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(payload))
    return found


class DynSec:
    """Implements the core's BrokerAdmin over the API's broker connection."""

    def __init__(self, broker: Broker, topics: Topics, api_username: str | None, timeout_s: float = 5.0) -> None:
        if api_username and is_device_login(api_username):
            raise ValueError(f"the API's broker login {api_username!r} is in the devices' namespace "
                             f"({device_login('')}…): give the API a service account of another name")
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
        if username != device_login(device_id) or client_id != device_login(device_id):
            raise ValueError(f"device {device_id} must log in as {device_login(device_id)!r}, not {username!r}")
        role = device_role(device_id)
        # A re-registration or a credential rotation keeps the artifacts the device's desired state grants it.
        kept = [acl for acl in self._role_acls(role) if self._is_grant(acl)]
        # Replacing is simpler than diffing: an old client of this name goes first.
        self.call([{"command": "deleteClient", "username": username},
                   {"command": "deleteRole", "rolename": role}], tolerate=True)
        self.call([
            {"command": "createRole", "rolename": role, "textname": f"edgefleet device {device_id}",
             "acls": device_acls(self.topics, device_id) + kept},
            {"command": "createClient", "username": username, "password": password, "clientid": client_id,
             "textname": f"edgefleet device {device_id}", "roles": [{"rolename": role, "priority": 10}]},
        ])

    def delete_device_client(self, device_id: str, username: str) -> None:
        commands = [{"command": "deleteRole", "rolename": device_role(device_id)}]
        if username == device_login(device_id) or self._made_for(device_id, username):
            commands.insert(0, {"command": "deleteClient", "username": username})
        else:
            # Never delete a client we did not make for this device: it may be a service account.
            log.error("device %s: broker client %r is not this device's; left in place, only its role goes",
                      device_id, username)
        self.call(commands, tolerate=True)

    def _made_for(self, device_id: str, username: str) -> bool:
        """A client of a device registered before logins had their own namespace (username = device id): ours
        only if its one role is the device's."""
        response = self.call([{"command": "getClient", "username": username}], tolerate=True)[0]
        roles = {r.get("rolename") for r in response.get("data", {}).get("client", {}).get("roles", [])}
        return roles == {device_role(device_id)}

    def _role_acls(self, role: str) -> list[dict[str, Any]]:
        response = self.call([{"command": "getRole", "rolename": role}], tolerate=True)[0]
        return response.get("data", {}).get("role", {}).get("acls", [])

    def _is_grant(self, acl: dict[str, Any]) -> bool:
        """An artifact ACL this class manages (also the `artifacts/#` subscribe of roles made before grants)."""
        return acl.get("allow") is True and str(acl.get("topic", "")).startswith(f"{self.topics.prefix}/artifacts/")

    def set_artifacts(self, grants: dict[str, set[str]]) -> dict[str, bool]:
        """Let each device receive exactly the artifacts given (device id → sha256s). → device id → done.

        Devices without a role of ours (registered while dynamic security was off) count as done: there is
        nothing to grant. Raises Unavailable when the broker does not answer."""
        done: dict[str, bool] = {}
        items = list(grants.items())
        for start in range(0, len(items), GRANTS_PER_CALL):
            part = items[start:start + GRANTS_PER_CALL]
            roles = self._exchange([{"command": "getRole", "rolename": device_role(d)} for d, _ in part])
            commands: list[tuple[str, dict[str, Any]]] = []
            for (device_id, shas), response in zip(part, roles, strict=True):
                if response.get("error"):
                    done[device_id] = "not found" in response["error"].lower()
                    if not done[device_id]:
                        log.warning("device %s: cannot read its broker role: %s", device_id, response["error"])
                    continue
                done[device_id] = True
                role = device_role(device_id)
                have = response.get("data", {}).get("role", {}).get("acls", [])
                want = [acl for sha in sorted(shas) for acl in artifact_acls(self.topics, sha)]
                key = lambda a: (a.get("acltype"), a.get("topic"), a.get("allow"))  # noqa: E731
                have_keys = {key(a) for a in have}
                # Add first, then remove: the device never lacks a grant its new desired state needs.
                for acl in want:
                    if key(acl) not in have_keys:
                        commands.append((device_id, {"command": "addRoleACL", "rolename": role, **acl}))
                for base in device_acls(self.topics, device_id):  # roles made before the receive-deny existed
                    if base["allow"] is False and key(base) not in have_keys:
                        commands.append((device_id, {"command": "addRoleACL", "rolename": role, **base}))
                for acl in have:
                    if self._is_grant(acl) and key(acl) not in {key(w) for w in want}:
                        commands.append((device_id, {"command": "removeRoleACL", "rolename": role,
                                                     "acltype": acl["acltype"], "topic": acl["topic"]}))
            if not commands:
                continue
            responses = self._exchange([c for _, c in commands])
            for (device_id, command), response in zip(commands, responses, strict=True):
                error = response.get("error")
                if error and "already exists" not in error.lower() and "not found" not in error.lower():
                    log.warning("device %s: broker refused %s: %s", device_id, command["command"], error)
                    done[device_id] = False
                else:
                    ARTIFACT_GRANTS.labels("grant" if command["command"] == "addRoleACL" else "revoke").inc()
        return done

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

    def granting(self, publisher: Publisher) -> ArtifactGrants:
        """`publisher`, with each desired state's artifacts granted to its device before it goes out."""
        return ArtifactGrants(publisher, self)

    # --- the request/response exchange ------------------------------------------------------------------
    def call(self, commands: list[dict[str, Any]], tolerate: bool = False) -> list[dict[str, Any]]:
        """Send commands, wait for the plugin's answers; raise Unavailable on an error or no answer."""
        responses = self._exchange(commands)
        for command, response in zip(commands, responses, strict=True):
            error = response.get("error")
            if error and not (tolerate and any(t in error.lower() for t in TOLERATED)):
                raise Unavailable(f"broker refused {command['command']}: {error}")
        return responses

    def _exchange(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send commands, → the plugin's answer to each (errors included); Unavailable when it does not answer."""
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


class ArtifactGrants:
    """The API's publisher, with one step before a desired state goes out: its device's role is given exactly
    the artifacts it names (DynSec.set_artifacts). A desired state whose grant failed is not published and
    counts as not acknowledged, so the outbox sends it again later. Everything else passes through."""

    def __init__(self, inner: Publisher, dynsec: DynSec) -> None:
        self.inner = inner
        self.dynsec = dynsec

    def publish_tracked(self, topic: str, payload: bytes, qos: int = 1, retain_s: int = 0) -> Delivery | None:
        return self.inner.publish_tracked(topic, payload, qos, retain_s)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, wait: bool = False) -> bool:
        return self._grant([(topic, payload)])[0] and self.inner.publish(topic, payload, qos, retain, wait)

    def publish_batch(self, messages: Sequence[tuple[str, bytes, int, bool]], timeout: float = 30.0) -> list[bool]:
        granted = self._grant([(topic, payload) for topic, payload, _, _ in messages])
        sent = iter(self.inner.publish_batch([m for m, ok in zip(messages, granted, strict=True) if ok], timeout))
        return [next(sent) if ok else False for ok in granted]

    def _grant(self, messages: list[tuple[str, bytes]]) -> list[bool]:
        devices: list[str | None] = []
        grants: dict[str, set[str]] = {}
        for topic, payload in messages:
            try:
                device_id, channel = self.dynsec.topics.parse_device(topic)
            except ValueError:
                device_id, channel = None, ""
            if channel != "desired" or device_id is None:
                devices.append(None)
                continue
            devices.append(device_id)
            grants[device_id] = desired_artifacts(payload)  # the last one of a device in the batch wins
        if not grants:
            return [True] * len(messages)
        try:
            done = self.dynsec.set_artifacts(grants)
        except Unavailable as exc:
            log.warning("desired states held back: cannot grant their artifacts: %s", exc)
            done = {}
        return [True if d is None else done.get(d, False) for d in devices]

"""The agent's one MQTT connection (paho-mqtt 2, MQTT 5): desired state in, chunks in, reports out.

Reconnects by itself. On every (re)connect it publishes `hello` with the newest desired revision it holds, and
the fleet API answers with the desired state from its database: a broker restarted without persistence (no
retained messages) loses nothing; the retained desired state only spares that round trip.
A retained `status` with a last will tells the fleet when the device drops off.
Payloads are parsed and validated here; the reconciler only ever sees valid messages, and is told of refused
ones (Reported.error), which are also counted.
"""

from __future__ import annotations

import logging
import ssl
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import Counter

from fleet_protocol.broker import DEVICE_RECEIVE_MAXIMUM, parse_broker_url
from fleet_protocol.capture import SampleAck
from fleet_protocol.messages import (
    Desired,
    Event,
    Fetch,
    Hello,
    ProtocolError,
    Reported,
    Status,
    Telemetry,
    UnknownSchema,
)
from fleet_protocol.topics import Topics

from .. import __version__
from ..capture_upload import Uploader
from ..reconcile import Reconciler
from ..settings import AgentSettings

log = logging.getLogger(__name__)

REJECTED = Counter("edgefleet_agent_messages_rejected_total", "MQTT messages the agent refused", ["reason"])


class AgentLink:
    """Implements the reconciler's Transport over MQTT. Without a reconciler (the stand-alone camera command)
    it only keeps the device's status and sends telemetry and events."""

    def __init__(self, settings: AgentSettings, reconciler: Reconciler | None) -> None:
        self.settings = settings
        self.reconciler = reconciler
        self.topics = Topics(settings.topic_prefix)
        self.device_id = settings.device_id
        address = parse_broker_url(settings.broker_url)
        self.host, self.port = address.host, address.port
        self._watched: set[str] = set()
        self._connected = threading.Event()
        # Set once a desired state (any) arrived since the last connect: the fleet has answered our hello. Until
        # then the hello is repeated, with backoff: the API may reconnect to a restarted broker after we did,
        # and a hello sent while nobody listens is gone.
        self._answered = threading.Event()
        self._stopping = threading.Event()
        self._hello_thread = threading.Thread(target=self._hello_loop, name="hello", daemon=True)
        self.uploader: Uploader | None = None  # captured samples up, their acks down (set before `start`)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"device-{self.device_id}", protocol=mqtt.MQTTv5)
        if settings.mqtt_username:
            self.client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
        if address.tls or settings.mqtt_tls_ca:
            self.client.tls_set(ca_certs=str(settings.mqtt_tls_ca) if settings.mqtt_tls_ca else None, cert_reqs=ssl.CERT_REQUIRED)
        self.client.will_set(
            self.topics.status(self.device_id), Status(online=False, agent_version=__version__).to_bytes(), qos=1, retain=True
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        connect = Properties(PacketTypes.CONNECT)
        connect.ReceiveMaximum = DEVICE_RECEIVE_MAXIMUM  # less for our site broker to hold for us mid-download
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=True, properties=connect)
        self.client.loop_start()
        if self.reconciler is not None:
            self._hello_thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._connected.is_set():
            info = self.client.publish(
                self.topics.status(self.device_id), Status(online=False, agent_version=__version__).to_bytes(), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # --- Transport ------------------------------------------------------------------------------------
    def watch_artifact(self, sha256: str) -> None:
        # Always a SUBSCRIBE, even when already subscribed: it makes the broker send its retained chunks again
        # (retain handling 0), which is how a stalled download gets them without asking the fleet.
        self._watched.add(sha256)
        self.client.subscribe(self.topics.artifact_chunks(sha256), qos=1)

    def unwatch_artifact(self, sha256: str) -> None:
        self._watched.discard(sha256)
        self.client.unsubscribe(self.topics.artifact_chunks(sha256))

    def request_chunks(self, sha256: str, chunk_size: int, missing: list[int]) -> None:
        self.client.publish(self.topics.fetch(self.device_id), Fetch(sha256=sha256, chunk_size=chunk_size, missing=missing).to_bytes(), qos=1)

    def report(self, reported: Reported) -> None:
        self.client.publish(self.topics.reported(self.device_id), reported.to_bytes(), qos=1, retain=True)

    def hello(self) -> None:
        """Ask the fleet for the desired state (answered from its database)."""
        revision = self.reconciler.revision if self.reconciler is not None else 0
        self.client.publish(self.topics.hello(self.device_id), Hello(revision=revision, agent_version=__version__).to_bytes(), qos=1)

    def _hello_loop(self) -> None:
        delay = self.settings.hello_retry_s
        while not self._stopping.wait(delay):
            if self._answered.is_set() or not self._connected.is_set():
                delay = self.settings.hello_retry_s
                continue
            # Said once per connection: a device the fleet has set nothing for asks every minute, quietly.
            (log.info if delay == self.settings.hello_retry_s else log.debug)("no desired state since connecting; asking again")
            self.hello()
            delay = min(delay * 2, 60.0)

    def send_telemetry(self, telemetry: Telemetry) -> None:
        self.client.publish(self.topics.telemetry(self.device_id), telemetry.to_bytes(), qos=0)

    def send_event(self, event: Event) -> None:
        self.client.publish(self.topics.events(self.device_id), event.to_bytes(), qos=1)

    def send_sample(self, _sample_id: str, envelope: bytes) -> bool:
        """One captured sample (fleet_protocol/capture.py), QoS 1; False when it cannot go now (the uploader
        sends it again later)."""
        if not self._connected.is_set():
            return False
        return self.client.publish(self.topics.capture(self.device_id), envelope, qos=1).rc == mqtt.MQTT_ERR_SUCCESS

    # --- paho callbacks (network thread) ---------------------------------------------------------------
    def _on_connect(self, client, _userdata, _flags, reason_code, _props) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        log.info("connected to broker %s:%d as %s", self.host, self.port, self.device_id)
        client.publish(self.topics.status(self.device_id), Status(online=True, agent_version=__version__).to_bytes(), qos=1, retain=True)
        if self.reconciler is not None:
            client.subscribe(self.topics.desired(self.device_id), qos=1)
            for sha in self._watched:
                client.subscribe(self.topics.artifact_chunks(sha), qos=1)
            if (last := self.reconciler.last_reported) is not None:
                self.report(last)  # the fleet may have missed it while we were away
            else:  # first contact: say who we are (the public key, for pinning) before anything is asked of us
                self.reconciler.publish()
            self._answered.clear()
            self.hello()
        if self.uploader is not None:
            client.subscribe(self.topics.capture_ack(self.device_id), qos=1)
        self._connected.set()
        if self.uploader is not None:  # after the subscription, so the acks of what it resends are heard
            self.uploader.on_connect()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _props) -> None:
        self._connected.clear()
        if self.uploader is not None:
            self.uploader.on_disconnect()
        log.warning("disconnected from broker (%s); reconnecting", reason_code)

    def _on_message(self, _client, _userdata, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if topic == self.topics.capture_ack(self.device_id) and self.uploader is not None:
            try:
                ack = SampleAck.parse(bytes(msg.payload))
            except ProtocolError as exc:
                REJECTED.labels("malformed_capture_ack").inc()
                log.warning("ignoring capture acknowledgement: %s", exc)
                return
            self.uploader.on_ack(ack)
            return
        if self.reconciler is None:
            return
        if topic == self.topics.desired(self.device_id):
            self._answered.set()
            if not msg.payload:
                return  # retained desired cleared: nothing asked of us
            try:
                desired = Desired.parse(bytes(msg.payload))
            except UnknownSchema as exc:
                REJECTED.labels("unknown_schema").inc()
                log.error("refusing desired state%s: %s", f" revision {exc.revision}" if exc.revision is not None else "", exc)
                self.reconciler.refuse(f"desired state refused: {exc}; still running what was applied before")
                return
            except ProtocolError as exc:
                REJECTED.labels("malformed_desired").inc()
                log.error("refusing desired state: %s", exc)
                self.reconciler.refuse(f"desired state refused: {exc}")
                return
            self.reconciler.submit(desired)
            return
        try:
            sha, index = self.topics.parse_artifact_chunk(topic)
        except ValueError:
            REJECTED.labels("unexpected_topic").inc()
            log.warning("ignoring message on unexpected topic %r", topic)
            return
        if not self.reconciler.on_chunk(sha, index, bytes(msg.payload)):
            REJECTED.labels("unwanted_chunk").inc()  # no download of that artifact in progress (late, or not ours)

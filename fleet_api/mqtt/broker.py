"""The fleet API's one MQTT connection (paho-mqtt 2, MQTT 5): reconnects by itself, hands messages to workers.

Messages are handled on worker threads, never on paho's network thread, so a handler may publish and wait
for the broker's acknowledgement without deadlocking the loop that would deliver it. With several workers,
each device's messages go to one worker (chosen by the device's topic), so a device's messages are handled in
the order they came while other devices' are handled beside them: a handler spends most of its time waiting
for the database, and one worker left the API's CPU mostly idle during a rollout.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import Gauge

from fleet_protocol.broker import parse_broker_url

log = logging.getLogger(__name__)

# Messages received and not handled yet: the backlog the autoscaler may scale on (k3s/components/api-autoscaling-backlog).
INBOX = Gauge("edgefleet_api_mqtt_inbox_messages", "Device messages received from the broker and not handled yet")


class Delivery:
    """A publish the broker acknowledges. Accepted only when the acknowledgement carries a success code: a broker
    that refuses a message (an ACL, a quota) still sends PUBACK, with a failure reason, and paho counts that as
    published."""

    __slots__ = ("info", "_refused")

    def __init__(self, info: mqtt.MQTTMessageInfo, refused: set[int]) -> None:
        self.info, self._refused = info, refused

    def is_published(self) -> bool:
        return self.info.is_published() and self.info.mid not in self._refused

    def wait(self, timeout: float) -> bool:
        try:
            self.info.wait_for_publish(timeout=max(0.0, timeout))
        except (RuntimeError, ValueError):
            return False
        return self.is_published()


class Broker:
    def __init__(
        self,
        url: str,
        *,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Callable[[str, bytes], None] | None = None,
        on_connected: Callable[[], None] | None = None,
        workers: int = 1,
    ) -> None:
        address = parse_broker_url(url)
        self.host, self.port = address.host, address.port
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.on_connected = on_connected
        # `$CONTROL/...` replies (dynamic security) are handed over on the network thread, not queued behind
        # thousands of device messages: an HTTP request is waiting for them.
        self.on_control: Callable[[str, bytes], None] | None = None
        # Tried first, on the network thread: True when it handled the message (cheap, never waits: telemetry of
        # known devices), which saves the hop through the inbox and the worker thread for most of the traffic.
        self.on_fast: Callable[[str, bytes], bool] | None = None
        self._connected = threading.Event()
        # 100,000 messages in all, however many workers share them.
        self._inboxes: list[queue.Queue[tuple[str, bytes] | None]] = [
            queue.Queue(maxsize=max(1000, 100_000 // max(1, workers))) for _ in range(max(1, workers))]
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"fleet-api-{uuid.uuid4().hex[:12]}", protocol=mqtt.MQTTv5
        )
        if username:
            self.client.username_pw_set(username, password)
        if address.tls or tls_ca:
            self.client.tls_set(ca_certs=tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.max_inflight_messages_set(100)
        # Bounded: a flood of chunk requests must not grow the API's memory without limit; a publish that does
        # not fit is simply not sent, and the device asks again.
        self.client.max_queued_messages_set(4096)
        # Message ids the broker acknowledged with a failure reason. No lock: paho calls on_publish while it holds
        # its own message lock, which publish() needs too; set.add and set.discard are atomic.
        self._refused: set[int] = set()
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._subscribe_mid: int | None = None
        self._workers = [threading.Thread(target=self._work, args=(inbox,), name=f"mqtt-worker-{k}", daemon=True)
                         for k, inbox in enumerate(self._inboxes)]
        INBOX.set_function(lambda: sum(inbox.qsize() for inbox in self._inboxes))

    def start(self) -> None:
        for worker in self._workers:
            worker.start()
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=True)
        self.client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        for inbox in self._inboxes:
            inbox.put(None)
        for worker in self._workers:
            if worker.is_alive():
                worker.join(timeout=5)

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool, properties: Properties | None = None) -> Delivery | None:
        if not self._connected.is_set():
            return None
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        # Ids are reused: forget what an earlier message with this id got. (Its own acknowledgement needs a round
        # trip to the broker, far longer than the step from publish() to here.)
        self._refused.discard(info.mid)
        return Delivery(info, self._refused)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, wait: bool = False) -> bool:
        delivery = self._send(topic, payload, qos, retain)
        if delivery is None:
            return False
        return delivery.wait(10) if wait else True

    def publish_tracked(self, topic: str, payload: bytes, qos: int = 1, retain_s: int = 0) -> Delivery | None:
        if retain_s <= 0:
            return self._send(topic, payload, qos, False)
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = int(retain_s)
        return self._send(topic, payload, qos, True, props)

    def publish_batch(self, messages: Sequence[tuple[str, bytes, int, bool]], timeout: float = 30.0) -> list[bool]:
        deliveries = [self._send(topic, payload, qos, retain) for topic, payload, qos, retain in messages]
        deadline = time.monotonic() + timeout
        return [d is not None and d.wait(deadline - time.monotonic()) for d in deliveries]

    # paho callbacks (network thread) ------------------------------------------------------------------
    def _on_publish(self, _client, _userdata, mid, reason_code, _props) -> None:
        if reason_code.is_failure:
            self._refused.add(mid)
            log.error("the broker refused message %d: %s (check the API's broker role)", mid, reason_code)

    def _on_connect(self, client, _userdata, _flags, reason_code, _props) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        log.info("connected to broker %s:%d", self.host, self.port)
        # Connected means subscribed: an answer to a request sent before the broker acknowledged the subscription
        # (the dynamic security plugin's, say) would be lost. Without subscriptions there is nothing to wait for.
        if self.subscriptions:
            _, self._subscribe_mid = client.subscribe(list(self.subscriptions))
        else:
            self._connected.set()
        if self.on_connected:
            self._inboxes[0].put(("", b""))  # run on_connected on a worker, where it may wait for acks

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _props) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [f"{topic} ({code})" for (topic, _), code in zip(self.subscriptions, reason_codes, strict=False)
                   if code.is_failure]
        if refused:  # still serve what was granted; the rest is said once, loudly
            log.error("the broker refused subscriptions: %s (check the API's broker role)", ", ".join(refused))
        self._connected.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _props) -> None:
        self._connected.clear()
        log.warning("disconnected from broker (%s); reconnecting", reason_code)

    def _on_message(self, _client, _userdata, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith("$CONTROL/"):
            if self.on_control:
                self.on_control(msg.topic, bytes(msg.payload))
            return
        if self.on_fast is not None:
            try:
                if self.on_fast(msg.topic, bytes(msg.payload)):
                    return
            except Exception:  # a bug in the fast path: the worker handles the message the usual way
                log.exception("fast path failed on %r", msg.topic)
        try:
            self._inbox_of(msg.topic).put_nowait((msg.topic, bytes(msg.payload)))
        except queue.Full:
            log.error("inbox full: dropping a message on %s", msg.topic)

    def _inbox_of(self, topic: str) -> queue.Queue[tuple[str, bytes] | None]:
        """The worker of the topic's device: `.../devices/{id}/{channel}` without its channel (hash() of a str
        is stable within the process, which is all the order of one device's messages needs)."""
        if len(self._inboxes) == 1:
            return self._inboxes[0]
        return self._inboxes[hash(topic[:topic.rfind("/")]) % len(self._inboxes)]

    def _work(self, inbox: queue.Queue[tuple[str, bytes] | None]) -> None:
        while (item := inbox.get()) is not None:
            topic, payload = item
            try:
                if topic == "":
                    if self.on_connected:
                        self.on_connected()
                elif self.on_message:
                    self.on_message(topic, payload)
            except Exception:  # a handler bug must not kill the worker; it is logged with its traceback
                log.exception("handling a message on %r failed", topic)

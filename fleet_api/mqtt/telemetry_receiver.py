"""The API's telemetry receiver: a lean MQTT 5 subscriber of its own for the telemetry channel, and nothing else.

Telemetry is nearly all of a fleet's messages and the only QoS-0 stream, so it gets its own TCP connection
(login and TLS as the API's paho client), subscribed to `$share/<group>/<prefix>/devices/+/telemetry` so
replicas split it. It reads the socket in large blocks and splits them into PUBLISH packets in one tight loop
(paho spends ~26 µs of Python per message on its network thread; this spends ~1–2 µs), then hands each block's
(topic, payload) pairs to one callback. It sends only CONNECT, SUBSCRIBE, PINGREQ (and a PUBACK should a broker
ever send QoS 1). Everything else — commands, desired states, chunks, `$CONTROL` — stays on paho (broker.py).

A packet that breaks MQTT (a bad length, a topic that is not UTF-8, a type a server never sends) closes the
connection with a counted error and one log line; the receiver connects again with backoff. Nothing the broker
sends can raise out of the receiver's thread.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from fleet_protocol.broker import parse_broker_url
from fleet_protocol.messages import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

MESSAGES = Counter("edgefleet_api_telemetry_receiver_messages_total", "PUBLISH packets the telemetry receiver parsed")
BYTES = Counter("edgefleet_api_telemetry_receiver_bytes_total", "Bytes the telemetry receiver read from the broker")
ERRORS = Counter("edgefleet_api_telemetry_receiver_errors_total",
                 "Telemetry receiver connections ended by an error", ["reason"])

# The broker never sends us a packet larger than this (MQTT 5 Maximum Packet Size): a message over the contract's
# limit, with room for the topic and properties, still arrives — and is refused and counted by the handler.
MAX_PACKET = MAX_MESSAGE_BYTES + 16 * 1024
READ_SIZE = 256 * 1024

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14
# What a server may send a subscriber that publishes nothing (the rest breaks the protocol).
FROM_SERVER = {CONNACK, PUBLISH, SUBACK, PINGRESP, DISCONNECT, 15}  # 15: AUTH

REASONS = {  # MQTT 5 CONNACK / SUBACK / DISCONNECT reason codes worth a name in a log line
    0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error", 0x83: "implementation specific error",
    0x84: "unsupported protocol version", 0x85: "client identifier not valid", 0x86: "bad user name or password",
    0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned",
    0x8B: "server shutting down", 0x8C: "bad authentication method", 0x8D: "keep alive timeout",
    0x8E: "session taken over", 0x8F: "topic filter invalid", 0x90: "topic name invalid", 0x93: "receive maximum exceeded",
    0x95: "packet too large", 0x97: "quota exceeded", 0x9C: "use another server", 0x9D: "server moved",
    0x9E: "shared subscriptions not supported", 0x9F: "connection rate exceeded", 0xA2: "wildcard subscriptions not supported",
}


class MalformedPacket(ValueError):
    """Bytes from the broker that are not MQTT 5 a server may send us."""


class Refused(ConnectionError):
    """The broker refused the connection or the subscription (one clear log line, then retried with backoff)."""


def reason(code: int) -> str:
    return f"0x{code:02X} {REASONS.get(code, 'refused')}"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(data: bytes, j: int, end: int, what: str) -> tuple[int, int] | None:
    """MQTT's variable byte integer at data[j:end] (1–4 bytes, 7 bits each, least significant first) → (value,
    the index after it); None when it runs past `end`; MalformedPacket when it is longer than 4 bytes."""
    value, shift = 0, 0
    while j < end:
        b = data[j]
        j += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, j
        shift += 7
        if shift > 21:
            raise MalformedPacket(f"{what} longer than 4 bytes")
    return None


def _string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive: int,
                   max_packet: int = MAX_PACKET) -> bytes:
    flags = 0x02  # clean start: QoS 0 needs no session
    if username:
        flags |= 0x80
        if password is not None:
            flags |= 0x40
    props = b"\x27" + max_packet.to_bytes(4, "big")  # Maximum Packet Size
    body = _string("MQTT") + bytes([5, flags]) + keepalive.to_bytes(2, "big") + varint(len(props)) + props
    body += _string(client_id)
    if username:
        body += _string(username)
        if password is not None:
            body += _string(password)
    return _packet(CONNECT << 4, body)


def subscribe_packet(packet_id: int, topic_filter: str) -> bytes:
    # options 0: QoS 0 (nothing to acknowledge), retained messages as the broker's default (telemetry has none)
    return _packet(SUBSCRIBE << 4 | 0x02, packet_id.to_bytes(2, "big") + b"\x00" + _string(topic_filter) + b"\x00")


PINGREQ_PACKET = bytes([PINGREQ << 4, 0])


@dataclass(frozen=True)
class Control:
    """A packet that is not a PUBLISH: its type, the flags of its fixed header, its body."""

    type: int
    flags: int
    body: bytes


class PacketReader:
    """Splits the byte stream from the broker into packets, however the reads cut it.

    feed() returns the PUBLISH packets as (topic, payload), the packet ids of those with QoS 1 (to acknowledge)
    and the other packets as Control; bytes of a packet not complete yet are kept for the next feed. MalformedPacket for anything that
    breaks the protocol: the stream cannot be trusted after that, the caller closes the connection.
    """

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._rest = b""

    @property
    def pending(self) -> int:
        return len(self._rest)

    def feed(self, data: bytes) -> tuple[list[tuple[str, bytes]], list[int], list[Control]]:
        if self._rest:
            data = self._rest + data
        publishes: list[tuple[str, bytes]] = []
        acks: list[int] = []
        controls: list[Control] = []
        n, pos, max_packet = len(data), 0, self.max_packet
        while pos + 1 < n:
            first = data[pos]
            header = read_varint(data, pos + 1, n, "remaining length")
            if header is None:
                break  # the length itself is not complete yet
            length, i = header
            if length > max_packet:
                raise MalformedPacket(f"a packet of {length} bytes, more than the {max_packet} we allow")
            end = i + length
            if end > n:
                break
            kind = first >> 4
            if kind == PUBLISH:
                qos = (first >> 1) & 3
                if qos == 3:
                    raise MalformedPacket("PUBLISH with QoS 3")
                if length < 3:
                    raise MalformedPacket("PUBLISH too short for its topic")
                j = i + 2 + (data[i] << 8 | data[i + 1])
                if j > end:
                    raise MalformedPacket("PUBLISH topic longer than the packet")
                try:
                    topic = data[i + 2:j].decode()
                except UnicodeDecodeError:
                    raise MalformedPacket("PUBLISH topic is not UTF-8") from None
                if not topic:  # we allow no topic aliases (CONNECT sets no Topic Alias Maximum)
                    raise MalformedPacket("PUBLISH without a topic")
                if qos:
                    if qos == 2:  # we subscribe with QoS 0: a server must not send more than was granted
                        raise MalformedPacket("PUBLISH with QoS 2 on a QoS 0 subscription")
                    if j + 2 > end:
                        raise MalformedPacket("PUBLISH too short for its packet id")
                    acks.append(data[j] << 8 | data[j + 1])
                    j += 2
                # properties: a length (varint), then that many bytes; nothing in them matters to telemetry
                props = read_varint(data, j, end, "property length")
                if props is None:
                    raise MalformedPacket("PUBLISH properties cut short")
                plen, j = props
                j += plen
                if j > end:
                    raise MalformedPacket("PUBLISH properties longer than the packet")
                publishes.append((topic, data[j:end]))
            elif kind in FROM_SERVER:
                controls.append(Control(kind, first & 0x0F, data[i:end]))
            else:
                raise MalformedPacket(f"packet type {kind}, which a server does not send a subscriber")
            pos = end
        self._rest = data[pos:]
        return publishes, acks, controls


@dataclass
class ReceiverStats:
    messages: int = 0
    bytes: int = 0
    connects: int = 0
    malformed: int = 0
    refused: int = 0
    lost: int = 0


class TelemetryReceiver:
    """Connects, subscribes, reads; on_batch gets every block's (topic, payload) pairs, on the receiver's thread."""

    def __init__(self, url: str, topic_filter: str, on_batch: Callable[[list[tuple[str, bytes]]], None], *,
                 client_id: str = "", username: str | None = None, password: str | None = None,
                 tls_ca: str | None = None, keepalive: int = 30, max_packet: int = MAX_PACKET,
                 min_backoff_s: float = 1.0, max_backoff_s: float = 30.0) -> None:
        address = parse_broker_url(url)
        self.host, self.port = address.host, address.port
        self.tls = address.tls or bool(tls_ca)
        self.tls_ca = tls_ca
        self.topic_filter = topic_filter
        self.on_batch = on_batch
        self.client_id = client_id or f"fleet-api-telemetry-{uuid.uuid4().hex[:12]}"
        self.username, self.password = username, password
        self.keepalive, self.max_packet = keepalive, max_packet
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self.stats = ReceiverStats()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="telemetry-receiver", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked recv
            except OSError:
                pass
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # the connection ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.min_backoff_s
        while not self._stop.is_set():
            try:
                self._session()
                delay = self.min_backoff_s  # a session that ended after subscribing starts the backoff afresh
            except Refused as exc:
                self.stats.refused += 1
                ERRORS.labels("refused").inc()
                log.error("telemetry receiver: broker %s:%d refused %s (check the API's broker credentials and role)",
                          self.host, self.port, exc)
            except MalformedPacket as exc:
                self.stats.malformed += 1
                ERRORS.labels("malformed").inc()
                log.error("telemetry receiver: malformed packet from broker %s:%d (%s); reconnecting",
                          self.host, self.port, exc)
            except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
                if self._stop.is_set():
                    break
                self.stats.lost += 1
                ERRORS.labels("connection").inc()
                log.warning("telemetry receiver: connection to %s:%d lost (%s); reconnecting",
                            self.host, self.port, exc or type(exc).__name__)
            except Exception:  # a bug here must not end telemetry for good: logged, and the connection is redone
                self.stats.lost += 1
                ERRORS.labels("error").inc()
                log.exception("telemetry receiver failed; reconnecting")
            finally:
                self._connected.clear()
                self._close()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.max_backoff_s)

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _open(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:  # a deep kernel buffer absorbs a burst while a batch is being handled
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        except OSError:
            pass
        if self.tls:
            context = ssl.create_default_context(cafile=self.tls_ca)  # verifies the chain and the host name
            sock = context.wrap_socket(sock, server_hostname=self.host)
        return sock

    def _session(self) -> None:
        sock = self._sock = self._open()
        if self._stop.is_set():
            return
        reader, backlog = PacketReader(self.max_packet), list[Control]()
        sock.sendall(connect_packet(self.client_id, self.username, self.password, self.keepalive, self.max_packet))
        self._expect(sock, reader, backlog, CONNACK, "the connection")
        sock.sendall(subscribe_packet(1, self.topic_filter))
        self._expect(sock, reader, backlog, SUBACK, f"the subscription to {self.topic_filter}")
        self.stats.connects += 1
        self._connected.set()
        log.info("telemetry receiver: subscribed to %s on %s:%d", self.topic_filter, self.host, self.port)
        self._serve(sock, reader)

    def _expect(self, sock: socket.socket, reader: PacketReader, backlog: list[Control], kind: int, what: str) -> None:
        """Read until the acknowledgement of CONNECT or SUBSCRIBE; Refused with its reason when it refuses.
        Packets after it in the same read wait in the backlog for the next call."""
        deadline = time.monotonic() + 10
        while True:
            while backlog:
                c = backlog.pop(0)
                if c.type == DISCONNECT:
                    raise Refused(f"{what}: disconnected, {reason(c.body[0]) if c.body else 'no reason'}")
                if c.type != kind:
                    continue
                if kind == CONNACK:
                    if len(c.body) < 2:
                        raise MalformedPacket("CONNACK too short")
                    if c.body[1] >= 0x80:
                        raise Refused(f"{what}: {reason(c.body[1])}")
                else:  # SUBACK: packet id, properties, one reason code
                    codes = _suback_codes(c.body)
                    if not codes or codes[0] >= 0x80:
                        raise Refused(f"{what}: {reason(codes[0]) if codes else 'no reason code'}")
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {what} in 10 s")
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            data = sock.recv(READ_SIZE)
            if not data:
                raise EOFError("the broker closed the connection")
            publishes, acks, controls = reader.feed(data)
            self._deliver(sock, publishes, acks)
            backlog += controls

    def _serve(self, sock: socket.socket, reader: PacketReader) -> None:
        half = max(1.0, self.keepalive / 2)
        sock.settimeout(min(1.0, half))
        last_ping = last_heard = time.monotonic()
        stop, recv, stats = self._stop, sock.recv, self.stats
        while not stop.is_set():
            try:
                data = recv(READ_SIZE)
            except TimeoutError:
                data = None
            now = time.monotonic()
            if data is not None:
                if not data:
                    raise EOFError("the broker closed the connection")
                last_heard = now
                stats.bytes += len(data)
                BYTES.inc(len(data))
                publishes, acks, controls = reader.feed(data)
                self._deliver(sock, publishes, acks)
                for c in controls:
                    if c.type == DISCONNECT:
                        raise EOFError(f"the broker disconnected us: {reason(c.body[0]) if c.body else '0x00 normal'}")
            if now - last_ping >= half:
                sock.sendall(PINGREQ_PACKET)  # the keepalive counts what we send; we send nothing else
                last_ping = now
            if now - last_heard > self.keepalive * 1.5:  # not even a PINGRESP: the link is dead
                raise TimeoutError(f"nothing from the broker in {now - last_heard:.0f} s")

    def _deliver(self, sock: socket.socket, publishes: list[tuple[str, bytes]], acks: list[int]) -> None:
        for packet_id in acks:  # a broker that upgraded our QoS-0 subscription: acknowledge, as MQTT requires
            sock.sendall(_packet(PUBACK << 4, packet_id.to_bytes(2, "big")))
        if not publishes:
            return
        self.stats.messages += len(publishes)
        MESSAGES.inc(len(publishes))
        try:
            self.on_batch(publishes)
        except Exception:  # the handler counts bad messages itself; this is a bug, and the next block goes on
            log.exception("telemetry receiver: handling %d messages failed", len(publishes))


def _suback_codes(body: bytes) -> bytes:
    if len(body) < 3:
        raise MalformedPacket("SUBACK too short")
    props = read_varint(body, 2, len(body), "property length")
    if props is None:
        raise MalformedPacket("SUBACK properties cut short")
    plen, j = props
    if j + plen > len(body):
        raise MalformedPacket("SUBACK properties longer than the packet")
    return body[j + plen:]

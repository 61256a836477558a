"""Start the real parts on free loopback ports: a mosquitto broker, the fleet API, edge agents.

Each part is a child process with its own folder for config, data and logs, stopped by `close()`.
Used by `make demo` and by the end-to-end tests alike, so the demo path is what the tests prove.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .tls import TlsFiles

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
DYNSEC_PLUGIN_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768+). A port is bound seconds after it is picked
    (a process starts first), and one from the ephemeral range may meanwhile become some client's source port
    (seen: the API's own MQTT connection took an agent's HTTP port). Never the same port twice in one process."""
    rng = random.SystemRandom()
    while True:
        port = rng.randint(20000, 32000)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing we wait for may not accept connections yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def find_mosquitto() -> str:
    for candidate in MOSQUITTO_CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")


@dataclass
class Process:
    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "ab") as log:  # the child holds its own copy of the descriptor
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, and the time to clean up; then SIGKILL for anything of its process group still there."""
        if self.proc is None:
            return
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group (the process and anything it started that did not leave the group)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # start_new_session: its pid is its group's id
        except (ProcessLookupError, PermissionError):
            pass  # the group is empty already
        if self.proc.returncode is None:
            self.proc.wait(timeout=10)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def find_dynsec_plugin() -> str:
    for candidate in DYNSEC_PLUGIN_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise FileNotFoundError("mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) is not installed")


class Broker:
    """A private mosquitto: own config, own port, no persistence, anonymous access on loopback.

    With `dynsec=True` it runs the dynamic security plugin instead: no anonymous access, one admin client
    (`admin_username` / `admin_password`) that may use `$CONTROL/dynamic-security/#`; everything else is
    created at runtime over that topic (what the fleet API does).
    """

    def __init__(self, root: Path, port: int | None = None, extra_config: str = "", dynsec: bool = False,
                 admin_username: str = "admin", admin_password: str | None = None, tls: TlsFiles | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.dynsec = dynsec
        self.tls = tls
        self.admin_username = admin_username
        self.admin_password = admin_password or secrets.token_urlsafe(16)
        root.mkdir(parents=True, exist_ok=True)
        conf = root / "mosquitto.conf"
        access = "allow_anonymous true\n"
        if dynsec:
            dynsec_file = root / "dynamic-security.json"
            dynsec_file.unlink(missing_ok=True)
            subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(dynsec_file), admin_username, self.admin_password],
                           check=True, capture_output=True)
            # As root mosquitto drops to user `mosquitto`, which cannot reach a private temp folder: stay root here.
            access = (
                "allow_anonymous false\n"
                f"plugin {find_dynsec_plugin()}\n"
                f"plugin_opt_config_file {dynsec_file}\n"
                + ("user root\n" if os.geteuid() == 0 else "")
            )
        listener = f"listener {self.port} 127.0.0.1\n"
        if tls is not None:  # TLS only: this port speaks nothing else
            listener += f"cafile {tls.ca}\ncertfile {tls.cert}\nkeyfile {tls.key}\ntls_version tlsv1.2\n"
            if os.geteuid() == 0 and "user root" not in access:
                access += "user root\n"  # the key is readable by its owner only
        conf.write_text(
            f"{listener}"
            f"{access}"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "max_inflight_messages 100\n"
            "max_queued_messages 10000\n"
            f"{extra_config}"
        )
        self.process = Process("mosquitto", [find_mosquitto(), "-c", str(conf)], root / "mosquitto.log")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        self.process.start()

        def accepting() -> bool:
            if not self.process.alive:
                raise RuntimeError(f"mosquitto exited:\n{self.process.tail()}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True

        wait_for(accepting, 10, f"mosquitto on port {self.port}")
        return self

    def stop(self) -> None:
        self.process.stop()


class HttpService:
    """A child process that counts as up once an HTTP endpoint of its answers 200; restartable."""

    health_path: str
    url: str
    process: Process

    def _process(self) -> Process:
        raise NotImplementedError

    def start(self):
        if self.process.proc is not None:
            self.process = self._process()
        self.process.start()

        def up() -> bool:
            if not self.process.alive:
                raise RuntimeError(f"{self.process.name} exited:\n{self.process.tail()}")
            return httpx.get(f"{self.url}{self.health_path}", timeout=1).status_code == 200

        wait_for(up, 30, f"{self.process.name} to answer on {self.health_path}")
        return self

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()


class FleetApi(HttpService):
    """The fleet API as a process. It is started with an admin token of its own (EDGEFLEET_API_ADMIN_TOKEN),
    which `client()` sends, so demo and tests call the authenticated API without a set-up step."""

    def __init__(self, root: Path, broker_url: str, trusted_key: Path, port: int | None = None,
                 database_url: str | None = None, env: dict[str, str] | None = None, admin_token: str | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.admin_token = admin_token or (env or {}).get("EDGEFLEET_API_ADMIN_TOKEN") or "eft_" + secrets.token_urlsafe(24)
        root.mkdir(parents=True, exist_ok=True)
        self.env = {
            "EDGEFLEET_API_ADMIN_TOKEN": self.admin_token,
            "EDGEFLEET_API_DATABASE_URL": database_url or f"sqlite:///{root / 'fleet.db'}",
            "EDGEFLEET_API_BROKER_URL": broker_url,
            "EDGEFLEET_API_ARTIFACT_DIR": str(root / "artifacts"),
            "EDGEFLEET_API_TRUSTED_KEYS": str(trusted_key),
            "EDGEFLEET_API_PORT": str(self.port),
            "EDGEFLEET_API_TICK_INTERVAL_S": "0.5",
            **(env or {}),
        }
        self.process = self._process()

    def _process(self) -> Process:
        return Process("fleet-api", [sys.executable, "-m", "fleet_api.cli", "serve"], self.root / "fleet-api.log", self.env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {token or self.admin_token}"})

    health_path = "/readyz"  # database and broker reachable


class EdgeAgent(HttpService):
    def __init__(self, root: Path, device_id: str, broker_url: str, trusted_key: Path, http_port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.device_id = device_id
        self.root = root
        self.http_port = http_port or free_port()
        self.env = {
            "EDGEFLEET_AGENT_DEVICE_ID": device_id,
            "EDGEFLEET_AGENT_BROKER_URL": broker_url,
            "EDGEFLEET_AGENT_DATA_DIR": str(root / "data"),
            "EDGEFLEET_AGENT_TRUSTED_KEYS": str(trusted_key),
            "EDGEFLEET_AGENT_HTTP_PORT": str(self.http_port),
            "EDGEFLEET_AGENT_CHUNK_TIMEOUT_S": "1.0",
            **(env or {}),
        }
        self.process = self._process()

    def _process(self) -> Process:
        return Process(self.device_id, [sys.executable, "-m", "edge_agent.cli", "run"], self.root / "agent.log", self.env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    health_path = "/v2/health/live"  # listening; ready only once it serves a model


def find_postgres_bin() -> Path:
    """The folder with initdb and pg_ctl: PATH first, then the Debian layout (newest version)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")


class Postgres:
    """A throwaway PostgreSQL cluster on a free loopback port (trust auth, no fsync), for tests and benchmarks.

    PostgreSQL refuses to run as root: as root, the cluster runs as the `postgres` user in a folder it owns,
    created under the system temp folder (a pytest tmp_path is private to root, so `postgres` could not enter it).
    """

    def __init__(self, port: int | None = None, user: str = "edgefleet", os_user: str = "postgres") -> None:
        import tempfile

        self.bin = find_postgres_bin()
        self.port = port or free_port()
        self.user = user
        self.as_root = os.geteuid() == 0
        self.os_user = os_user
        self.root = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        if self.as_root:
            import pwd

            pw = pwd.getpwnam(os_user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if self.as_root:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}\n{self._log()}")
        return out

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def start(self) -> Postgres:
        self._run(self.bin / "initdb", "-D", self.data, "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off " \
               "-c full_page_writes=off -c max_connections=200"
        self._run(self.bin / "pg_ctl", "-D", self.data, "-o", opts, "-l", self.log_path, "-w", "-t", "30", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
            except RuntimeError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


# --- site brokers: a mosquitto per site, bridged to the central broker -----------------------------------------

# What crosses a site's link, by direction (mosquitto `topic PATTERN DIRECTION QOS`). In: what the API sends to
# devices; out: what devices send to the API. Telemetry is QoS 0 (lossy by design, dropped while the link is down).
BRIDGE_TOPICS_IN = (("devices/+/desired", 1), ("devices/+/capture_ack", 1), ("artifacts/#", 1))
BRIDGE_TOPICS_OUT = (("devices/+/reported", 1), ("devices/+/status", 1), ("devices/+/hello", 1),
                     ("devices/+/fetch", 1), ("devices/+/events", 1), ("devices/+/telemetry", 0),
                     ("devices/+/capture", 1))

# The per-device rules of a site: the same for every device, keyed by its login (`%u` = the device id), so a
# site needs no per-device ACL entry and no call to the centre to admit a device while the link is down.
SITE_ACL = """\
# devices: only their own topics, and artifact chunks
pattern read {prefix}/devices/%u/desired
pattern read {prefix}/devices/%u/capture_ack
pattern write {prefix}/devices/%u/reported
pattern write {prefix}/devices/%u/hello
pattern write {prefix}/devices/%u/fetch
pattern write {prefix}/devices/%u/telemetry
pattern write {prefix}/devices/%u/events
pattern write {prefix}/devices/%u/status
pattern write {prefix}/devices/%u/capture
pattern read {prefix}/artifacts/#
# (`topic` lines before any `user` line would apply to anonymous clients only: every device rule is a pattern)
# the site's own observer (benchmarks, tests, Prometheus exporters): read-only
user {observer}
topic read {prefix}/#
topic read $SYS/#
"""


def bridge_config(site: str, central_host: str, central_port: int, prefix: str = "edgefleet/v1",
                  username: str | None = None, password: str | None = None, restart_timeout: str = "1 5",
                  keepalive_s: int = 10) -> str:
    """mosquitto.conf lines of a site's bridge to the centre. `cleansession false`: the centre keeps the bridge's
    session, so desired states and chunks published while the link is down are queued there and delivered when
    it returns; the site keeps what devices sent meanwhile (its own queue, persisted) for the other direction."""
    lines = [
        f"connection central-{site}",
        f"address {central_host}:{central_port}",
        f"remote_clientid edgefleet-site-{site}",
        "cleansession false",
        "local_cleansession false",
        "bridge_protocol_version mqttv50",  # keeps the chunks' message expiry across the link
        "try_private true",  # the centre treats us as a bridge: retain flags as published, no loops
        "notifications true",
        f"notification_topic $SYS/edgefleet/bridge/{site}/state",
        "notifications_local_only true",
        f"keepalive_interval {keepalive_s}",
        f"restart_timeout {restart_timeout}",
        "start_type automatic",
        "bridge_max_packet_size 0",
    ]
    if username:
        lines.append(f"remote_username {username}")
    if password:
        lines.append(f"remote_password {password}")
    lines += [f"topic {prefix}/{pattern} in {qos}" for pattern, qos in BRIDGE_TOPICS_IN]
    lines += [f"topic {prefix}/{pattern} out {qos}" for pattern, qos in BRIDGE_TOPICS_OUT]
    return "\n".join(lines) + "\n"


class SiteBroker(Broker):
    """A site's mosquitto: devices of the site connect here; a bridge to the central broker carries desired
    states and artifact chunks in, and what devices send out. Persistent (retained desired states and the
    bridge's queue survive a restart); per-device ACLs from an acl_file with `%u` patterns.

    `devices` maps device id → password (a password_file is written); None admits anonymous clients, which
    then get no device rights (the ACL patterns need a login), only what `observer` may read when it is None
    too: anonymous on loopback is for benchmarks, where every client is ours.
    """

    def __init__(self, root: Path, site: str, central_host: str, central_port: int, port: int | None = None,
                 devices: dict[str, str] | None = None, prefix: str = "edgefleet/v1", extra_config: str = "",
                 observer: str = "observer", observer_password: str | None = None,
                 bridge_username: str | None = None, bridge_password: str | None = None) -> None:
        self.site = site
        self.observer = observer
        self.observer_password = observer_password or secrets.token_urlsafe(12)
        root.mkdir(parents=True, exist_ok=True)
        persistence = (
            ("user root\n" if os.geteuid() == 0 else "")  # as for dynsec: stay able to write our temp folder
            + "persistence true\n"
            f"persistence_location {root}/\n"
            "autosave_interval 30\n"
        )
        if devices is None:
            access = ""
        else:
            passwd = root / "passwd"
            passwd.write_text("".join(f"{u}:{p}\n" for u, p in {**devices, observer: self.observer_password}.items()))
            subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
            acl = root / "acl"
            acl.write_text(SITE_ACL.format(prefix=prefix, observer=observer))
            access = f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
        super().__init__(root, port=port, extra_config=(
            access + persistence + extra_config
            + bridge_config(site, central_host, central_port, prefix, bridge_username, bridge_password)))
        # The base config says `persistence false` and `allow_anonymous true` first; mosquitto takes the last
        # value of a repeated option, so ours win (checked by the e2e test: a stranger is refused).
        if devices is not None:
            text = (root / "mosquitto.conf").read_text().replace("allow_anonymous true\n", "")
            (root / "mosquitto.conf").write_text(text)

    def bridge_connected(self) -> bool:
        """Whether the site's bridge is up, read from its own notification topic (retained on the site broker)."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        got: list[bytes] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.username_pw_set(self.observer, self.observer_password)
        c.on_message = lambda _c, _u, m: got.append(m.payload)
        c.connect("127.0.0.1", self.port)
        c.subscribe(f"$SYS/edgefleet/bridge/{self.site}/state")
        deadline = time.monotonic() + 2
        while not got and time.monotonic() < deadline:
            c.loop(0.1)
        c.disconnect()
        return bool(got) and got[-1] == b"1"


class LinkProxy:
    """A TCP link between a site broker and the centre that counts its bytes each way and can be cut.

    `cut()` closes every connection through it and refuses new ones (the site's WAN is down); `restore()`
    accepts again. Runs on a thread of its own; `down_bytes` is centre → site, `up_bytes` site → centre.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int | None = None) -> None:
        import threading

        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.down_bytes = 0
        self.up_bytes = 0
        self.connections = 0
        self._up = True
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(16)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"link-{self.port}", daemon=True)

    def start(self) -> LinkProxy:
        self._thread.start()
        return self

    def cut(self) -> None:
        with self._lock:
            self._up = False
            for a, b in self._pairs:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._stop = True
        self.cut()
        self._listener.close()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        peer: dict[socket.socket, tuple[socket.socket, bool]] = {}  # socket → (other end, reading from the site?)
        while not self._stop:
            try:
                events = sel.select(timeout=0.2)
            except (OSError, ValueError):
                break
            for key, _ in events:
                s = key.fileobj
                if key.data is None:  # a new connection from the site
                    try:
                        site, _ = self._listener.accept()
                    except OSError:
                        continue
                    with self._lock:
                        up = self._up
                    if not up:
                        site.close()
                        continue
                    try:
                        central = socket.create_connection(self.target, timeout=5)
                    except OSError:
                        site.close()
                        continue
                    for x in (site, central):
                        x.setblocking(True)
                        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    peer[site], peer[central] = (central, True), (site, False)
                    sel.register(site, selectors.EVENT_READ, "conn")
                    sel.register(central, selectors.EVENT_READ, "conn")
                    with self._lock:
                        self._pairs.append((site, central))
                        self.connections += 1
                    continue
                if s not in peer:  # closed with its other end earlier in this round
                    continue
                other, from_site = peer[s]
                try:
                    data = s.recv(262144)
                    if data:
                        other.sendall(data)
                except OSError:
                    data = b""
                if data:
                    if from_site:
                        self.up_bytes += len(data)
                    else:
                        self.down_bytes += len(data)
                    continue
                for x in (s, other):  # one end closed: close both
                    try:
                        sel.unregister(x)
                    except (KeyError, ValueError):
                        pass
                    peer.pop(x, None)
                    x.close()
                with self._lock:
                    self._pairs = [p for p in self._pairs if s not in p]
        sel.close()

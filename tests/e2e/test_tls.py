"""Issue 12 #13: encryption in transit, tried. The k3s broker listens on TLS only; here a real mosquitto does too,
with a CA and a broker certificate this test makes with `cryptography`.

The fleet API's broker client and an agent's link connect over mqtts:// trusting that CA (their own settings:
EDGEFLEET_API_MQTT_TLS_CA, EDGEFLEET_AGENT_MQTT_TLS_CA); a wrong CA or a certificate for another host name is
refused; a plain mqtt:// client gets nowhere; and the demo's whole path, a rollout to a real agent, runs over TLS.
"""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from demo.cluster import Broker
from demo.fleet import Fleet, device_table, roll_out, upload
from demo.tls import TlsFiles, make_ca, make_server_cert, make_tls
from edge_agent.settings import AgentSettings
from fleet_api.mqtt.broker import Broker as ApiBrokerClient

try:  # the agent's MQTT shell: edge_agent/mqtt/link.py since contract v2, edge_agent/sync.py before
    from edge_agent.mqtt.link import AgentLink
except ImportError:
    from edge_agent.sync import AgentLink

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_broker(tmp_path, tls) -> Broker:
    b = Broker(tmp_path / "broker", tls=tls).start()
    yield b
    b.stop()


def api_client(url: str, ca) -> ApiBrokerClient:
    return ApiBrokerClient(url, tls_ca=str(ca))


def agent_link(url: str, ca, tmp_path) -> AgentLink:
    return AgentLink(AgentSettings(device_id="cam-tls", broker_url=url, mqtt_tls_ca=ca, data_dir=tmp_path / "agent"), None)


CLIENTS = {"api": lambda url, ca, _tmp: api_client(url, ca), "agent": agent_link}


@pytest.mark.parametrize("side", CLIENTS)
def test_the_api_and_an_agent_connect_over_mqtts_trusting_their_own_ca(side, tls_broker, tls, tmp_path):
    assert tls_broker.url.startswith("mqtts://")
    client = CLIENTS[side](tls_broker.url, tls.ca, tmp_path)
    client.start()
    try:
        from demo.cluster import wait_for

        wait_for(lambda: client.connected, 20, f"the {side} to connect over TLS")
        sock = client.client.socket()
        assert isinstance(sock, ssl.SSLSocket) and sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        client.stop()


@pytest.mark.parametrize("side", CLIENTS)
def test_a_broker_certificate_from_another_ca_is_refused(side, tls_broker, tmp_path):
    other_ca, _, _ = make_ca(tmp_path / "other-ca", "not the fleet's CA")
    client = CLIENTS[side](tls_broker.url, other_ca, tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        client.client.connect(client.host, client.port)


@pytest.mark.parametrize("side", CLIENTS)
def test_a_broker_certificate_for_another_host_name_is_refused(side, tmp_path):
    ca, ca_key, ca_cert = make_ca(tmp_path / "ca")
    cert, key = make_server_cert(tmp_path / "ca", ca_key, ca_cert, hosts=("broker.example.com",))
    broker = Broker(tmp_path / "broker", tls=TlsFiles(ca=ca, cert=cert, key=key)).start()
    try:
        client = CLIENTS[side](broker.url, ca, tmp_path)  # the right CA, but we dial 127.0.0.1
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            client.client.connect(client.host, client.port)
    finally:
        broker.stop()


def test_the_tls_port_speaks_nothing_but_tls(tls_broker):
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plain", protocol=mqtt.MQTTv5)
    plain.connect("127.0.0.1", tls_broker.port)
    for _ in range(50):  # the broker drops a CONNECT that is not a TLS handshake
        if plain.loop(timeout=0.2) != mqtt.MQTT_ERR_SUCCESS:
            break
    assert not plain.is_connected()


def test_the_demo_path_runs_over_tls(tmp_path, keys, bundles):
    """`make demo ARGS=--tls` in small: the API and an agent process over mqtts://, a rollout, a served model."""
    with Fleet(tmp_path, keys.public_path, {"cam-1": {"site": "lab"}}, tls=True) as fleet, fleet.api.client() as api:
        assert fleet.broker.url.startswith("mqtts://")
        upload(api, bundles["1.0.0"])
        rollout = roll_out(api, "digits", "1.0.0", "site=lab")
        assert rollout["state"] == "succeeded", rollout
        assert [(r["device"], r["state"], r["version"]) for r in device_table(api)] == [("cam-1", "serving", "1.0.0")]

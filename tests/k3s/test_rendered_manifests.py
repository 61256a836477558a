"""The Kubernetes manifests as a cluster would receive them.

Every assertion reads the output of `kubectl kustomize` (through `scripts/k8s-check.sh render`,
which bootstraps its own kubectl in .venv-k8s and renders with throwaway secret files), never
the files under k3s/: patches, components and generators are all applied.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "k8s-check.sh"
OVERLAYS = ["cpu", "gpu"]
WORKLOADS = {"DaemonSet", "Deployment", "StatefulSet"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("rendered")
    proc = _run("render", str(out))
    assert proc.returncode == 0, proc.stderr
    docs = {o: json.loads((out / f"overlays-{o}.json").read_text()) for o in OVERLAYS}
    docs["edge-site"] = json.loads((out / "examples-edge-site.json").read_text())
    return docs


def find(docs: list[dict], kind: str, name: str, namespace: str | None = None) -> dict:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
            and (namespace is None or d["metadata"].get("namespace") == namespace)]
    assert len(hits) == 1, f"{kind}/{name} found {len(hits)} times"
    return hits[0]


def agent(docs):
    return find(docs, "DaemonSet", "edgefleet-agent", "edgefleet-edge")


def api(docs):
    return find(docs, "Deployment", "edgefleet-api", "edgefleet")


def broker(docs):
    return find(docs, "StatefulSet", "edgefleet-broker", "edgefleet")


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def all_containers(workload: dict) -> list[dict]:
    spec = workload["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


@pytest.fixture(params=OVERLAYS)
def docs(request, rendered) -> list[dict]:
    return rendered[request.param]


# --- workloads: probes, resources, securityContext -------------------------------------------------

@pytest.mark.parametrize("get", [agent, api, broker], ids=["agent", "api", "broker"])
def test_every_container_is_locked_down(docs, get):
    workload = get(docs)
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for c in all_containers(workload):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
        assert not sc.get("privileged"), c["name"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)
        assert not any(p.get("hostPort") for p in c.get("ports", [])), c["name"]


def test_agent_probes_use_its_health_endpoints(docs):
    c = agent(docs)["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    port = env_of(c)["EDGEFLEET_AGENT_HTTP_PORT"]["value"]
    assert {"name": "http", "containerPort": int(port), "protocol": "TCP"} in c["ports"]


def test_api_probes_use_its_health_endpoints(docs):
    c = api(docs)["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    port = env_of(c)["EDGEFLEET_API_PORT"]["value"]
    assert {"name": "http", "containerPort": int(port), "protocol": "TCP"} in c["ports"]


def test_broker_probes_its_tls_port(docs):
    c = broker(docs)["spec"]["template"]["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["tcpSocket"]["port"] == "mqtts"
    assert c["ports"] == [{"name": "mqtts", "containerPort": 8883, "protocol": "TCP"}]


# --- the agent ---------------------------------------------------------------------------------------

def test_agent_runs_on_edge_nodes_with_models_on_the_node(docs):
    ds = agent(docs)
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"edgefleet.io/edge": "true"}
    c = pod["containers"][0]
    env = env_of(c)
    assert env["EDGEFLEET_AGENT_DEVICE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    data_dir = env["EDGEFLEET_AGENT_DATA_DIR"]["value"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == data_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["hostPath"]["path"] == data_dir
    assert not mount.get("readOnly")


def test_agent_broker_credentials_come_from_a_secret_file(docs):
    ds = agent(docs)
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = env_of(c)
    assert "EDGEFLEET_AGENT_MQTT_PASSWORD" not in env
    assert env["EDGEFLEET_AGENT_MQTT_USERNAME"]["value"] == "device-$(EDGEFLEET_AGENT_DEVICE_ID)"  # issue 12 #1
    path = env["EDGEFLEET_AGENT_MQTT_PASSWORD_FILE"]["value"]
    assert path.endswith("/$(EDGEFLEET_AGENT_DEVICE_ID)")
    mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    secret = find(docs, "Secret", volume["secret"]["secretName"], "edgefleet-edge")
    assert secret["data"], "one key per edge node"
    assert env["EDGEFLEET_AGENT_BROKER_URL"]["value"].startswith("mqtts://edgefleet-broker.edgefleet.svc:")


def test_agent_needs_no_kubernetes_api(docs):
    ds = agent(docs)
    sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
    account = find(docs, "ServiceAccount", sa, "edgefleet-edge")
    assert account["automountServiceAccountToken"] is False
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert not any(s.get("name") == sa for b in bindings for s in b.get("subjects", []))


def test_each_component_has_its_own_service_account_and_no_rbac(docs):
    accounts = [w["spec"]["template"]["spec"]["serviceAccountName"]
                for w in docs if w["kind"] in WORKLOADS]
    assert len(accounts) == len(set(accounts)) == 4  # agent, api, broker, postgres
    assert "default" not in accounts
    # None of them talks to the Kubernetes API, so none is granted anything.
    assert not [d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]


# --- the API -----------------------------------------------------------------------------------------

def test_api_scales_out_behind_a_disruption_budget(docs):
    deployment = api(docs)
    assert deployment["spec"]["replicas"] == 2
    pdb = find(docs, "PodDisruptionBudget", "edgefleet-api", "edgefleet")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    assert env["EDGEFLEET_API_SHARED_SUBSCRIPTION_GROUP"]["value"]  # replicas share the device messages
    assert "EDGEFLEET_API_MQTT_CLIENT_ID" not in env  # empty: unique per process


def test_api_autoscales_on_cpu_from_its_disruption_budget_up(docs):
    deployment = api(docs)
    hpa = find(docs, "HorizontalPodAutoscaler", "edgefleet-api", "edgefleet")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "edgefleet-api"}
    # never below what the disruption budget and the shared subscription assume; room to grow
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"] == 2
    assert hpa["spec"]["maxReplicas"] >= 4
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and 50 <= cpu[0]["resource"]["target"]["averageUtilization"] <= 90
    # utilization is relative to the request: every container of the API asks for CPU
    assert all("cpu" in c["resources"]["requests"] for c in all_containers(deployment))
    # waves come in bursts: scale-down waits
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    # the backlog metric needs a custom-metrics adapter: not in the plain overlays
    assert not [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]


def test_api_autoscales_on_the_telemetry_backlog_where_the_metric_is_served(rendered):
    from fleet_api.mqtt.broker import INBOX  # the exported gauge the metric names

    hpa = find(rendered["edge-site"], "HorizontalPodAutoscaler", "edgefleet-api", "edgefleet")
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == [INBOX._name] == ["edgefleet_api_mqtt_inbox_messages"]
    assert pods[0]["target"]["type"] == "AverageValue"


# --- a site broker (k3s/components/site-broker, in examples/edge-site) ------------------------------

def site_broker(docs):
    return find(docs, "StatefulSet", "edgefleet-site-broker", "edgefleet-edge")


def site_config(docs) -> dict[str, str]:
    name = site_broker(docs)["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
    return find(docs, "ConfigMap", name, "edgefleet-edge")["data"]


def test_site_broker_is_locked_down_and_keeps_its_state_on_a_volume(rendered):
    docs = rendered["edge-site"]
    test_every_container_is_locked_down(docs, site_broker)
    sts = site_broker(docs)
    pod = sts["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"edgefleet.io/site-broker": "true"}
    assert [v["metadata"]["name"] for v in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    conf = site_config(docs)["mosquitto.conf"]
    for line in ("allow_anonymous false", "persistence true", "acl_file /mosquitto/config/acl",
                 "password_file /mosquitto/run/passwd", "listener 8883"):
        assert line in conf.splitlines(), line
    assert all(c["image"].startswith("eclipse-mosquitto:2.") for c in all_containers(sts))


def test_site_broker_bridges_desired_and_chunks_in_and_device_messages_out(rendered):
    script = site_config(rendered["edge-site"])["init-site.sh"]
    lines = set(script.splitlines())
    assert {"cleansession false", "local_cleansession false", "try_private true", "bridge_insecure false"} <= lines
    topics = {tuple(line.split()[1:3]) for line in lines if line.startswith("topic ")}
    assert topics == {
        ("edgefleet/v1/devices/+/desired", "in"), ("edgefleet/v1/devices/+/capture_ack", "in"), ("edgefleet/v1/artifacts/#", "in"),
        *{(f"edgefleet/v1/devices/+/{c}", "out")
          for c in ("reported", "status", "hello", "fetch", "events", "telemetry", "capture")},
    }
    # the same channels the demo's SiteBroker bridges (which the e2e test runs)
    from demo.cluster import BRIDGE_TOPICS_IN, BRIDGE_TOPICS_OUT

    assert topics == {(f"edgefleet/v1/{p}", "in") for p, _ in BRIDGE_TOPICS_IN} | {(f"edgefleet/v1/{p}", "out") for p, _ in BRIDGE_TOPICS_OUT}
    # its password comes from a Secret file at start, never from the ConfigMap
    assert "remote_password $(cat /run/secrets/edgefleet/bridge/password)" in lines


def test_site_broker_enforces_per_device_rules(rendered):
    acl = [line for line in site_config(rendered["edge-site"])["acl"].splitlines() if line and not line.startswith("#")]
    assert all(line.startswith("pattern ") for line in acl)  # `topic` outside a user block binds anonymous only
    assert "pattern read edgefleet/v1/devices/%u/desired" in acl
    assert "pattern write edgefleet/v1/devices/%u/telemetry" in acl
    assert not [line for line in acl if "devices/+" in line or "devices/#" in line]


def test_site_agents_use_the_site_broker_which_alone_reaches_the_centre(rendered):
    docs = rendered["edge-site"]
    env = env_of(agent(docs)["spec"]["template"]["spec"]["containers"][0])
    assert env["EDGEFLEET_AGENT_BROKER_URL"]["value"] == "mqtts://edgefleet-site-broker.edgefleet-edge.svc:8883"
    policy = find(docs, "NetworkPolicy", "edgefleet-site-broker", "edgefleet-edge")
    assert [r["ports"][0]["port"] for r in policy["spec"]["egress"]] == [8883, 53]
    assert policy["spec"]["egress"][0]["to"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "edgefleet-broker"}
    central = find(docs, "NetworkPolicy", "edgefleet-broker", "edgefleet")
    admitted = [f["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for r in central["spec"]["ingress"] for f in r["from"]]
    assert "edgefleet-site-broker" in admitted


def test_api_reaches_database_and_broker_through_secret_files(docs):
    deployment = api(docs)
    pod = deployment["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    for name in ("EDGEFLEET_API_DATABASE_URL", "EDGEFLEET_API_MQTT_PASSWORD", "EDGEFLEET_API_MQTT_USERNAME"):
        assert name not in env
        path = env[name + "_FILE"]["value"]
        assert any(path.startswith(m["mountPath"] + "/") for m in pod["containers"][0]["volumeMounts"]), path
    assert env["EDGEFLEET_API_BROKER_URL"]["value"].startswith("mqtts://")
    assert env["EDGEFLEET_API_MQTT_TLS_CA"]["value"]


def mounted_secret_key(docs: list[dict], workload: dict, container: dict, path: str) -> tuple[dict, str]:
    """The rendered Secret, and its key, that a container sees at `path` (a file of a mounted secret volume)."""
    pod = workload["spec"]["template"]["spec"]
    mount = next((m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")), None)
    assert mount is not None, f"{path} is in no volume mount"
    assert mount.get("readOnly") is True, mount
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume, f"{path} is not in a Secret volume"
    file = path[len(mount["mountPath"]) + 1:]
    items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
    key = items.get(file, file) if items else file
    secret = find(docs, "Secret", volume["secret"]["secretName"], workload["metadata"]["namespace"])
    assert key in secret.get("data", {}), (secret["metadata"]["name"], key)
    return secret, key


def test_api_provisions_device_broker_clients_through_dynamic_security(docs):
    env = env_of(api(docs)["spec"]["template"]["spec"]["containers"][0])
    assert env["EDGEFLEET_API_DYNSEC"]["value"] == "true"
    # The API's broker login must be the dynamic-security admin: the broker's init container makes it so.
    init = broker(docs)["spec"]["template"]["spec"]["initContainers"][0]
    assert "init-dynsec.sh" in " ".join(init["command"])


def test_api_admin_token_comes_from_a_mounted_secret_file(docs):
    deployment = api(docs)
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    env = env_of(c)
    assert "EDGEFLEET_API_ADMIN_TOKEN" not in env
    entry = env["EDGEFLEET_API_ADMIN_TOKEN_FILE"]
    assert set(entry) == {"name", "value"}, entry  # a plain path, not a valueFrom
    secret, key = mounted_secret_key(docs, deployment, c, entry["value"])
    token = base64.b64decode(secret["data"][key]).decode()
    assert len(token) >= 32 and token == token.strip()
    # Only the API mounts it (the broker mounts the API's broker login, not its admin token).
    mounters = [w["metadata"]["name"] for w in docs if w["kind"] in WORKLOADS
                for v in w["spec"]["template"]["spec"].get("volumes", [])
                if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]]
    assert mounters == ["edgefleet-api"]


def test_api_master_key_comes_from_a_secret_file_only_the_api_mounts(docs):
    deployment = api(docs)
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    env = env_of(c)
    assert "EDGEFLEET_API_MASTER_KEY" not in env
    secret, key = mounted_secret_key(docs, deployment, c, env["EDGEFLEET_API_MASTER_KEY_FILE"]["value"])
    master = base64.b64decode(secret["data"][key]).decode()
    assert len(base64.urlsafe_b64decode(master)) == 32  # what ApiSettings.master_key_bytes() takes
    mounters = [w["metadata"]["name"] for w in docs if w["kind"] in WORKLOADS
                for v in w["spec"]["template"]["spec"].get("volumes", [])
                if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]]
    assert mounters == ["edgefleet-api"]
    assert secret["data"][key] not in json.dumps([d for d in docs if d is not secret])


def test_api_admin_token_value_appears_only_in_its_secret(docs):
    deployment = api(docs)
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    secret, key = mounted_secret_key(docs, deployment, c, env_of(c)["EDGEFLEET_API_ADMIN_TOKEN_FILE"]["value"])
    token = base64.b64decode(secret["data"][key]).decode()
    encoded = secret["data"][key]
    elsewhere = json.dumps([d for d in docs if d is not secret])
    assert token not in elsewhere
    assert encoded not in elsewhere


def test_api_is_published_through_traefik(docs):
    ingress = find(docs, "Ingress", "edgefleet-api", "edgefleet")
    assert ingress["spec"]["ingressClassName"] == "traefik"
    assert ingress["spec"]["tls"][0]["secretName"].startswith("edgefleet-api-tls-")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = find(docs, "Service", backend["name"], "edgefleet")
    assert service["spec"]["selector"].items() <= api(docs)["spec"]["template"]["metadata"]["labels"].items()


# --- the broker --------------------------------------------------------------------------------------

def test_broker_has_dynamic_security_tls_and_a_volume(docs):
    sts = broker(docs)
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = find(docs, "ConfigMap", volumes["config"]["configMap"]["name"], "edgefleet")
    conf = config["data"]["mosquitto.conf"]
    assert "plugin /usr/lib/mosquitto_dynamic_security.so" in conf
    assert "plugin_opt_config_file /mosquitto/data/" in conf
    assert "allow_anonymous false" in conf
    assert "listener 8883" in conf and "listener 1883" not in conf
    tls = find(docs, "Secret", volumes["tls"]["secret"]["secretName"], "edgefleet")
    assert tls["type"] == "kubernetes.io/tls"
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    init = pod["initContainers"][0]
    assert "init-dynsec.sh" in " ".join(init["command"])
    assert "mosquitto_ctrl dynsec init" in config["data"]["init-dynsec.sh"]


def test_postgres_keeps_its_data_on_a_volume_and_its_password_in_a_file(docs):
    sts = find(docs, "StatefulSet", "edgefleet-postgres", "edgefleet")
    env = env_of(sts["spec"]["template"]["spec"]["containers"][0])
    assert "POSTGRES_PASSWORD" not in env and env["POSTGRES_PASSWORD_FILE"]["value"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


# --- network policies --------------------------------------------------------------------------------

def policies_for(docs, workload) -> list[dict]:
    ns = workload["metadata"]["namespace"]
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return [p for p in docs if p["kind"] == "NetworkPolicy" and p["metadata"]["namespace"] == ns
            and p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()]


def egress_targets(docs, workload) -> set[tuple]:
    """(namespace or '*', app name, port) for every egress rule that selects this workload."""
    targets = set()
    ns = workload["metadata"]["namespace"]
    for policy in policies_for(docs, workload):
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                peer_ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name", ns)
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                app = labels.get("app.kubernetes.io/name") or labels.get("k8s-app") or peer.get("ipBlock", {}).get("cidr")
                for port in rule.get("ports", []):
                    targets.add((peer_ns, app, port["port"]))
    return targets


def test_every_namespace_denies_by_default(docs):
    for ns in ("edgefleet", "edgefleet-edge"):
        deny = find(docs, "NetworkPolicy", "default-deny-all", ns)
        assert deny["spec"]["podSelector"] == {}
        assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]


def test_every_workload_is_selected_by_a_policy(docs):
    for workload in (w for w in docs if w["kind"] in WORKLOADS):
        named = [p for p in policies_for(docs, workload) if p["spec"]["podSelector"]]
        assert named, workload["metadata"]["name"]


def test_agent_may_reach_only_the_broker(docs):
    dns = {("kube-system", "kube-dns", 53)}
    assert egress_targets(docs, agent(docs)) - dns == {("edgefleet", "edgefleet-broker", 8883)}


def test_api_may_reach_only_broker_database_and_dns(docs):
    assert egress_targets(docs, api(docs)) == {
        ("edgefleet", "edgefleet-broker", 8883),
        ("edgefleet", "edgefleet-postgres", 5432),
        ("kube-system", "kube-dns", 53),
    }


def test_broker_accepts_only_api_and_agents_and_calls_nobody(docs):
    (own,) = [p for p in policies_for(docs, broker(docs)) if p["spec"]["podSelector"]]
    assert own["spec"]["egress"] == []
    (rule,) = own["spec"]["ingress"]
    peers = {(p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name", "edgefleet"),
              p["podSelector"]["matchLabels"]["app.kubernetes.io/name"]) for p in rule["from"]}
    assert peers == {("edgefleet", "edgefleet-api"), ("edgefleet-edge", "edgefleet-agent")}
    assert rule["ports"] == [{"protocol": "TCP", "port": 8883}]


# --- secrets -----------------------------------------------------------------------------------------

def test_no_secret_value_appears_outside_a_secret(docs):
    values = set()
    for s in (d for d in docs if d["kind"] == "Secret"):
        for v in s.get("data", {}).values():
            text = base64.b64decode(v).decode(errors="replace")
            values.add(text)
            values.update(text.splitlines())
            values.update(line.split("=", 1)[-1] for line in text.splitlines())  # NODE=password lines
    values = {v for v in values if len(v) >= 12 and not v.startswith("-----")}
    assert values
    others = json.dumps([d for d in docs if d["kind"] != "Secret"])
    leaked = [v for v in values if v in others]
    assert not leaked


def test_every_referenced_secret_and_configmap_is_rendered(docs):
    for workload in (w for w in docs if w["kind"] in WORKLOADS):
        ns = workload["metadata"]["namespace"]
        for v in workload["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in v:
                find(docs, "Secret", v["secret"]["secretName"], ns)
            if "configMap" in v:
                find(docs, "ConfigMap", v["configMap"]["name"], ns)


# --- overlays ----------------------------------------------------------------------------------------

def test_gpu_overlay_asks_for_an_nvidia_gpu(rendered):
    ds = agent(rendered["gpu"])
    pod = ds["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["image"].endswith("-cuda")
    providers = env_of(c)["EDGEFLEET_AGENT_PROVIDERS"]["value"].split(",")
    assert providers[:2] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert providers[-1] == "CPUExecutionProvider"


def test_cpu_overlay_asks_for_no_gpu(rendered):
    pod = agent(rendered["cpu"])["spec"]["template"]["spec"]
    assert "runtimeClassName" not in pod
    c = pod["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert env_of(c)["EDGEFLEET_AGENT_PROVIDERS"]["value"] == "CPUExecutionProvider"


def test_images_are_pinned(docs):
    for workload in (w for w in docs if w["kind"] in WORKLOADS):
        for c in all_containers(workload):
            name, _, tag = c["image"].rpartition(":")
            assert name and tag and tag != "latest", c["image"]


# --- first deployment --------------------------------------------------------------------------------

def test_it_renders_before_any_edge_node_is_registered(tmp_path):
    """k3s/README.md: agent-mqtt-passwords.env is empty until the nodes are registered through the API."""
    secrets = tmp_path / "secrets"
    made = _run("example-secrets", str(secrets))
    assert made.returncode == 0, made.stderr
    (secrets / "agent-mqtt-passwords.env").write_text("")
    proc = _run("render", str(tmp_path / "out"), "--secrets", str(secrets))
    assert proc.returncode == 0, proc.stderr
    docs = json.loads((tmp_path / "out" / "overlays-cpu.json").read_text())
    pod = agent(docs)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "mqtt-credentials")
    assert not find(docs, "Secret", volume["secret"]["secretName"], "edgefleet-edge").get("data")


# --- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["broker-tls.key", "api-admin-token"])
def test_a_missing_secret_file_fails_the_render_naming_it(tmp_path, name):
    secrets = tmp_path / "secrets"
    made = _run("example-secrets", str(secrets))
    assert made.returncode == 0, made.stderr
    (secrets / name).unlink()
    proc = _run("render", str(tmp_path / "out"), "--secrets", str(secrets))
    assert proc.returncode != 0
    assert f"k3s/secrets/{name}" in proc.stderr
    assert f"missing file k3s/secrets/{name}" in proc.stderr
    assert not list((tmp_path / "out").glob("overlays-*.yaml"))

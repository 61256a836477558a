"""The optional observability component (k3s/addons/observability), offline: the alerting rules pass
`promtool check rules` and their own `promtool test rules`, the Grafana dashboards parse, and every metric a
query or rule names is one the code exports (prometheus_client definitions in fleet_api/ and edge_agent/, checked
in turn against a live fleet API's /metrics)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "k3s" / "addons" / "observability"
RULES = ADDON / "edgefleet.rules.yaml"
RULE_TESTS = Path(__file__).with_name("observability-rules.test.yaml")
DASHBOARDS = sorted(ADDON.glob("*.json"))

PROMQL_WORDS = {
    # aggregations and keywords
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool", "inf", "nan",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "day_of_month", "day_of_week",
    "days_in_month", "delta", "deriv", "exp", "floor", "histogram_quantile", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate", "resets",
    "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "time", "timestamp", "vector", "year", "avg_over_time",
    "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
    "stdvar_over_time", "last_over_time", "present_over_time",
}
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}  # written by Prometheus for every target
DEFINITION = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|CounterMetricFamily|GaugeMetricFamily|HistogramMetricFamily|SummaryMetricFamily)"
    r"\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")


def series_names(kind: str, name: str) -> set[str]:
    """The sample names prometheus_client writes for a metric of this kind."""
    if kind.startswith("Counter"):
        base = name.removesuffix("_total")
        return {f"{base}_total", f"{base}_created"}
    if kind.startswith("Histogram"):
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind.startswith("Summary"):
        return {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    return {name}


def exported_by_code() -> set[str]:
    names: set[str] = set()
    for package in ("fleet_api", "edge_agent"):
        for path in (ROOT / package).rglob("*.py"):
            for kind, name in DEFINITION.findall(path.read_text()):
                names |= series_names(kind, name)
    return names


def default_registry() -> set[str]:
    """process_* and python_*: both daemons serve prometheus_client's default registry too."""
    from prometheus_client import REGISTRY

    return {s.name for m in REGISTRY.collect() for s in m.samples}


def metric_names(expr: str) -> set[str]:
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, $variables)
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    e = re.sub(r"(?<![\w:])\d+(\.\d+)?(e[+-]?\d+)?(ms|[smhdwy])?\b", "", e)  # numbers, durations
    return set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e)) - PROMQL_WORDS


def all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(all_panels(p.get("panels", [])))
    return out


def dashboard_queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            # label_values(METRIC{…}, LABEL): the metric is PromQL, the label is not
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            exprs.append(match.group(1) if match else query)
    return exprs


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def test_the_metric_name_parser_sees_what_it_must():
    assert metric_names('histogram_quantile(0.95, sum by (model, le) (rate(edgefleet_agent_inference_seconds_bucket{job="$j"}[5m])))') == {
        "edgefleet_agent_inference_seconds_bucket"}
    assert metric_names("max(edgefleet_fleet_devices_online) > 0 and sum(rate(edgefleet_api_telemetry_typo_total[10m])) == 0") == {
        "edgefleet_fleet_devices_online", "edgefleet_api_telemetry_typo_total"}
    assert metric_names("time() - max by (device) (x_seconds) > 1e3 or vector(0)") == {"x_seconds"}
    assert {"edgefleet_agent_requests_total", "edgefleet_agent_inference_seconds_bucket", "edgefleet_fleet_devices",
            "edgefleet_camera_frames_dropped_total", "edgefleet_device_online"} <= exported_by_code()


def test_dashboards_parse_and_query_only_exported_metrics():
    assert [p.name for p in DASHBOARDS] == ["agent.json", "fleet.json"]
    known = exported_by_code() | default_registry() | PROMETHEUS_OWN
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"].startswith("edgefleet")
        panels = all_panels(dashboard["panels"])
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for p in panels:
            assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
            if p["type"] != "row":
                assert p["targets"], f"{path.name}: panel {p['title']!r} has no query"
                assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
        queries = dashboard_queries(dashboard)
        assert len(queries) >= 15
        for expr in queries:
            unknown = metric_names(expr) - known
            assert not unknown, f"{path.name}: {expr!r} names metrics nothing exports: {sorted(unknown)}"


def test_rules_name_only_exported_metrics_and_cover_the_four_alerts():
    known = exported_by_code() | default_registry() | PROMETHEUS_OWN
    for expr in rule_exprs():
        unknown = metric_names(expr) - known
        assert not unknown, f"{expr!r} names metrics nothing exports: {sorted(unknown)}"
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert {"EdgefleetDeviceOffline", "EdgefleetRolloutAborted", "EdgefleetInferenceP95High", "EdgefleetTelemetrySilent"} <= alerts


def test_kustomization_ships_every_file():
    kustomization = yaml.safe_load((ADDON / "kustomization.yaml").read_text())
    shipped = {f for gen in kustomization["configMapGenerator"] for f in gen["files"]} | set(kustomization["resources"])
    assert shipped == {p.name for p in ADDON.iterdir() if p.suffix in (".json", ".yaml") and p.name != "kustomization.yaml"}


promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                              reason="promtool not installed (Debian: apt-get install prometheus); the rules' syntax is unchecked")


@promtool
def test_rules_pass_promtool_check():
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@promtool
def test_rules_fire_when_they_should(tmp_path):
    """`promtool test rules`: each alert on series that should trigger it (and its healthy twin quiet)."""
    shutil.copy(RULES, tmp_path / RULES.name)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    out = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_live_fleet_api_exports_the_names_the_rules_use(tmp_path, keys, broker):
    """The source-derived names are what a real API serves: scrape one with a device registered."""
    from demo.cluster import FleetApi

    api = FleetApi(tmp_path / "api", broker.url, keys.public_path)
    api.start()
    try:
        with api.client() as c:
            c.post("/v1/devices", json={"id": "obs-1", "labels": {}}).raise_for_status()
        text = httpx.get(f"{api.url}/metrics", timeout=10).text
    finally:
        api.stop()
    served = {line.split()[0].split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert {n for n in typed if n.startswith("edgefleet_")} <= {n.removesuffix("_total") for n in exported_by_code()} | exported_by_code()
    assert 'edgefleet_device_online{device="obs-1"} 0.0' in text
    assert 'edgefleet_rollouts{state="aborted"} 0.0' in text
    assert {"edgefleet_device_online", "edgefleet_rollouts", "edgefleet_fleet_devices_online",
            "edgefleet_api_telemetry_messages_total"} <= served

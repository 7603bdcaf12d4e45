"""The monitoring profile: Prometheus rules and config checked and unit-tested by promtool, Grafana
provisioning and dashboards, every metric they name exported by the project, every runbook present.

promtool comes from Debian's ``prometheus`` package (``apt-get install -y prometheus``; CI installs it).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from tests.deploy import compose as c

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MONITORING = c.REPO / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
PROMETHEUS = MONITORING / "prometheus.yml"
GRAFANA = MONITORING / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

# Modules that define the project's metrics (importing them registers their families), and the collectors
# registered at app start-up.
METRIC_MODULES = (
    "relays.metrics",
    "relays.runtime",
    "relays.fallback",
    "relays.fanout",
    "relays.frames_filter",
    "relays.health",
    "replicas.metrics",
    "escrow.metrics",
    "hypertuna.health_metrics",
)
# Series Prometheus makes itself, not any exporter.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "inf", "nan",
}  # fmt: skip


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install -y prometheus (Debian's package ships it)"
    return path


def run_promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name} panel {panel['id']} {target['refId']}", target["expr"]))
    return found


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (a loose parse: enough for our own expressions)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name in PROMQL_WORDS:
            continue
        names.add(name)
    return names


def exported_names() -> set[str]:
    from django_prometheus.middleware import Metrics

    for module in METRIC_MODULES:
        importlib.import_module(module)
    importlib.import_module("hypertuna.health_metrics").register_collectors()
    Metrics.get_instance()  # django-prometheus' request/response families (created by its middleware)
    return set(REGISTRY._names_to_collectors)  # every sample name, suffixes (_total, _bucket, ...) included


# ---- promtool ----------------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check():
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests():
    result = run_promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_show_every_alert_firing_and_silent():
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), f"alerts never shown firing: {sorted(names - fired)}"
    assert names - silent == set(), f"alerts never shown staying silent: {sorted(names - silent)}"


def test_a_broken_rule_fails_its_unit_test(tmp_path):
    # The unit tests can fail: the same tests against rules whose bridge alert watches the wrong component.
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text().replace('component="bridge"', 'component="bridgex"'))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    result = run_promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "BridgeDown" in result.stdout + result.stderr


def test_prometheus_config_passes_promtool_check(tmp_path):
    """The config as compose mounts it: the rule file and the secret files at their container paths."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    mounts = {"/etc/prometheus/alerts.yml": ALERTS}
    text = PROMETHEUS.read_text()
    for secret in sorted(set(re.findall(r"/run/secrets/([a-z_]+)", text))):
        placeholder = tmp_path / secret
        placeholder.write_text("placeholder\n")
        mounts[f"/run/secrets/{secret}"] = placeholder
    for container_path, host_path in mounts.items():
        text = text.replace(container_path, str(host_path))
    (tmp_path / "prometheus.yml").write_text(text)
    result = run_promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["gateway"]["static_configs"][0]["targets"] == ["web:8000"]
    assert jobs["gateway"]["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    assert jobs["escrow"]["scheme"] == "https" and jobs["escrow"]["tls_config"]["server_name"] == "escrow"


def test_dashboard_expressions_are_valid_promql(tmp_path):
    rules = [{"record": f"dashboard:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_exprs())]
    assert len(rules) > 20
    (tmp_path / "dashboards.rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    result = run_promtool("check", "rules", str(tmp_path / "dashboards.rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


# ---- every metric named is exported -------------------------------------------------------------------


def test_metric_name_parser():
    expr = 'sum by (relay) (increase(a_total{job="x",relay=~"r{1}"}[5m])) / on (le) b_bucket or vector(0) > bool 1'
    assert metric_names(expr) == {"a_total", "b_bucket"}
    assert metric_names('time() - max(c_seconds{job="escrow"}) > 7200') == {"c_seconds"}


def test_every_metric_a_rule_or_dashboard_names_is_exported():
    exported = exported_names() | PROMETHEUS_SERIES
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for where, expr in dashboard_exprs():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    assert len(used) > 20, "the parser found too few metric names"
    missing = {name: sorted(places) for name, places in used.items() if name not in exported}
    assert not missing, f"named but not exported by the project: {missing}"


def test_an_unexported_metric_is_caught():
    assert "gateway_sessions_that_do_not_exist" not in exported_names()


# ---- Grafana ----------------------------------------------------------------------------------------


def provisioned_datasource_uids() -> set[str]:
    uids = set()
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yml"):
        for source in yaml.safe_load(path.read_text())["datasources"]:
            uids.add(source["uid"])
    return uids


def test_dashboards_are_grafana_json_on_the_provisioned_datasource():
    assert {p.stem for p in DASHBOARDS} >= {"gateway", "replicas", "escrow", "fallback"}
    sources = provisioned_datasource_uids()
    assert sources == {"hypertuna-prometheus"}
    uids = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["title"] and board["uid"] and isinstance(board["schemaVersion"], int), path.name
        uids.append(board["uid"])
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in board["panels"]:
            assert panel["type"] in ("timeseries", "stat"), f"{path.name}: panel {panel['id']}"
            assert {"h", "w", "x", "y"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"][
                "w"
            ] <= 24
            assert panel["targets"], f"{path.name}: panel {panel['id']} has no query"
            for ds in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
                assert ds == {"type": "prometheus", "uid": ds["uid"]} and ds["uid"] in sources, (path.name, panel["id"])
    assert len(uids) == len(set(uids)), "dashboard uids must be unique"


def test_dashboard_provider_reads_the_mounted_folder(compose):
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "hypertuna.yml").read_text())["providers"][0]
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["grafana"]["volumes"])
    source = mounts[provider["options"]["path"]]
    assert (c.REPO / source).resolve() == (GRAFANA / "dashboards").resolve()
    assert (c.REPO / mounts["/etc/grafana/provisioning"]).resolve() == (GRAFANA / "provisioning").resolve()


# ---- runbooks ---------------------------------------------------------------------------------------


def test_every_alert_has_severity_duration_and_an_existing_runbook():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert "for" in rule, f"{rule['alert']}: no for: duration"
        runbook = rule["annotations"]["runbook_url"]
        assert re.fullmatch(r"deploy/runbooks/[a-z0-9-]+\.md", runbook), runbook
        assert (c.REPO / runbook).is_file(), f"{rule['alert']}: {runbook} does not exist"


def test_runbooks_the_issue_asks_for_exist_and_are_linked():
    readme = (c.REPO / "deploy" / "README.md").read_text()
    for name in (
        "replica-lag", "lease-stuck-or-refused", "audit-verification-failed", "key-rotation", "bridge-down",
        "redis-down", "worker-never-returns",
    ):  # fmt: skip
        text = (c.REPO / "deploy" / "runbooks" / f"{name}.md").read_text()
        for section in ("## Symptom", "## What it means", "## Confirm", "## Fix", "## Verify"):
            assert section in text, f"{name}.md lacks {section}"
        assert f"(runbooks/{name}.md)" in readme, f"deploy/README.md does not link {name}.md"


def test_runbook_commands_exist():
    """Every ``manage.py <command>`` a runbook names is a real management command."""
    from django.core.management import get_commands

    commands = get_commands()
    for path in sorted((c.REPO / "deploy" / "runbooks").glob("*.md")):
        for name in re.findall(r"manage\.py ([a-z_]+)", path.read_text()):
            assert name in commands, f"{path.name}: manage.py {name} does not exist"


# ---- compose profile --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return c.load_compose()


def test_monitoring_services_are_in_their_own_profile_with_pinned_images(compose):
    services = compose["services"]
    monitoring = {name for name, s in services.items() if "monitoring" in (s.get("profiles") or [])}
    assert monitoring == {"prometheus", "grafana"}
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", services["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", services["grafana"]["image"])
    for name in monitoring:
        assert services[name].get("restart") == "unless-stopped" and services[name].get("healthcheck"), name


def test_prometheus_reaches_the_targets_and_only_grafana_is_published_on_loopback(compose):
    services, networks = compose["services"], compose["networks"]

    def reach(a: str, b: str) -> bool:
        return bool(set(services[a].get("networks") or ["default"]) & set(services[b].get("networks") or ["default"]))

    assert reach("prometheus", "web") and reach("prometheus", "escrow") and reach("grafana", "prometheus")
    assert not reach("proxy", "prometheus") and not reach("proxy", "grafana")
    assert not reach("grafana", "web") and not reach("grafana", "escrow"), "Grafana needs only Prometheus"
    assert "ports" not in services["prometheus"]
    ports = services["grafana"]["ports"]
    assert len(ports) == 1 and ports[0].startswith("127.0.0.1:"), ports
    for name in services["prometheus"]["networks"]:
        assert networks[name].get("internal") is True, f"prometheus on non-internal network {name}"
    mounted = {s if isinstance(s, str) else s["source"] for s in services["prometheus"].get("secrets") or []}
    assert mounted == set(re.findall(r"/run/secrets/([a-z_]+)", PROMETHEUS.read_text()))

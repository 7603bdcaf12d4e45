"""Static checks of the two-node override (deploy/docker-compose.nodes.yml) and its proxy config
(deploy/proxy/Caddyfile.nodes), and ``caddy validate`` of that config when Caddy is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.deploy import compose as c

CADDYFILE = c.REPO / "deploy" / "proxy" / "Caddyfile.nodes"


@pytest.fixture(scope="module")
def compose():
    return c.load_compose()


@pytest.fixture(scope="module")
def nodes():
    return c.load_compose(c.NODES_FILE)


def test_second_node_is_web_bridge_and_events_without_celery(nodes, compose):
    services = nodes["services"]
    assert {"web2", "bridge2", "events2"} <= set(services)
    assert not any("celery" in " ".join(s.get("command", [])) for s in services.values())
    assert services["web2"]["command"] == compose["services"]["web"]["command"]
    assert services["events2"]["command"] == compose["services"]["events"]["command"]
    assert services["bridge2"]["command"] == compose["services"]["bridge"]["command"]


def test_second_node_has_its_own_bridge_state_and_socket(nodes):
    services = nodes["services"]
    assert "bridge2-data:/app/var/bridge" in services["bridge2"]["volumes"]
    for name in ("web2", "bridge2", "events2"):
        mounts = services[name]["volumes"]
        assert "bridge2-rpc:/run/hypertuna" in mounts, name
        assert not any(m.startswith(("bridge-rpc:", "bridge-data:")) for m in mounts), name


def test_only_the_replica_node_runs_a_blind_peer(nodes, compose):
    assert nodes["services"]["bridge2"]["environment"]["HYPERTUNA_BRIDGE_BLIND_PEER"] == "off"
    assert "HYPERTUNA_BRIDGE_BLIND_PEER" not in compose["services"]["bridge"].get("environment", {})


def test_second_web_node_has_its_own_escrow_certificate(nodes):
    env = nodes["services"]["web2"]["environment"]
    assert env["HYPERTUNA_ESCROW_CLIENT_CERT"] == "/run/secrets/escrow_gateway2_cert"
    assert {"escrow_gateway2_cert", "escrow_gateway2_key"} <= set(nodes["secrets"])


def test_proxy_balances_both_web_nodes_with_long_lived_socket_settings(nodes):
    assert "./deploy/proxy/Caddyfile.nodes:/etc/caddy/Caddyfile:ro" in nodes["services"]["proxy"]["volumes"]
    text = CADDYFILE.read_text()
    for needle in ("reverse_proxy web:8000 web2:8000", "lb_policy", "health_uri /ready", "flush_interval -1"):
        assert needle in text, needle
    assert "read_timeout 0" in text and "write_timeout 0" in text


def test_every_variable_is_in_env_example():
    names = c.interpolated_names(c.NODES_FILE.read_text()) | set(re.findall(r"\{\$([A-Z0-9_]+)", CADDYFILE.read_text()))
    assert not names - c.env_example_names(), sorted(names - c.env_example_names())


@pytest.mark.skipif(shutil.which("caddy") is None, reason="needs caddy (apt-get install -y caddy)")
def test_caddy_validates_the_nodes_config():
    env = {**os.environ, "HYPERTUNA_DOMAIN": "gateway.example.org", "HYPERTUNA_PROXY_TLS": "internal"}
    result = subprocess.run(
        ["caddy", "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]

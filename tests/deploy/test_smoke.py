"""Compose smoke run without a container engine: every service of docker-compose.yml is started on this
host with the command, environment, volumes, secrets and start order (depends_on) the compose file gives
it, each health check of the file must pass, the proxy's config is validated by Caddy itself, and a
client reaches a demo relay through the proxy over TLS.

What a container would provide is mapped, never invented: service host names become loopback addresses
(Postgres and Redis are the machine's, in databases of this test's own; the escrow's Redis is a private
server), container paths become folders of a temporary directory (one per named volume, one per
container for its own /app/var, secrets as files), 0.0.0.0 becomes 127.0.0.1 and fixed ports become free
ones. The bridge runs its local testnet (HYPERTUNA_SWARM_BOOTSTRAP is unset, as in the default .env).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.deploy import compose as c
from tests.nostr.factories import make_event

BUDGET_SECONDS = 90
INFRASTRUCTURE = {"postgres", "redis", "escrow-postgres", "escrow-redis"}

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class Host:
    """Maps one compose service onto this machine and runs its commands."""

    def __init__(self, tmp: Path, compose: dict[str, Any], dotenv: dict[str, str], hosts: dict[str, str]) -> None:
        self.tmp = tmp
        self.compose = compose
        self.dotenv = dotenv
        self.hosts = hosts  # compose host name -> replacement URL netloc+path template
        self.ports: dict[str, str] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    # ---- mapping -----------------------------------------------------------------------------------

    def mounts(self, name: str) -> list[tuple[str, Path]]:
        """(container path, host path), longest first: volumes, secrets, the container's own /app/var."""
        service = self.compose["services"][name]
        result: list[tuple[str, Path]] = []
        for volume in service.get("volumes") or []:
            source, target = c.interpolate(volume, self.dotenv).split(":")[:2]
            if source.startswith((".", "/")):
                host = (c.REPO / source).resolve()
            else:
                host = self.tmp / "volumes" / source
                host.mkdir(parents=True, exist_ok=True, mode=0o700)
            result.append((target, host))
        for secret in service.get("secrets") or []:
            source = secret if isinstance(secret, str) else secret["source"]
            path = c.interpolate(self.compose["secrets"][source]["file"], self.dotenv)
            result.append((f"/run/secrets/{source}", (c.REPO / path).resolve()))
        own = self.tmp / "containers" / name / "var"
        for sub in ("", "bridge", "escrow"):  # what the image creates under /app/var
            (own / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        result.append(("/app/var", own))
        result.append((c.IMAGE_ROOT, c.REPO))
        return sorted(result, key=lambda item: -len(item[0]))

    def path(self, name: str, value: str) -> str:
        for target, host in self.mounts(name):
            if value == target or value.startswith(target + "/"):
                return str(host) + value[len(target) :]
        return value

    def rewrite(self, name: str, value: str) -> str:
        """Paths, service host names, wildcard binds and fixed ports of one value."""
        words = []
        for word in value.split(" "):
            if word.startswith("/"):
                word = self.path(name, word)
            words.append(word)
        value = " ".join(words)
        if "://" in value:
            parts = urlsplit(value)
            if parts.hostname in self.hosts:
                target = urlsplit(self.hosts[parts.hostname])
                value = urlunsplit(parts._replace(netloc=target.netloc, path=target.path or parts.path))
        value = value.replace("0.0.0.0", "127.0.0.1")
        for fixed, free in self.ports.items():
            value = value.replace(f"127.0.0.1:{fixed}", f"127.0.0.1:{free}").replace(
                f"escrow:{fixed}", f"127.0.0.1:{free}"
            )
            if value == fixed:
                value = free
        return value

    def environment(self, name: str) -> dict[str, str]:
        service = self.compose["services"][name]
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.tmp / "home"),
            "HOSTNAME": socket.gethostname(),
        }
        if service.get("env_file"):
            env.update(self.dotenv)
        for key, value in c.service_env(service).items():
            env[key] = c.interpolate(value, self.dotenv)
        return {key: self.rewrite(name, value) for key, value in env.items()}

    def argv(self, name: str, argv: list[str]) -> list[str]:
        out = [self.rewrite(name, c.interpolate(a, self.dotenv)) for a in argv]
        if out and out[0] in ("python", "python3"):
            out[0] = sys.executable
        return out

    def workdir(self, name: str) -> Path:
        return Path(self.path(name, self.compose["services"][name].get("working_dir") or c.IMAGE_ROOT))

    # ---- running ----------------------------------------------------------------------------------

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        service = self.compose["services"][name]
        log = self.tmp / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        self.logs[name] = log
        env = {**self.environment(name), **(extra_env or {})}
        with open(log, "wb") as out:
            process = subprocess.Popen(
                self.argv(name, c.command_argv(service)),
                cwd=self.workdir(name),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def healthy(self, name: str, extra_env: dict[str, str] | None = None) -> bool:
        check = c.healthcheck_argv(self.compose["services"][name])
        assert check is not None, f"{name} has no health check"
        form, argv = check
        env = {**self.environment(name), **(extra_env or {})}
        if form == "CMD-SHELL":
            script = argv[0].replace("$$", "$")
            words = [self.rewrite(name, w) for w in shlex.split(script, posix=False)]
            words = [sys.executable if w in ("python", "python3") else w for w in words]
            command: list[str] | str = " ".join(words)
        else:
            command = self.argv(name, argv)
            if command[0] == "wget" and not shutil.which("wget"):
                try:
                    with urllib.request.urlopen(command[-1], timeout=5) as response:  # noqa: S310 (loopback)
                        return bool(response.status == 200)
                except OSError:
                    return False
        result = subprocess.run(
            command,
            shell=form == "CMD-SHELL",
            cwd=self.workdir(name),
            env=env,
            capture_output=True,
            timeout=30,
        )
        return result.returncode == 0

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()

    def tails(self, lines: int = 25) -> str:
        out = []
        for name, log in self.logs.items():
            text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
            out.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(out)


def _depends(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {k: (v or {}).get("condition", "service_started") for k, v in deps.items()}


def _self_signed(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


def _postgres_base() -> str:
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        base = "postgres://postgres@127.0.0.1:5432/postgres"
    return base


def _redis_base() -> tuple[str, int]:
    parts = urlsplit(os.environ.get("REDIS_URL", "") or "redis://127.0.0.1:6379/0")
    return parts.hostname or "127.0.0.1", parts.port or 6379


async def _demo_relay_roundtrip(url: str, cafile: Path) -> tuple[str, list[Any], list[Any]]:
    """Publish one event through the proxy, then read it back: its id, the OK frame, the REQ's frames
    (events shortened to their ids)."""
    import websockets

    event = make_event(content=f"smoke {secrets.token_hex(8)}", created_at=int(time.time())).to_dict()
    context = ssl.create_default_context(cafile=str(cafile))
    async with websockets.connect(url, ssl=context, open_timeout=10) as ws:

        async def until(done: Any) -> list[Any]:
            frames = []
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=15))
                frames.append(frame)
                if done(frame) or frame[0] in ("CLOSED", "NOTICE"):
                    return frames

        await ws.send(json.dumps(["EVENT", event]))
        ok = (await until(lambda f: f[0] == "OK"))[-1]
        await ws.send(json.dumps(["REQ", "smoke", {"ids": [event["id"]]}]))
        frames = await until(lambda f: f[0] == "EOSE")
    return event["id"], ok, [[*f[:2], f[2]["id"]] if f[0] == "EVENT" else f for f in frames]


def test_compose_services_run_on_the_host_and_serve_a_relay_through_the_proxy(tmp_path):
    for tool in ("node", "redis-server", "openssl"):
        if shutil.which(tool) is None:
            pytest.fail(f"the compose smoke test needs {tool} on PATH")
    if shutil.which("caddy") is None:
        pytest.skip("Caddy is not installed (apt-get install -y caddy): the proxy cannot be validated or run here")
    pg_base = _postgres_base()
    pg_parts = urlsplit(pg_base)
    if not _reachable(pg_parts.hostname or "127.0.0.1", pg_parts.port or 5432):
        pytest.skip(f"no Postgres at {pg_parts.hostname}:{pg_parts.port or 5432} for the compose smoke run")
    redis_host, redis_port = _redis_base()
    if not _reachable(redis_host, redis_port):
        pytest.skip(f"no Redis at {redis_host}:{redis_port} for the compose smoke run")
    import psycopg
    import redis

    compose = c.load_compose()
    started = time.monotonic()
    suffix = f"{os.getpid()}_{secrets.token_hex(2)}"
    databases = {"postgres": f"ht_deploy_gw_{suffix}", "escrow-postgres": f"ht_deploy_escrow_{suffix}"}
    admin = urlunsplit(pg_parts._replace(path="/postgres"))
    escrow_redis_port = free_port()
    gateway_redis = f"redis://{redis_host}:{redis_port}/12"  # this test's Redis database (CI's is 15)
    secrets_dir = tmp_path / "secrets"
    cert, key = _self_signed(tmp_path / "proxy-certs")
    dotenv = {
        "POSTGRES_PASSWORD": "unused-on-the-host",
        "ESCROW_POSTGRES_PASSWORD": "unused-on-the-host",
        "ESCROW_SECRET_KEY": secrets.token_hex(32),
        "SECRET_KEY": secrets.token_hex(32),
        "HYPERTUNA_DOMAIN": "localhost",
        "HYPERTUNA_PROXY_TLS": "/certs/fullchain.pem /certs/privkey.pem",
        "HYPERTUNA_PROXY_CERTS_DIR": str(cert.parent),
        "HYPERTUNA_SECRETS_DIR": str(secrets_dir),
        "HYPERTUNA_REGISTRATION_SECRET": secrets.token_hex(32),
        "HYPERTUNA_BRIDGE_SECRET": secrets.token_hex(32),
        "HYPERTUNA_LOG_LEVEL": "WARNING",
    }
    hosts = {
        "postgres": urlunsplit(pg_parts._replace(path=f"/{databases['postgres']}")),
        "escrow-postgres": urlunsplit(pg_parts._replace(path=f"/{databases['escrow-postgres']}")),
        "redis": gateway_redis,
        "escrow-redis": f"redis://127.0.0.1:{escrow_redis_port}/0",
    }
    host = Host(tmp_path, compose, dotenv, hosts)
    https_port = free_port()
    host.ports = {"8000": str(free_port()), "8443": str(free_port()), "8081": str(free_port())}
    host.hosts["escrow"] = f"https://127.0.0.1:{host.ports['8443']}"
    proxy_env = {
        "HYPERTUNA_PROXY_HTTP_PORT": str(free_port()),
        "HYPERTUNA_PROXY_HTTPS_PORT": str(https_port),
        "HYPERTUNA_PROXY_HEALTH_PORT": host.ports["8081"],
        "HYPERTUNA_PROXY_UPSTREAM": f"127.0.0.1:{host.ports['8000']}",
        "XDG_DATA_HOME": str(tmp_path / "caddy-data"),
        "XDG_CONFIG_HOME": str(tmp_path / "caddy-config"),
    }
    extra_env = {"proxy": proxy_env}

    escrow_redis = subprocess.Popen(
        ["redis-server", "--port", str(escrow_redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    flush = redis.Redis.from_url(gateway_redis)
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in databases.values():
                conn.execute(f'CREATE DATABASE "{name}"')
        flush.flushdb()
        # The operator's one-time steps (deploy/README.md): escrow PKI with the service's host name, a KEK.
        pki = secrets_dir / "pki"
        subprocess.run(
            [sys.executable, "manage.py", "escrow_certs", "init", "--dir", str(pki)]
            + ["--server-name", "escrow", "--server-name", "127.0.0.1"],
            cwd=c.REPO,
            env={**os.environ, "HYPERTUNA_VAR_DIR": str(tmp_path / "certs-var")},
            check=True,
            capture_output=True,
        )
        (pki / "ca-key.pem").unlink()  # kept offline in production; no service needs it
        (secrets_dir / "escrow-kek").write_text(secrets.token_hex(32))

        # The proxy's configuration, validated by the proxy itself with the compose environment.
        proxy_argv = host.argv("proxy", c.command_argv(compose["services"]["proxy"]))
        assert proxy_argv[:2] == ["caddy", "run"], proxy_argv
        validate = subprocess.run(
            ["caddy", "validate", *proxy_argv[2:]],
            env={**host.environment("proxy"), **proxy_env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert validate.returncode == 0, validate.stdout + validate.stderr

        # Start order from depends_on; health checks and completions from the compose file.
        # Services in a profile (monitoring: Prometheus and Grafana images) are not started by default.
        services = [
            n for n in compose["services"] if n not in INFRASTRUCTURE and not compose["services"][n].get("profiles")
        ]
        state = dict.fromkeys(INFRASTRUCTURE, "healthy")
        deadline = started + BUDGET_SECONDS
        while any(state.get(n) not in ("healthy", "completed") for n in services):
            assert time.monotonic() < deadline, f"services not up in time: {state}\n{host.tails()}"
            for name in services:
                deps = _depends(compose["services"][name])
                ready = all(
                    state.get(dep) == {"service_completed_successfully": "completed"}.get(cond, "healthy")
                    or (cond == "service_started" and dep in state)
                    for dep, cond in deps.items()
                )
                if name not in state and ready:
                    host.start(name, extra_env.get(name))
                    state[name] = "started"
            for name, process in host.processes.items():
                if state[name] != "started":
                    continue
                code = process.poll()
                service = compose["services"][name]
                if service.get("restart") == "no":
                    if code is not None:
                        assert code == 0, f"{name} exited {code}\n{host.tails()}"
                        state[name] = "completed"
                    continue
                assert code is None, f"{name} exited {code}\n{host.tails()}"
                if host.healthy(name, extra_env.get(name)):
                    state[name] = "healthy"
            time.sleep(0.3)

        # The bridge socket is private to the service user, and refuses a wrong secret.
        socket_path = Path(host.environment("bridge")["HYPERTUNA_BRIDGE_SOCKET"])
        assert socket_path.stat().st_mode & 0o077 == 0
        assert not host.healthy("events", {"HYPERTUNA_BRIDGE_SECRET": "wrong"})

        # A reference worker registers through the proxy over TLS and hosts a demo relay.
        bridge_env = host.environment("bridge")
        worker_log = tmp_path / "logs" / "demo-worker.log"
        worker = subprocess.Popen(
            ["node", "src/worker/main.mjs", "--bootstrap-file", bridge_env["HYPERTUNA_SWARM_BOOTSTRAP_FILE"]]
            + ["--storage", str(tmp_path / "demo-worker"), "--gateway-url", f"https://localhost:{https_port}"]
            + ["--secret", dotenv["HYPERTUNA_REGISTRATION_SECRET"], "--name", "demo", "--issue-token"],
            cwd=c.REPO / "bridge",
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path / "home"), "NODE_EXTRA_CA_CERTS": str(cert)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=open(worker_log, "wb"),  # noqa: SIM115 (closed with the process)
            start_new_session=True,
        )
        host.processes["demo-worker"] = worker
        host.logs["demo-worker"] = worker_log
        token = _wait_marker(worker, "HYPERTUNA_WORKER_TOKEN", deadline + 30, host)
        url = f"wss://localhost:{https_port}/{token['gatewayPath']}?token={token['token']}"
        event_id, ok, frames = asyncio.run(_demo_relay_roundtrip(url, cert))
        assert ok[:3] == ["OK", event_id, True], f"{ok}\n{host.tails()}"
        assert frames == [["EVENT", "smoke", event_id], ["EOSE", "smoke"]], f"{frames}\n{host.tails()}"
    finally:
        host.stop_all()
        escrow_redis.terminate()
        escrow_redis.wait(timeout=10)
        flush.flushdb()
        flush.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in databases.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _wait_marker(process: subprocess.Popen[bytes], marker: str, deadline: float, host: Host) -> dict[str, Any]:
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    buffer = b""
    while time.monotonic() < deadline:
        chunk = process.stdout.read()
        if chunk:
            buffer += chunk
            for line in buffer.decode("utf-8", "replace").splitlines():
                name, _, payload = line.partition(" ")
                if name == marker:
                    return dict(json.loads(payload))
        elif process.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"no {marker} from the demo worker\n{buffer.decode(errors='replace')}\n{host.tails()}")

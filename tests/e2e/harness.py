"""Real processes for end-to-end tests: bridge (Node), the web process (uvicorn), the bridge event consumer,
Celery and reference workers, on 127.0.0.1 only, each with a bounded start-up time and killed at teardown (each dies
with the test process however it ends: see ``tests.e2e.procs``).

The stack gets its own database (a fresh Postgres database when ``DATABASE_URL`` points at Postgres, a
temporary SQLite file otherwise) and its own Redis key prefixes, so it never touches the unit tests' data.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hypertuna.supervisor import celery_argv
from hypertuna.webserver import web_argv
from tests.e2e.nodes import Node
from tests.e2e.procs import (
    BRIDGE_DIR,
    ROOT,
    START_TIMEOUT,
    Leftover,
    Proc,
    free_port,
    listening_leftovers,
    node_available,
    spawn,
)

__all__ = [
    "BRIDGE_DIR",
    "ROOT",
    "START_TIMEOUT",
    "Leftover",
    "Node",
    "Proc",
    "Stack",
    "free_port",
    "listening_leftovers",
    "node_available",
    "spawn",
]


def _database_url(tmp: Path) -> tuple[str, Any]:
    """A fresh database for the stack; returns its URL and a cleanup callable."""
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        return f"sqlite:///{tmp / 'e2e.sqlite3'}", lambda: None
    import psycopg

    name = f"hypertuna_e2e_{os.getpid()}_{secrets.token_hex(3)}"
    parts = urlsplit(base)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return urlunsplit(parts._replace(path=f"/{name}")), drop


def _migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=180
    )


class Stack:
    """One gateway node (bridge + web + event consumer [+ celery]) and any number of workers."""

    def __init__(
        self, tmp: Path, *, celery: bool = False, escrow: bool = False, env: dict[str, str] | None = None
    ) -> None:
        self.tmp = tmp
        self.var = tmp / "var"
        self.var.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.secret = secrets.token_hex(24)
        self.procs: list[Proc] = []
        self.workers: list[Proc] = []
        self.nodes: list[Node] = []
        self._with_celery = celery
        self._with_escrow = escrow
        self.pki = self.var / "escrow" / "pki"
        self.escrow_env: dict[str, str] = {}
        db_url, self._drop_db = _database_url(tmp)
        prefix = f"e2e{os.getpid()}{secrets.token_hex(2)}"
        self.env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "HYPERTUNA_VAR_DIR": str(self.var),
            "HYPERTUNA_REGISTRATION_SECRET": self.secret,
            "SECRET_KEY": secrets.token_hex(32),
            "HYPERTUNA_BRIDGE_SOCKET": str(self.var / "bridge.sock"),
            "HYPERTUNA_SWARM_BOOTSTRAP_FILE": str(self.var / "swarm.json"),
            "HYPERTUNA_BRIDGE_STORAGE": str(self.var / "bridge"),
            "HYPERTUNA_BRIDGE_EXIT_ON_STDIN_CLOSE": "1",
            "HYPERTUNA_WORKER_EXIT_ON_STDIN_CLOSE": "1",
            "HYPERTUNA_CACHE_PREFIX": prefix,
            "HYPERTUNA_CHANNEL_PREFIX": prefix,
            "HYPERTUNA_POLL_INTERVAL_MS": "250",
            "HYPERTUNA_PEER_REQUEST_TIMEOUT": "5",
            "HYPERTUNA_BRIDGE_CONNECT_TIMEOUT_MS": "5000",
            "HYPERTUNA_BRIDGE_HEALTH_INTERVAL_MS": "2000",
            "HYPERTUNA_BRIDGE_HEALTH_TIMEOUT_MS": "2000",
            "HYPERTUNA_RATELIMIT_IP_PER_MINUTE": "0",
            "HYPERTUNA_LOG_FORMAT": "text",
            "HYPERTUNA_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        # The unit-test process may have set DJANGO_SETTINGS_MODULE-dependent variables; the stack's own
        # settings come only from the environment above.
        self.env.pop("PYTEST_CURRENT_TEST", None)

    def _spawn(self, name: str, argv: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> Proc:
        return spawn(name, argv, cwd=cwd, env=env or self.env, log_dir=self.tmp)

    def _start_escrow(self) -> None:
        """The escrow role beside the gateway: private CA, own SQLite database, mTLS listener."""
        subprocess.run(
            [sys.executable, "manage.py", "escrow_certs", "init", "--dir", str(self.pki)],
            cwd=ROOT,
            env=self.env,
            check=True,
            timeout=120,
            capture_output=True,
        )
        port = free_port()
        self.env.update(
            {
                "HYPERTUNA_ESCROW_URL": f"https://127.0.0.1:{port}",
                "HYPERTUNA_ESCROW_CA": str(self.pki / "ca.pem"),
                "HYPERTUNA_ESCROW_CLIENT_CERT": str(self.pki / "gateway.pem"),
                "HYPERTUNA_ESCROW_CLIENT_KEY": str(self.pki / "gateway-key.pem"),
            }
        )
        service = self.tmp / "escrow-service"
        service.mkdir(exist_ok=True)
        self.escrow_env = {
            **self.env,
            "HYPERTUNA_ROLE": "escrow",
            "HYPERTUNA_VAR_DIR": str(service),
            "ESCROW_DATABASE_URL": f"sqlite:///{service / 'escrow.sqlite3'}",
            "HYPERTUNA_ESCROW_PKI_DIR": str(self.pki),
            "HYPERTUNA_ESCROW_TLS_CA": str(self.pki / "ca.pem"),
            "HYPERTUNA_ESCROW_TLS_CERT": str(self.pki / "server.pem"),
            "HYPERTUNA_ESCROW_TLS_KEY": str(self.pki / "server-key.pem"),
            "HYPERTUNA_ESCROW_LISTEN_PORT": str(port),
        }
        _migrate(self.escrow_env)
        escrow = self._spawn("escrow", [sys.executable, "manage.py", "run_escrow"], env=self.escrow_env)
        self.procs.append(escrow)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return
            if escrow.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"escrow did not start; see {escrow.log_path}")
            time.sleep(0.2)

    def start(self) -> Stack:
        """Start every process; a start that fails stops what it started and drops the database (callers
        stop a stack only once ``start`` has returned it)."""
        try:
            if self._with_escrow:
                self._start_escrow()
            _migrate(self.env)
            self.start_bridge()
            self.procs.append(self._spawn("web", web_argv(sys.executable, "127.0.0.1", self.port)))
            self.procs.append(self._spawn("events", [sys.executable, "manage.py", "bridge_events"]))
            if self._with_celery:
                self.procs.append(self._spawn("celery", celery_argv(sys.executable, 1, self.var / "beat-schedule")))
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def bridge(self) -> Proc:
        return next(proc for proc in self.procs if proc.name == "bridge")

    def start_bridge(self) -> Proc:
        """Start the bridge (again, after ``kill_bridge``: same storage, socket and key, as a supervisor
        restarts it) and wait until it serves its RPC."""
        bridge = self._spawn("bridge", ["node", "src/main.mjs"], cwd=BRIDGE_DIR)
        names = [proc.name for proc in self.procs]
        if "bridge" in names:
            self.procs[names.index("bridge")] = bridge
        else:
            self.procs.append(bridge)
        bridge.wait_marker("HYPERTUNA_BRIDGE_READY")
        return bridge

    def kill_bridge(self) -> None:
        """SIGKILL the bridge's process group: no clean shutdown, no goodbye to anyone."""
        bridge = self.bridge
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bridge.process.pid, signal.SIGKILL)
        bridge.process.wait(timeout=10)

    def start_testnet(self) -> Proc:
        """A loopback DHT testnet of its own, for a stack whose bridge must restart while the workers keep
        their DHT (a bridge on ``local`` hosts the testnet and takes it down with it). Call before ``start``."""
        script = (
            "import { startLocalTestnet } from './src/swarm/bootstrap.mjs';"
            "const t = await startLocalTestnet();"
            "console.log('HYPERTUNA_TESTNET_READY ' + JSON.stringify({bootstrap: t.bootstrap}));"
            "process.stdin.on('end', () => process.exit(0)); process.stdin.resume();"
        )
        testnet = self._spawn("testnet", ["node", "--input-type=module", "-e", script], cwd=BRIDGE_DIR)
        self.procs.append(testnet)
        nodes = testnet.wait_marker("HYPERTUNA_TESTNET_READY")["bootstrap"]
        self.env["HYPERTUNA_SWARM_BOOTSTRAP"] = ",".join(f"{n['host']}:{n['port']}" for n in nodes)
        return testnet

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.process.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited early; see {proc.log_path}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.base_url}/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            time.sleep(0.2)
        raise TimeoutError(f"gateway not ready within {timeout} s; logs in {self.tmp}")

    def start_worker(self, name: str, *extra: str, storage: Path | None = None) -> Proc:
        storage = storage or self.tmp / f"worker-{name}"
        argv = [
            "node",
            "src/worker/main.mjs",
            "--bootstrap-file",
            str(self.var / "swarm.json"),
            "--storage",
            str(storage),
            "--gateway-url",
            self.base_url,
            "--secret",
            self.secret,
            "--name",
            name,
            "--register-interval-ms",
            "3000",
            "--telemetry-interval-ms",
            "5000",
            *extra,
        ]
        worker = self._spawn(f"worker-{name}", argv, cwd=BRIDGE_DIR)
        self.workers.append(worker)
        worker.wait_marker("HYPERTUNA_WORKER_READY")
        return worker

    def add_node(self, name: str, env: dict[str, str] | None = None) -> Node:
        """Start one more gateway node (bridge, web, events) on this stack's database, Redis and testnet
        (``start_testnet`` before ``start``); ``env`` adds to the stack's environment."""
        node = Node(self, name, env)
        self.nodes.append(node)
        return node.start()

    def stop(self) -> None:
        for proc in reversed(self.workers):
            proc.stop()
        for node in reversed(self.nodes):
            node.stop()
        for proc in reversed(self.procs):
            proc.stop()
        with contextlib.suppress(Exception):
            self._drop_db()

    def manage(
        self, *argv: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """A management command in the stack's environment (or ``env``, e.g. the escrow role's ``escrow_env``)."""
        return subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=ROOT,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def operator_get(self, path: str, operator: tuple[str, str]) -> dict[str, Any]:
        """GET an operator API ``path`` (a ``?query`` included), signed as ``operator`` (key id, secret)."""
        from hypertuna import reqsign

        bare, _, query = path.partition("?")
        header = reqsign.sign("GET", bare, query=query, kid=operator[0], secret=operator[1])
        request = urllib.request.Request(self.base_url + path, headers={reqsign.HEADER: header})
        with urllib.request.urlopen(request, timeout=15) as response:
            return json.loads(response.read())

    def token_api(self, operation: str, payload: dict[str, Any], *, base_url: str | None = None) -> dict[str, Any]:
        """POST ``payload``, signed with the registration secret, to ``/api/relay-tokens/<operation>`` of this
        stack (or of the node at ``base_url``)."""
        from tests.conftest import signed_payload

        request = urllib.request.Request(
            f"{base_url or self.base_url}/api/relay-tokens/{operation}",
            data=json.dumps(signed_payload(payload, self.secret)).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for proc in self.procs + [p for node in self.nodes for p in node.procs] + self.workers:
            with contextlib.suppress(OSError):
                text = proc.log_path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {proc.name} ---\n" + "\n".join(text))
        return "\n".join(parts)

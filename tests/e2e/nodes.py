"""A further gateway node of an end-to-end :class:`~tests.e2e.harness.Stack`: its own bridge (own socket,
storage and swarm key, on the stack's DHT testnet), uvicorn and bridge event consumer, sharing the stack's
database, Redis (cache and channel layer prefixes), registration secret and Celery. No Celery of its own:
one Celery per deployment runs beside the replica node's bridge (``deploy/README.md``, "Several nodes")."""

from __future__ import annotations

import contextlib
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from hypertuna.webserver import web_argv
from tests.e2e.procs import BRIDGE_DIR, ROOT, START_TIMEOUT, Proc, free_port, spawn

if TYPE_CHECKING:
    from tests.e2e.harness import Stack


class Node:
    """Bridge + web + events of one more gateway node; ``env`` adds to (or overrides) the stack's."""

    def __init__(self, stack: Stack, name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.tmp = stack.tmp / name
        self.var = self.tmp / "var"
        self.var.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.procs: list[Proc] = []
        self.env = {
            **stack.env,
            "HYPERTUNA_VAR_DIR": str(self.var),
            "HYPERTUNA_BRIDGE_SOCKET": str(self.var / "bridge.sock"),
            "HYPERTUNA_SWARM_BOOTSTRAP_FILE": str(self.var / "swarm.json"),
            "HYPERTUNA_BRIDGE_STORAGE": str(self.var / "bridge"),
            **(env or {}),
        }

    def _spawn(self, name: str, argv: list[str], cwd: Path = ROOT) -> Proc:
        proc = spawn(f"{self.name}-{name}", argv, cwd=cwd, env=self.env, log_dir=self.tmp)
        self.procs.append(proc)
        return proc

    def start(self) -> Node:
        if "HYPERTUNA_SWARM_BOOTSTRAP" not in self.env:
            raise RuntimeError("a second node needs the stack's own testnet: call stack.start_testnet() first")
        self._spawn("bridge", ["node", "src/main.mjs"], cwd=BRIDGE_DIR).wait_marker("HYPERTUNA_BRIDGE_READY")
        self._spawn("web", web_argv(sys.executable, "127.0.0.1", self.port))
        self._spawn("events", [sys.executable, "manage.py", "bridge_events"])
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.process.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited early; see {proc.log_path}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.base_url}/ready", timeout=2) as answer:
                if answer.status == 200:
                    return self
            time.sleep(0.2)
        raise TimeoutError(f"node {self.name} not ready within {START_TIMEOUT} s; logs in {self.tmp}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

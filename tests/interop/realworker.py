"""The published Hyperpipe worker runtime as a process of the interop suite.

``interop/worker.mjs`` runs the runtime's real modules behind this gateway; ``interop/guard.cjs`` (loaded with
``--require``) keeps every swarm on the stack's loopback testnet and reports any attempt to reach another
address as a ``HYPERTUNA_INTEROP_VIOLATION`` marker, and an unhandled rejection (which kills a real worker)
as ``HYPERTUNA_INTEROP_FATAL``. Both fail the test that owns the worker.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

from tests.e2e.harness import ROOT, Proc, Stack

INTEROP_DIR = ROOT / "interop"
RUNTIME_PACKAGE = INTEROP_DIR / "node_modules" / "@squip" / "hyperpipe-core" / "package.json"
FAILURE_MARKERS = ("HYPERTUNA_INTEROP_VIOLATION", "HYPERTUNA_INTEROP_FATAL")


def runtime_version() -> str | None:
    """The installed worker runtime's version, or None when ``npm ci`` has not run in ``interop/``."""
    if shutil.which("node") is None or not RUNTIME_PACKAGE.is_file():
        return None
    return str(json.loads(RUNTIME_PACKAGE.read_text())["version"])


class RealWorker:
    """One worker runtime process hosting one relay; restartable on the same storage (same identity)."""

    _ids = itertools.count(1)

    def __init__(
        self,
        stack: Stack,
        name: str,
        *,
        owner_secret: str,
        register_as: str = "hex",
        mirror: bool = True,
        register_interval_ms: int = 3000,
    ) -> None:
        self.stack = stack
        self.name = name
        self.storage = stack.tmp / f"real-worker-{name}"
        self.config = {
            "storage": str(self.storage),
            "gatewayUrl": stack.base_url,
            "secret": stack.secret,
            "name": name,
            "nostrSecretKey": owner_secret,
            "registerAs": register_as,
            "mirror": mirror,
            "registerIntervalMs": register_interval_ms,
        }
        self.proc: Proc | None = None
        self.runs: list[Proc] = []
        self.ready: dict[str, Any] = {}

    def start(self, timeout: float = 120.0) -> dict[str, Any]:
        swarm = json.loads((self.stack.var / "swarm.json").read_text())
        config = {**self.config, "gatewayPublicKey": swarm["gatewayPublicKey"]}
        env = {
            **self.stack.env,
            "HYPERTUNA_INTEROP_BOOTSTRAP": ",".join(swarm["bootstrap"]),
            "HYPERTUNA_INTEROP_CONFIG": json.dumps(config),
        }
        run = len(self.runs) + 1
        self.proc = self.stack._spawn(
            f"real-worker-{self.name}-{run}",
            ["node", "--require", "./guard.cjs", "worker.mjs"],
            cwd=INTEROP_DIR,
            env=env,
        )
        self.runs.append(self.proc)
        self.stack.workers.append(self.proc)
        self.ready = self.proc.wait_marker("HYPERTUNA_INTEROP_READY", timeout)
        return self.ready

    def command(self, cmd: str, timeout: float = 30.0, **params: Any) -> Any:
        """Run one control command in the worker (token issue / refresh / revoke, register, unregister)."""
        assert self.proc is not None and self.proc.process.stdin is not None
        command_id = next(self._ids)
        self.proc.process.stdin.write((json.dumps({"id": command_id, "cmd": cmd, **params}) + "\n").encode())
        self.proc.process.stdin.flush()
        answer = self.proc.wait_event("HYPERTUNA_INTEROP_RESULT", lambda d: d.get("id") == command_id, timeout)
        if not answer["ok"]:
            raise RuntimeError(f"{cmd} failed in the worker: {answer['error']}")
        return answer["result"]

    def stop(self) -> None:
        """Stop the worker as its host does on quit (SIGTERM: it closes its swarm, then exits)."""
        assert self.proc is not None
        self.proc.stop(timeout=15)

    def failures(self) -> list[tuple[str, dict[str, Any]]]:
        """Network-guard violations and fatal errors of every run of this worker."""
        return [(name, data) for proc in self.runs for name, data in proc.events if name in FAILURE_MARKERS]

    def log_path(self) -> Path | None:
        return self.proc.log_path if self.proc else None

"""The real gateway serving a relay from its replica, for the replica benchmark's ``gateway_ws`` phase.

A web-server subprocess (``hypertuna.webserver.web_argv``, as ``tests/e2e/harness.py`` starts the web process)
runs ``hypertuna.asgi:application`` against the cached replica's database, so a REQ takes the path a client's
REQ takes when no worker can answer: ``RelayAuthMiddleware`` → ``RelayConsumer`` → ``GatewaySession`` (no
usable peer) → ``ReplicaFallback`` → ``relays.replica_reads.read_replica`` (the statements of
``replicas.queries`` on an async connection) → frames back through the session and the consumer.

The process is set up so that only that path is measured:

- **no bridge**: the bridge socket path names a file that does not exist, so the relay has no live worker
  and every REQ is the replica's (the session takes the bridge for away: the client gets one NOTICE saying
  so, and each REQ reaches ``ReplicaFallback`` through ``relays.bridge_outage.outage_reply`` rather than
  after an empty peer rotation — the same fallback call, without the peer loop);
- **no Redis**: without ``REDIS_URL`` the cache and the channel layer are in memory (one process, as the
  measured path needs nothing shared);
- **no rate limit reached**: none per address, and a frame budget per token no run reaches (the limiter still
  counts every frame, as in production), logs at WARNING, no escrow;
- **the relay row** the gateway had before its workers went away (:func:`ensure_offline_relay`): an open
  relay (no token) whose registration lapsed, as a worker's registration and the replica sync leave it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench import FRAME_BUDGET_PER_MINUTE
from bench.nostr_relay_server import free_port, stop_process, wait_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0


def ensure_offline_relay(relay_key: str) -> None:
    """The relay's row in the default database, as registration left it once its workers were gone: open (no
    token needed), registration lapsed (the middleware then serves it from its replica). Idempotent."""
    from django.utils import timezone

    from relays.models import Relay

    lapsed = timezone.now() - timedelta(hours=1)
    Relay.objects.update_or_create(
        relay_key=relay_key,
        defaults={
            "requires_auth": False,
            "status": Relay.Status.ACTIVE,
            "last_registered_at": lapsed - timedelta(minutes=5),
            "expires_at": lapsed,
        },
    )


def gateway_env(database_url: str, var_dir: Path) -> dict[str, str]:
    """The web process's environment: this database, no bridge, no Redis, no rate limit reached, WARNING logs."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REDIS_URL", "HYPERTUNA_ESCROW_URL", "PYTEST_CURRENT_TEST")
    }
    env.update(
        {
            "DATABASE_URL": database_url,
            "HYPERTUNA_VAR_DIR": str(var_dir),
            "SECRET_KEY": secrets.token_hex(32),
            "HYPERTUNA_BRIDGE_SOCKET": str(var_dir / "no-bridge.sock"),
            "HYPERTUNA_BRIDGE_REQUIRED": "false",
            "HYPERTUNA_RATELIMIT_IP_PER_MINUTE": "0",
            "HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE": FRAME_BUDGET_PER_MINUTE,
            "HYPERTUNA_LOG_LEVEL": "WARNING",
            "HYPERTUNA_LOG_FORMAT": "text",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass(frozen=True)
class Gateway:
    port: int
    pid: int
    log_path: Path

    def relay_url(self, relay_key: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{relay_key}"


@contextmanager
def gateway_server(database_url: str) -> Iterator[Gateway]:
    """A web process (uvicorn) serving the gateway on a free loopback port, stopped on exit. Its output goes to
    a log file under a temporary folder (named in the error when it does not start)."""
    from hypertuna.webserver import web_argv

    with tempfile.TemporaryDirectory(prefix="replica-gateway-") as tmp:
        var_dir = Path(tmp)
        log_path = var_dir / "web.log"
        port = free_port()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                web_argv(sys.executable, "127.0.0.1", port),
                env=gateway_env(database_url, var_dir),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )
        try:
            try:
                wait_port(port, START_TIMEOUT_S)
            except TimeoutError:
                raise RuntimeError(f"the gateway did not start: {log_path.read_text()[-2000:]}") from None
            yield Gateway(port=port, pid=proc.pid, log_path=log_path)
        finally:
            stop_process(proc)


def py_spy() -> str | None:
    """The py-spy executable, on PATH or beside this interpreter (a diagnosis tool, not a dependency)."""
    import shutil

    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


@contextmanager
def profiled(pid: int, output: Path) -> Iterator[None]:
    """py-spy samples process ``pid`` (every thread, raw collapsed stacks into ``output``) while the block
    runs."""
    import signal

    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    proc = subprocess.Popen(
        [exe, "record", "-p", str(pid), "--format", "raw", "-o", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield
    finally:
        # py-spy writes what it sampled when interrupted, as on Ctrl-C.
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not output.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")


# Innermost frames of a thread that waits: the event loop in epoll, a thread-pool worker on its queue. Under
# uvloop the loop's wait is C code, so such a sample's innermost Python frame is the one that entered the loop
# (``Runner.run``); uvloop's own C work is counted there too.
IDLE_FRAMES = frozenset(
    {
        "EpollSelector.select (selectors.py)",
        "_worker (concurrent/futures/thread.py)",
        "Runner.run (asyncio/runners.py)",
    }
)
# The project's own code, for the inclusive ranking (library frames would be led by the loop's own).
PROJECT_PACKAGES = ("relays/", "replicas/", "hypertuna/")


def hot_spots(profile: Path, top: int = 15) -> dict[str, Any]:
    """Where a py-spy raw profile's busy samples went (a sample whose innermost frame waits is idle):
    ``self``, the innermost frames, and ``project``, the project's functions anywhere on the stack, each as
    (``function (file)``, share of the busy samples in %), with ``idle`` the share of all samples that waited."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = busy = 0
    for line in profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        # A frame reads "function (path:line)"; the line is dropped so one function is one entry.
        frames = [frame.rsplit(":", 1)[0] + ")" if frame.endswith(")") else frame for frame in stack.split(";")]
        if frames[-1] in IDLE_FRAMES:
            continue
        busy += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            if any(f"({package}" in frame for package in PROJECT_PACKAGES):
                total[frame] = total.get(frame, 0) + count

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        best = sorted(counts.items(), key=lambda item: item[1], reverse=True)[:top]
        return [(frame, round(100 * n / busy, 1)) for frame, n in best]

    return {
        "samples": samples,
        "idle": round(100 * (samples - busy) / samples, 1) if samples else None,
        "self": ranked(own) if busy else [],
        "project": ranked(total) if busy else [],
    }

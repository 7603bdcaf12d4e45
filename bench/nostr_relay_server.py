"""The comparison relay: PyPI ``nostr-relay`` on its default SQLite storage, loaded with the replica
benchmark's events through its own ``load`` command and served by uvicorn on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nostr_relay_config(folder: Path, port: int) -> Path:
    import yaml

    config = {
        "DEBUG": False,
        "relay_name": "bench",
        "storage": {
            "sqlalchemy.url": f"sqlite+aiosqlite:///{folder / 'nostr.sqlite3'}",
            "num_concurrent_reqs": 10,
            "num_concurrent_adds": 2,
            # Same checks as the replica: structure and signature (not the clock window).
            "validators": ["nostr_relay.validators.is_not_too_large", "nostr_relay.validators.is_signed"],
        },
        "verification": {"nip05_verification": "disabled", "expiration": 86400 * 30, "update_frequency": 3600},
        "gunicorn": {"bind": f"127.0.0.1:{port}", "workers": 1, "loglevel": "warning", "reload": False},
        "authentication": {"enabled": False, "valid_urls": [], "actions": {"save": "a", "query": "a"}},
        "message_timeout": 1800,
        "subscription_limit": 64,
        "max_limit": 6000,
        "hellthread_limit": 100,
        "logging": {"version": 1, "disable_existing_loggers": False, "loggers": {"nostr_relay": {"level": "WARNING"}}},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


_NR_PREPARE = """
import sys, os
from nostr_relay.config import Config
Config.load(sys.argv[1])
from alembic import config
import nostr_relay
config.main([f"-c{os.path.join(os.path.dirname(nostr_relay.__file__), 'alembic.ini')}", "upgrade", "head"])
"""


def start_nostr_relay(
    folder: Path, events_file: Path, count: int, port: int, timeout_s: float
) -> tuple[subprocess.Popen[bytes], float]:
    """Start nostr-relay on ``folder``'s store; returns the process and its load rate (events/s).

    The first time, its schema is created and the events are loaded with its ``load`` command (timed);
    ``folder/loaded.json`` then records the rate and later runs reuse the loaded store."""
    folder.mkdir(parents=True, exist_ok=True)
    config = _nostr_relay_config(folder, port)
    marker = folder / "loaded.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if marker.exists():
        rate = float(json.loads(marker.read_text())["load_events_per_s"])
    else:
        (folder / "nostr.sqlite3").unlink(missing_ok=True)
        # Only this interpreter with arguments built here (no outside input) is executed.
        subprocess.run(
            [sys.executable, "-c", _NR_PREPARE, str(config)],
            check=True,
            env=env,
            cwd=folder,
            capture_output=True,
            timeout=120,
        )
        started = time.perf_counter()
        with events_file.open("rb") as stdin:
            # nostr_relay.cli has no __main__ guard: call its click group the way its console script does.
            subprocess.run(
                [sys.executable, "-c", "from nostr_relay.cli import main; main()", "-c", str(config), "load"],
                stdin=stdin,
                check=True,
                env=env,
                cwd=folder,
                capture_output=True,
                timeout=timeout_s,
            )
        rate = count / (time.perf_counter() - started)
        marker.write_text(json.dumps({"load_events_per_s": round(rate)}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from nostr_relay.config import Config; Config.load({str(config)!r}); "
            "from nostr_relay.web import run_with_uvicorn; run_with_uvicorn()",
        ],
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc, rate


def wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

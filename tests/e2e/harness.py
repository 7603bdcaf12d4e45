"""Real processes for end-to-end tests: bridge (Node), Daphne, the bridge event consumer, Celery and
reference workers, on 127.0.0.1 only, each with a bounded start-up time and killed at teardown.

Each process leads its own process group and dies with the test process even when that is killed
(SIGTERM, SIGKILL) and no teardown runs: the leader gets SIGKILL from the kernel when its spawning thread
dies (``PR_SET_PDEATHSIG``), and a small reaper process, which learns every group as it is spawned, kills the
whole groups (children of the leaders too) once the test process is gone. ``listening_leftovers`` finds
processes of a run still listening after it.

The stack gets its own database (a fresh Postgres database when ``DATABASE_URL`` points at Postgres, a
temporary SQLite file otherwise) and its own Redis key prefixes, so it never touches the unit tests' data.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
BRIDGE_DIR = ROOT / "bridge"
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PR_SET_PDEATHSIG = 1

# The reaper: reads "+<pgid>" / "-<pgid>" lines from a pipe only this process writes; at end of file (this
# process is gone, however it died) it sends SIGTERM to every group still registered, then SIGKILL.
_REAPER_SCRIPT = """
import os, signal, sys, time
groups, buffer = set(), b""
with os.fdopen(int(sys.argv[1]), "rb", buffering=0) as pipe:
    while chunk := pipe.read(4096):
        buffer += chunk
        *lines, buffer = buffer.split(b"\\n")
        for line in lines:
            (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))

def alive(group):
    try:
        os.killpg(group, 0)
        return True
    except OSError:
        return False

for group in groups:
    if alive(group):
        os.killpg(group, signal.SIGTERM)
deadline = time.monotonic() + 3
while any(alive(group) for group in groups) and time.monotonic() < deadline:
    time.sleep(0.05)
for group in groups:
    if alive(group):
        os.killpg(group, signal.SIGKILL)
"""
_reaper_lock = threading.Lock()
_reaper_pipe: dict[int, int] = {}  # owner pid -> write end (a forked child must not reuse its parent's)
_reapers: list[subprocess.Popen[bytes]] = []  # kept, so no "still running" warning when one is collected


def _reaper_write(line: str) -> None:
    with _reaper_lock:
        fd = _reaper_pipe.get(os.getpid())
        if fd is None:
            read_end, fd = os.pipe()  # both ends close-on-exec: only the reaper gets the read end
            reaper = subprocess.Popen(
                [sys.executable, "-c", _REAPER_SCRIPT, str(read_end)],
                pass_fds=(read_end,),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C at the terminal must not stop it before the others
            )
            os.close(read_end)
            _reapers.append(reaper)
            _reaper_pipe[os.getpid()] = fd
        try:
            os.write(fd, f"{line}\n".encode())
        except BrokenPipeError:  # the reaper is gone (killed from outside): the next spawn starts another
            os.close(fd)
            del _reaper_pipe[os.getpid()]
            if line.startswith("+"):
                raise


def _dies_with_spawning_thread(parent_pid: int | None) -> Any:
    """``preexec_fn``: SIGKILL when the spawning thread dies (Linux), exit at once if it already has."""

    def preexec() -> None:
        if parent_pid is None:
            return
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def spawn(
    name: str, argv: list[str], *, cwd: Path, env: dict[str, str], log_dir: Path, stdin: Any = subprocess.PIPE
) -> Proc:
    """Start ``argv`` as the leader of a new process group tied to this process (see the module doc)."""
    # The parent-death signal follows the spawning *thread*: from a short-lived thread it would kill the
    # process when that thread ends, so only processes spawned on the main thread get it (the reaper
    # covers every process either way).
    on_main_thread = threading.current_thread() is threading.main_thread() and sys.platform.startswith("linux")
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_dies_with_spawning_thread(os.getpid() if on_main_thread else None),
    )
    _reaper_write(f"+{process.pid}")
    proc = Proc(name, process, log_dir / f"{name}.log")
    threading.Thread(target=proc.pump, daemon=True).start()
    return proc


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    markers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Every marker in arrival order (``markers`` keeps only the latest of each name).
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def pump(self) -> None:
        assert self.process.stdout is not None
        with self.log_path.open("ab") as log:
            for raw in self.process.stdout:
                log.write(raw)
                log.flush()
                marker, _, payload = raw.decode("utf-8", "replace").strip().partition(" ")
                if marker.startswith("HYPERTUNA_") and payload.startswith("{"):
                    with contextlib.suppress(ValueError), self._lock:
                        data = json.loads(payload)
                        self.markers[marker] = data
                        self.events.append((marker, data))

    def wait_marker(self, marker: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if marker in self.markers:
                    return self.markers[marker]
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} printed no {marker} within {timeout} s; see {self.log_path}")

    def wait_event(self, marker: str, predicate: Any = None, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """The first ``marker`` whose payload satisfies ``predicate``, waiting for it if needed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for name, data in self.events:
                    if name == marker and (predicate is None or predicate(data)):
                        return data
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} printed no matching {marker} within {timeout} s; see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        # The group may outlive its leader (children it started): kill what is left, then forget it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        _reaper_write(f"-{self.process.pid}")


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
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=self.escrow_env,
            check=True,
            timeout=180,
        )
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
        if self._with_escrow:
            self._start_escrow()
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=self.env,
            check=True,
            timeout=180,
        )
        bridge = self._spawn("bridge", ["node", "src/main.mjs"], cwd=BRIDGE_DIR)
        self.procs.append(bridge)
        bridge.wait_marker("HYPERTUNA_BRIDGE_READY")
        self.procs.append(
            self._spawn(
                "web",
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "hypertuna.asgi:application"],
            )
        )
        self.procs.append(self._spawn("events", [sys.executable, "manage.py", "bridge_events"]))
        if self._with_celery:
            self.procs.append(
                self._spawn(
                    "celery",
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "hypertuna.celery",
                        "worker",
                        "-B",
                        "--concurrency",
                        "1",
                        "--loglevel",
                        "INFO",
                        "-s",
                        str(self.var / "beat-schedule"),
                    ],
                )
            )
        self.wait_ready()
        return self

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

    def stop(self) -> None:
        for proc in reversed(self.workers + self.procs):
            proc.stop()
        with contextlib.suppress(Exception):
            self._drop_db()

    def operator_get(self, path: str, operator: tuple[str, str]) -> dict[str, Any]:
        """GET an operator API ``path`` (a ``?query`` included), signed as ``operator`` (key id, secret)."""
        from hypertuna import reqsign

        bare, _, query = path.partition("?")
        header = reqsign.sign("GET", bare, query=query, kid=operator[0], secret=operator[1])
        request = urllib.request.Request(self.base_url + path, headers={reqsign.HEADER: header})
        with urllib.request.urlopen(request, timeout=15) as response:
            return json.loads(response.read())

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for proc in self.procs + self.workers:
            with contextlib.suppress(OSError):
                text = proc.log_path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {proc.name} ---\n" + "\n".join(text))
        return "\n".join(parts)


def _listening_sockets() -> dict[str, str]:
    """Inode -> address of every listening TCP and Unix socket of this network namespace."""
    found: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    found[fields[9]] = f"{table} port {int(fields[1].rsplit(':', 1)[1], 16)}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON: a listening Unix socket
                found[fields[6]] = f"unix {fields[7] if len(fields) > 7 else '(anonymous)'}"
    return found


def _proc_text(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _descends_from(pid: int, ancestor: int) -> bool:
    for _ in range(64):
        stat = _proc_text(pid, "stat")
        if not stat:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


@dataclass
class Leftover:
    pid: int
    command: str
    listening: list[str]


def listening_leftovers(markers: list[str], root_pid: int | None = None) -> list[Leftover]:
    """Processes still listening that belong to a run: descendants of ``root_pid`` (not itself), or whose
    command line or environment names one of ``markers`` (the run's temporary directories)."""
    sockets = _listening_sockets()
    leftovers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), root_pid):
            continue
        pid = int(entry.name)
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        listening = [sockets[link[8:-1]] for link in links if link.startswith("socket:[") and link[8:-1] in sockets]
        if not listening:
            continue
        command = _proc_text(pid, "cmdline").strip()
        text = command + " " + _proc_text(pid, "environ")
        if any(marker in text for marker in markers) or (root_pid is not None and _descends_from(pid, root_pid)):
            leftovers.append(Leftover(pid, command, listening))
    return leftovers


def node_available() -> bool:
    return shutil.which("node") is not None and (BRIDGE_DIR / "node_modules").is_dir()

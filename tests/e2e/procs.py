"""Processes of end-to-end tests: each leads its own process group and dies with the test process even when
that is killed (SIGTERM, SIGKILL) and no teardown runs: the leader gets SIGKILL from the kernel when its
spawning thread dies (``PR_SET_PDEATHSIG``), and a small reaper process, which learns every group as it is
spawned, kills the whole groups (children of the leaders too) once the test process is gone.
``listening_leftovers`` finds processes of a run still listening after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

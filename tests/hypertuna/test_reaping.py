"""Processes the test harness starts die with the test process, however it dies.

A "holder" subprocess plays pytest: it starts listening processes with ``tests.e2e.harness.spawn`` (one
from its main thread, one from a short-lived thread), each of which forks a listening child of its own, as
Celery's pool or a shell would. The holder is then killed with no chance to tear down: every one of those
processes must be gone within seconds, and the leftover-listener check must see them before and not after.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, listening_leftovers, spawn

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux (/proc, prctl)")

LISTENER = """
import os, socket, sys, time
from pathlib import Path
def listen_and_report():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    Path(sys.argv[1], str(os.getpid())).write_text(str(server.getsockname()[1]))
    return server
if os.fork() == 0:
    child = listen_and_report()
    time.sleep(600)
    os._exit(0)
leader = listen_and_report()
time.sleep(600)
"""

HOLDER = """
import os, sys, threading, time
from pathlib import Path
from tests.e2e.harness import ROOT, spawn
run = Path(sys.argv[1])
pids = run / "pids"
env = {**os.environ, "HT_REAPING_RUN": str(run)}
argv = [sys.executable, "-c", sys.argv[2], str(pids)]
main = spawn("main-thread", argv, cwd=ROOT, env=env, log_dir=run)
thread = threading.Thread(target=spawn, args=("other-thread", argv), kwargs={"cwd": ROOT, "env": env, "log_dir": run})
thread.start()
thread.join()
(run / "main-leader").write_text(str(main.process.pid))
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _reaper_of(holder: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
                if int(stat.rsplit(")", 1)[1].split()[1]) == holder and b"os.fdopen" in cmdline:
                    return int(entry.name)
    raise AssertionError("the harness started no reaper")


def _start_holder(run: Path) -> tuple[subprocess.Popen[bytes], dict[int, int]]:
    (run / "pids").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), LISTENER], cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 30
    while len(list((run / "pids").iterdir())) < 4 or not (run / "main-leader").exists():
        assert holder.poll() is None, "the holder exited early"
        assert time.monotonic() < deadline, "the holder's processes did not start"
        time.sleep(0.05)
    time.sleep(0.1)  # the port files are written just before listen() returns to sleep
    ports = {int(path.name): int(path.read_text()) for path in (run / "pids").iterdir()}
    return holder, ports


def _kill_all(holder: subprocess.Popen[bytes], pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        holder.kill()
    holder.wait(timeout=10)


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_harness_processes_and_their_children_die_with_the_test_process(tmp_path, sig):
    holder, ports = _start_holder(tmp_path)
    pids = list(ports)
    try:
        assert all(_listening(port) for port in ports.values())
        found = {leftover.pid for leftover in listening_leftovers([f"{tmp_path}{os.sep}"])}
        assert found == set(pids), "the leftover check must see every listening process of the run"

        holder.send_signal(sig)
        holder.wait(timeout=10)
        assert _wait_gone(pids) == [], "processes outlived the test process"
        assert not any(_listening(port) for port in ports.values())
        assert listening_leftovers([f"{tmp_path}{os.sep}"]) == []
    finally:
        _kill_all(holder, pids)


def test_main_thread_processes_die_with_the_test_process_even_without_the_reaper(tmp_path):
    """The parent-death signal alone stops a group leader started on the main thread."""
    holder, ports = _start_holder(tmp_path)
    pids = list(ports)
    try:
        leader = int((tmp_path / "main-leader").read_text())
        assert leader in pids
        reaper = _reaper_of(holder.pid)
        os.kill(reaper, signal.SIGKILL)
        assert _wait_gone([reaper]) == []
        holder.kill()
        holder.wait(timeout=10)
        assert _wait_gone([leader]) == [], "the main-thread leader outlived the test process"
    finally:
        _kill_all(holder, pids)


def test_stopping_a_process_kills_the_children_it_left_in_its_group(tmp_path):
    """The leader exited on its own, its child did not: stopping the process kills what is left of its group."""
    (tmp_path / "pids").mkdir()
    orphaning = LISTENER.replace("leader = listen_and_report()\ntime.sleep(600)", "listen_and_report()\nos._exit(0)")
    assert orphaning != LISTENER
    proc = spawn(
        "leader",
        [sys.executable, "-c", orphaning, str(tmp_path / "pids")],
        cwd=ROOT,
        env=dict(os.environ),
        log_dir=tmp_path,
    )
    deadline = time.monotonic() + 20
    while len(list((tmp_path / "pids").iterdir())) < 2 or proc.process.poll() is None:
        assert time.monotonic() < deadline, "the listener did not start"
        time.sleep(0.05)
    pids = [int(path.name) for path in (tmp_path / "pids").iterdir()]
    child = [pid for pid in pids if pid != proc.process.pid]
    try:
        assert len(child) == 1 and _alive(child[0])
        proc.stop()
        assert _wait_gone(child, timeout=5) == []
    finally:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

"""``make run``'s supervisor with small fake members (scripts), a fake clock, and its secret handling."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hypertuna import supervisor
from hypertuna.firstrun import ensure_operator
from hypertuna.supervisor import GIVE_UP_AFTER, Member, Supervisor, demo_member, stop_all

CRASH = [sys.executable, "-c", "import sys; sys.exit(3)"]
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(supervisor.time, "monotonic", fake)
    return fake


@pytest.fixture
def members():
    started: list[Member] = []
    yield started
    stop_all(started)


def start(members, member):
    member.start(dict(os.environ))
    members.append(member)
    return member


def wait_exit(member):
    assert member.process is not None
    member.process.wait(timeout=10)


def test_a_crashed_member_is_restarted_with_doubling_backoff_then_given_up_loudly(clock, members, capsys):
    crasher = start(members, Member("crasher", CRASH))
    group = Supervisor(members, clock=clock)
    delays = []
    for _ in range(GIVE_UP_AFTER - 1):
        wait_exit(crasher)
        first_pid = crasher.process.pid
        assert group.tick() is None
        assert crasher.restart_at is not None
        delays.append(crasher.restart_at - clock.now)
        clock.now = crasher.restart_at - 0.01
        assert group.tick() is None and crasher.process.pid == first_pid  # not before its backoff
        clock.now = crasher.restart_at
        assert group.tick() is None and crasher.process.pid != first_pid  # restarted
    assert delays == [1.0, 2.0, 4.0, 8.0][: GIVE_UP_AFTER - 1]
    wait_exit(crasher)
    assert group.tick() == 3
    assert "GIVING UP: crasher exited with 3" in capsys.readouterr().out


def test_a_member_that_ran_stable_starts_its_crash_count_again(clock, members):
    crasher = start(members, Member("crasher", CRASH))
    group = Supervisor(members, clock=clock)
    for _ in range(GIVE_UP_AFTER * 2):
        wait_exit(crasher)
        clock.now += supervisor.STABLE_SECONDS  # it "ran" a minute before crashing
        assert group.tick() is None
        assert crasher.crashes == 1
        clock.now = crasher.restart_at
        group.tick()


def test_the_demo_workers_exit_does_not_stop_the_gateway(clock, members, capsys):
    web = start(members, Member("web", SLEEP))
    demo = start(members, Member("demo-worker", CRASH, on_exit="report"))
    group = Supervisor(members, clock=clock)
    wait_exit(demo)
    for _ in range(3):
        assert group.tick() is None
        clock.now += 100
    assert demo.gone and demo.restart_at is None
    assert web.process.poll() is None
    assert "demo-worker exited with 3; not restarted" in capsys.readouterr().out


def test_a_follower_restarts_with_the_member_it_follows(clock, members):
    bridge = start(members, Member("bridge", CRASH))
    worker = start(members, Member("demo-worker", SLEEP, on_exit="report", follows="bridge"))
    other = start(members, Member("web", SLEEP))
    worker_pid, other_pid = worker.process.pid, other.process.pid
    group = Supervisor(members, clock=clock)
    wait_exit(bridge)
    group.tick()
    clock.now = bridge.restart_at
    group.tick()
    assert worker.process.pid != worker_pid and worker.process.poll() is None
    assert other.process.pid == other_pid


def test_the_demo_worker_gets_the_registration_secret_in_its_environment_not_its_command_line(tmp_path):
    env = {
        "HYPERTUNA_REGISTRATION_SECRET": "s3cret-value",
        "HYPERTUNA_SWARM_BOOTSTRAP_FILE": "x",
        "HYPERTUNA_ESCROW_URL": "https://e",
    }
    member = demo_member(env, tmp_path, "http://127.0.0.1:1")
    assert not any("s3cret-value" in arg for arg in member.argv)
    assert "--secret" not in member.argv
    assert member.env is not None and member.env["HYPERTUNA_WORKER_SECRET"] == "s3cret-value"
    assert member.on_exit == "report" and member.follows == "bridge"


def test_the_worker_reads_its_secret_from_that_variable():
    main = (Path(supervisor.BASE_DIR) / "bridge" / "src" / "worker" / "main.mjs").read_text()
    assert "env.HYPERTUNA_WORKER_SECRET" in main


def test_the_operator_password_is_returned_once_at_creation_and_kept_0600(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "hypertuna.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "HYPERTUNA_VAR_DIR": str(tmp_path),
    }
    env.pop("REDIS_URL", None)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], env=env, cwd=supervisor.BASE_DIR, check=True
    )
    first = ensure_operator(env, tmp_path)
    assert first
    password_file = tmp_path / "admin-password"
    assert password_file.read_text().strip() == first
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert ensure_operator(env, tmp_path) is None  # later starts do not print it again


def test_a_member_others_talk_to_is_stopped_after_they_have_exited(tmp_path, members):
    """Each member writes when it got SIGTERM; the others take a moment to exit. The bridge's line comes after
    every other member has exited, not beside theirs."""
    journal = tmp_path / "journal"

    def member(name: str, linger: float, **options: object) -> Member:
        script = (
            "import signal, sys, time\n"
            f"def stop(*_):\n"
            f"    open({str(journal)!r}, 'a').write('{name} got SIGTERM\\n')\n"
            f"    time.sleep({linger})\n"
            f"    open({str(journal)!r}, 'a').write('{name} exited\\n')\n"
            "    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, stop)\n"
            f"open({str(journal)!r}, 'a').write('{name} ready\\n')\n"
            "time.sleep(60)\n"
        )
        return Member(name, [sys.executable, "-c", script], **options)  # type: ignore[arg-type]

    group = [member("bridge", 0.0, stops_last=True), member("web", 0.5), member("events", 0.3)]
    for m in group:
        start(members, m)
    deadline = time.monotonic() + 30
    while not journal.exists() or journal.read_text().count(" ready") < len(group):  # handlers in place
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stop_all(group)
    lines = journal.read_text().splitlines()
    assert lines.index("bridge got SIGTERM") > max(lines.index("web exited"), lines.index("events exited")), lines
    assert all(m.process is not None and m.process.poll() is not None for m in group)

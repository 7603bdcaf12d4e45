"""``make run``'s console: member output goes to ``var/log/<member>.log``, the terminal shows the banner and one
line per notable event, Enter reprints the banner, and the demo worker is stopped and started on request
(``make demo-worker-stop`` / ``-start``) without counting as a crash. The last test runs the real
``python -m hypertuna.supervisor`` on a terminal and publishes to the open demo relay with a key of its own."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import websockets
from coincurve import PrivateKey

from hypertuna import console as console_module
from hypertuna import supervisor
from hypertuna.console import (
    Console,
    ControlServer,
    LogFile,
    WorkerPresence,
    control_socket_path,
    notable,
    send_command,
)
from hypertuna.nostr import sign_event
from hypertuna.supervisor import Member, Supervisor, stop_all
from tests.e2e.procs import free_port, spawn
from tests.hypertuna.test_supervisor import Clock

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]
# What the members print while idle or starting: none of it belongs on the console.
CHATTER = [
    " -------------- celery@vm v5.7.0 (collider)",
    "- ** ---------- .> transport:   filesystem://:**@localhost//",
    "[2026-12-06 07:36:46,767: INFO/Beat] beat: Starting...",
    "[2026-12-06 07:36:46,695: WARNING/MainProcess] No hostname was supplied. Reverting to default 'localhost'",
    "/venv/lib/python3.11/site-packages/celery/platforms.py:893: SecurityWarning: You're running the worker with "
    "superuser privileges",
    '{"ts": "2026-12-06 07:43:45,061", "level": "INFO", "logger": "relays.bridge_events", "message": "dialled '
    'registered workers", "request_id": "-", "peers": 1, "reached": 1}',
    '{"ts":"2026-12-06T07:36:44.354Z","level":"info","logger":"bridge.blind-peer","msg":"blind peer listening"}',
    '{"ts": "x", "level": "WARNING", "logger": "kombu.connection", "message": "No hostname was supplied."}',
    '127.0.0.1:35146 - - [06/Dec/2026:07:36:46] "GET /ready" 200 170',
    "2026-12-06 07:36:46,164 WARNING escrow.keystore [-] escrow: generated a development key-encryption key",
    'HYPERTUNA_WORKER_READY {"relayKey": "ab"}',
    '{"ts": "x", "level": "INFO", "logger": "escrow.coordinator", "message": "escrow lease request", '
    '"relay_key": "' + "a" * 64 + '", "result": "granted", "reasons": []}',
]


def test_idle_chatter_stays_in_the_log_files():
    assert [line for line in CHATTER if notable("celery", line) is not None] == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '{"ts": "x", "level": "ERROR", "logger": "relays.consumers", "message": "session failed", "error": "boom"}',
            "web: ERROR relays.consumers: session failed (boom)",
        ),
        ('{"ts":"x","level":"error","logger":"bridge","msg":"fatal"}', "web: ERROR bridge: fatal"),
        ("2026-12-06 07:36:46,164 CRITICAL django [-] out of disk", "web: ERROR django: out of disk"),
        (
            "[2026-12-06 07:37:02,289: ERROR/ForkPoolWorker-3] Task x raised",
            "web: ERROR ForkPoolWorker-3: Task x raised",
        ),
        (
            '{"level":"info","logger":"bridge.lease","msg":"lease opened","relayKey":"' + "b" * 64 + '"}',
            "lease granted: the gateway writes for relay bbbbbbbbbbbb…",
        ),
        (
            '{"level":"info","logger":"bridge.lease","msg":"lease closed","relayKey":"' + "b" * 64 + '",'
            '"reason":"revoked"}',
            "lease closed: relay bbbbbbbbbbbb… (revoked)",
        ),
        (
            '{"level": "INFO", "logger": "escrow.coordinator", "message": "escrow lease request", "relay_key": "'
            + "c" * 64
            + '", "result": "refused", "reasons": ["peer-online"]}',
            "lease request for relay cccccccccccc… not granted: peer-online",
        ),
        (
            '{"level": "INFO", "logger": "escrow.coordinator", "message": "escrow lease request", "relay_key": "'
            + "c" * 64
            + '", "result": "refused", "reasons": ["worker-heartbeat-recent"]}',
            "lease request for relay cccccccccccc… not granted: worker-heartbeat-recent (the worker was heard from"
            " too recently: the escrow waits HYPERTUNA_ESCROW_HEARTBEAT_SILENCE, 90 s by default; a later write"
            " asks again)",
        ),
        (
            '{"level": "INFO", "logger": "escrow.coordinator", "message": "escrow lease request", "relay_key": "'
            + "c" * 64
            + '", "result": "refused", "reasons": ["worker-heartbeat-recent", "mirror-stale"]}',
            "lease request for relay cccccccccccc… not granted: worker-heartbeat-recent, mirror-stale",
        ),
    ],
)
def test_errors_and_lease_events_reach_the_console(line, expected):
    assert notable("web", line) == expected


def test_a_long_error_message_is_cut_on_the_console():
    line = notable("web", json.dumps({"level": "ERROR", "logger": "x", "message": "y" * 1000}))
    assert line is not None and len(line) < 200 and line.endswith("…")


def test_a_log_file_keeps_the_previous_run_and_rotates_past_its_bound(tmp_path):
    path = tmp_path / "web.log"
    path.write_text("previous run\n")
    log = LogFile(path, max_bytes=100)
    assert (tmp_path / "web.log.1").read_text() == "previous run\n"
    log.write(b"x" * 60 + b"\n")
    assert path.stat().st_size == 61
    log.write(b"y" * 60 + b"\n")  # past the bound: rotated, the file starts again
    assert (tmp_path / "web.log.1").read_bytes() == b"x" * 60 + b"\n" + b"y" * 60 + b"\n"
    assert path.stat().st_size == 0
    log.write(b"z\n")
    assert path.read_bytes() == b"z\n"


def test_a_repeated_error_is_shown_once_a_minute_with_the_count_held_back(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(console_module.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    console = Console(tmp_path, out=out)
    error = b'{"level": "ERROR", "logger": "relays.api", "message": "database is locked"}'
    for _ in range(5):
        console.member_output("web", error)
        now[0] += 10
    console.member_output("web", b'{"level": "ERROR", "logger": "relays.api", "message": "another"}')
    now[0] += 20
    console.member_output("web", error)
    lines = [line.split("  ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "web: ERROR relays.api: database is locked",
        "web: ERROR relays.api: another",
        "web: ERROR relays.api: database is locked (seen 4 more times since it was last shown)",
    ]
    assert (tmp_path / "web.log").read_bytes().count(b"database is locked") == 6


def _chatty_script(tmp_path: Path) -> list[str]:
    lines = [*CHATTER, '{"ts": "x", "level": "ERROR", "logger": "relays.api", "message": "database is locked"}']
    script = tmp_path / "chatty.py"
    script.write_text(
        "import sys, time\n"
        f"for line in {lines!r}:\n"
        "    print(line, flush=True)\n"
        "    print(line, file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    return [sys.executable, str(script)]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_member_stdout_and_stderr_go_to_its_log_file_and_only_errors_to_the_console(tmp_path):
    out = io.StringIO()
    console = Console(tmp_path / "log", out=out)
    member = Member("web", _chatty_script(tmp_path), output=console.member_output)
    member.start(dict(os.environ))
    try:
        log = tmp_path / "log" / "web.log"
        wait_for(lambda: log.exists() and log.read_text().count("database is locked") == 2)
        text = log.read_text()
        assert all(text.count(line) == 2 for line in CHATTER)  # stdout and stderr, whole
        # Printed twice (stdout, stderr), shown once: the same error within a minute is held back.
        lines = out.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].endswith("web: ERROR relays.api: database is locked")
    finally:
        stop_all([member])


@pytest.fixture
def group(tmp_path):
    said: list[str] = []
    bridge = Member("bridge", SLEEP)
    demo = Member("demo-worker", SLEEP, on_exit="report", follows="bridge")
    members = [bridge, Member("web", SLEEP), demo]
    for member in members:
        member.start(dict(os.environ))
    yield Supervisor(members, clock=Clock(), say=said.append), said
    stop_all(members)


A, B = "a" * 64, "b" * 64


def test_worker_lines_follow_the_bridge_events_and_skip_benign_closes():
    presence = WorkerPresence()
    assert presence.event("peer.connected", {"peerKey": A}) == [("online", A, None)]
    assert presence.event("peer.connected", {"peerKey": A}) == []  # said once
    assert presence.event("peer.disconnected", {"peerKey": A, "reason": "duplicate-replacement"}) == []
    assert presence.event("peer.connected", {"peerKey": A}) == [("online", A, None)]
    assert presence.event("peer.disconnected", {"peerKey": A, "reason": "stream-close"}) == [
        ("offline", A, "stream-close")
    ]
    assert presence.event("peer.disconnected", {"peerKey": B, "reason": "stream-close"}) == []  # never said online


def test_the_pool_state_catches_what_the_events_missed():
    presence = WorkerPresence()
    # Connected while the console's connection to the bridge was down: only the pool's state tells.
    assert presence.reconcile([{"peerKey": A, "state": "ready"}, {"peerKey": B, "state": "dialing"}]) == [
        ("online", A, None)
    ]
    assert presence.reconcile([{"peerKey": A, "state": "ready"}]) == []
    # Being set up again after a replaced duplicate is no worker gone; backing off after a loss is.
    assert presence.reconcile([{"peerKey": A, "state": "handshaking", "lastReason": "duplicate-replacement"}]) == []
    assert presence.reconcile([{"peerKey": A, "state": "backoff", "lastReason": "stream-error"}]) == [
        ("offline", A, "stream-error")
    ]
    presence.event("peer.connected", {"peerKey": B})
    assert presence.reconcile([]) == [("offline", B, "gone")]  # a restarted bridge knows no worker


def test_a_requested_stop_of_the_demo_worker_is_no_crash_and_lasts_until_start(group):
    supervisor, said = group
    bridge, web, demo = supervisor.members
    first = demo.process
    reply = supervisor.control("stop demo-worker")
    # The reply says when writes come back: the escrow's heartbeat-silence rule, not at once.
    assert reply.startswith("ok: demo-worker stopped") and "HYPERTUNA_ESCROW_HEARTBEAT_SILENCE" in reply
    assert first.poll() is not None and demo.gone and demo.crashes == 0
    for _ in range(3):
        assert supervisor.tick() is None
        supervisor.clock.now += 100
    assert demo.process is first and not any("exited" in line for line in said)
    # The bridge restarting does not bring it back either.
    bridge.process.kill()
    bridge.process.wait()
    supervisor.tick()
    supervisor.clock.now = bridge.restart_at
    supervisor.tick()
    assert demo.process is first
    assert supervisor.control("stop demo-worker") == "ok: demo-worker is not running"

    assert supervisor.control("start demo-worker").startswith("ok: demo-worker started")
    assert demo.process is not first and demo.process.poll() is None and not demo.gone
    assert supervisor.control("start demo-worker").startswith("ok: demo-worker is already running")
    assert said[-1].startswith("demo-worker started on request")
    assert web.crashes == 0


def test_only_the_demo_worker_is_stopped_on_request(group):
    supervisor, _ = group
    web = supervisor.members[1]
    assert supervisor.control("stop web").startswith("error: web is part of the gateway")
    assert supervisor.control("stop escrow").startswith("error: this gateway runs no escrow")
    assert supervisor.control("restart demo-worker").startswith("error: unknown command")
    assert web.process.poll() is None


def test_the_control_socket_carries_commands_to_the_supervisors_thread(tmp_path):
    var_dir = tmp_path / ("v" * 120)  # longer than a Unix socket address allows
    var_dir.mkdir()
    path = control_socket_path(var_dir)
    assert len(os.fsencode(path)) < 100 and control_socket_path(var_dir) == path
    ok, answer = send_command(var_dir, "stop demo-worker")
    assert not ok and "no running gateway found" in answer
    server = ControlServer(path)
    try:
        assert os.stat(path).st_mode & 0o077 == 0
        ran: list[tuple[str, str]] = []
        answers: list[tuple[bool, str]] = []
        client = threading.Thread(target=lambda: answers.append(send_command(var_dir, "stop demo-worker")))
        client.start()

        def run(command: str) -> str:
            ran.append((command, threading.current_thread().name))
            return "ok: demo-worker stopped"

        deadline = time.monotonic() + 10
        while not ran and time.monotonic() < deadline:
            server.handle(run, wait=0.2)
        client.join(10)
        assert ran == [("stop demo-worker", threading.current_thread().name)]
        assert answers == [(True, "demo-worker stopped")]
    finally:
        server.close()
    assert not path.exists()


def test_enter_is_read_only_from_a_terminal(tmp_path):
    console = Console(tmp_path, out=io.StringIO())
    assert console.read_enter(io.StringIO("\n")) is None
    controller, terminal_fd = os.openpty()
    terminal = os.fdopen(terminal_fd, "r")
    console.banner = "BANNER"
    thread = console.read_enter(terminal)
    assert thread is not None
    os.write(controller, b"\n")
    wait_for(lambda: console.out.getvalue().count("BANNER") == 1)
    os.write(controller, b"\n")
    wait_for(lambda: console.out.getvalue().count("BANNER") == 2)
    os.close(controller)  # the terminal goes away: the reader ends quietly
    thread.join(5)
    assert not thread.is_alive()
    terminal.close()


def test_the_demo_worker_runs_an_open_relay(tmp_path):
    env = {"HYPERTUNA_REGISTRATION_SECRET": "s", "HYPERTUNA_SWARM_BOOTSTRAP_FILE": "x", "HYPERTUNA_ESCROW_URL": "e"}
    argv = supervisor.demo_member(env, tmp_path, "http://127.0.0.1:1").argv
    assert "--requires-auth" not in argv and "--issue-token" not in argv


# ---- the real `make run` on a terminal -----------------------------------------------------------------

IDLE_WINDOW_SECONDS = 8


async def _exchange(url: str, frame: list, until: str) -> list:
    """Send ``frame`` on a fresh socket; the frames received up to the first ``until`` (OK / EOSE)."""
    async with websockets.connect(url, open_timeout=30) as ws:
        await ws.send(json.dumps(frame))
        frames: list = []
        while not frames or frames[-1][0] != until:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        return frames


def _make(target: str, var_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", target, f"VAR_DIR={var_dir}"],
        cwd=supervisor.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


DOWN_MARK_SECONDS = 2
SNAPSHOT_MAX_AGE_SECONDS = 5  # HYPERTUNA_RELAY_SNAPSHOT_MAX_AGE without REDIS_URL


@pytest.mark.e2e
def test_make_run_console_open_relay_and_demo_worker_stop_start(tmp_path):
    var_dir = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "HYPERTUNA_VAR_DIR")}
    # make run's own default (CI lowers the level for the test run, which would keep INFO lines out of the logs).
    env["HYPERTUNA_LOG_LEVEL"] = "INFO"
    # Past this, new sockets go by the relay's snapshot alone (checked after the demo worker stops).
    env["HYPERTUNA_PEER_DOWN_MARK_SECONDS"] = str(DOWN_MARK_SECONDS)
    argv = [sys.executable, "-m", "hypertuna.supervisor", "--var-dir", str(var_dir)]
    argv += ["--port", str(free_port()), "--escrow-port", str(free_port())]
    controller, terminal = os.openpty()
    run = spawn("make-run", argv, cwd=supervisor.BASE_DIR, env=env, log_dir=tmp_path, stdin=terminal)
    os.close(terminal)
    console = run.log_path

    def lines() -> list[str]:
        return console.read_text().splitlines() if console.exists() else []

    def wait_line(text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in lines()):
            assert run.process.poll() is None, console.read_text()
            assert time.monotonic() < deadline, f"no console line with {text!r}:\n{console.read_text()}"
            time.sleep(0.2)

    try:
        wait_line("Enter shows this again", timeout=180)
        url = next(m.group(0) for line in lines() if (m := re.search(r"ws://\S+/[0-9a-f]{64}$", line.strip())))

        # An open relay: a client with a key of its own publishes without any token.
        event = sign_event(PrivateKey().secret, kind=1, content="published with my own key")
        assert asyncio.run(_exchange(url, ["EVENT", event.to_dict()], "OK"))[-1] == ["OK", event.id, True, ""]
        wait_line("demo worker online")

        # Idle: nothing more on the console; the members' output is in their log files.
        seen = len(lines())
        time.sleep(IDLE_WINDOW_SECONDS)
        assert lines()[seen:] == []
        assert "celery@" in (var_dir / "log" / "celery.log").read_text()
        assert '"relay registered"' in (var_dir / "log" / "web.log").read_text()
        assert not any(line.startswith(("{", "[", " ---")) or "celery@" in line for line in lines())

        # Enter prints the banner again.
        os.write(controller, b"\n")
        wait_line("Enter shows this again")
        deadline = time.monotonic() + 10
        while sum("Hypertuna Gateway is ready at" in line for line in lines()) < 2:
            assert time.monotonic() < deadline, console.read_text()
            time.sleep(0.2)

        # The demo worker stops on request (not a crash) and the relay stays readable from the replica.
        stopped = _make("demo-worker-stop", var_dir)
        assert stopped.returncode == 0 and "demo-worker stopped" in stopped.stdout, stopped
        wait_line("demo-worker stopped on request")
        wait_line("demo worker offline")
        deadline = time.monotonic() + 60
        while not any(f[0] == "EVENT" for f in asyncio.run(_exchange(url, ["REQ", "r", {"ids": [event.id]}], "EOSE"))):
            assert time.monotonic() < deadline, "the stopped worker's relay is not served from the replica"
            time.sleep(1)
        assert _make("demo-worker-stop", var_dir).stdout.strip() == "demo-worker is not running"

        # Once the web process's own mark of the closed connection has lapsed, a new socket is still not sent
        # to the stopped worker (which would cost it the peer request timeout): the web process reads the
        # relay's snapshot again (its cache is its own; the events process marked the worker unreachable in
        # the database) and writes are refused at once (the escrow's heartbeat silence has not passed).
        web_log = var_dir / "log" / "web.log"
        tried_before = web_log.read_text().count("peer failed for session")
        time.sleep(DOWN_MARK_SECONDS + SNAPSHOT_MAX_AGE_SECONDS + 1)
        late = sign_event(PrivateKey().secret, kind=1, content="after the mark lapsed")
        answer = asyncio.run(_exchange(url, ["EVENT", late.to_dict()], "OK"))[-1]
        assert answer[:3] == ["OK", late.id, False] and "read-only" in answer[3], answer
        assert web_log.read_text().count("peer failed for session") == tried_before, web_log.read_text()[-3000:]

        started = _make("demo-worker-start", var_dir)
        assert started.returncode == 0 and "demo-worker started" in started.stdout, started
        wait_line("demo-worker started on request")
        assert not any("exited with" in line or "restarting" in line for line in lines()), console.read_text()
    finally:
        run.stop(timeout=30)
        os.close(controller)
    assert run.process.returncode == 0
    assert _make("demo-worker-start", var_dir).returncode != 0  # no gateway runs any more

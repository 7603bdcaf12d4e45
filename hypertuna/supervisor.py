"""``make run``: start the whole gateway as one supervised group of processes.

Starts the bridge (Node: Hyperswarm pool on a loopback testnet), the web process (uvicorn), Celery (worker
with embedded beat) and the bridge event consumer; waits until the gateway answers ``/ready``; then starts
a reference worker hosting an open demo relay (any client, any key, no token), which registers itself, and
prints a ready ``ws://`` URL. Ctrl-C (SIGINT/SIGTERM) stops the whole group cleanly. What the terminal shows,
the per-process log files and ``make demo-worker-stop`` / ``-start`` are ``hypertuna.console``'s.

A member that exits is restarted after a backoff that doubles with each crash (1 s up to 30 s); one that
crashes ``GIVE_UP_AFTER`` times without running ``STABLE_SECONDS`` in between is given up on loudly and the
group stops with exit code 1 (a gateway without its web process or bridge is worse than a stopped one). The
demo worker is the exception: a worker going offline is the case the gateway exists for, so its exit is
reported and the gateway keeps serving the demo relay from its replica. When the bridge restarts on the
local testnet (which the bridge hosts) the demo worker is restarted with it, so it finds the new testnet.

What a first run needs (secrets, the operator account, the development escrow) is ``hypertuna.firstrun``'s.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypertuna.console import (
    HEARTBEAT_SILENCE,
    Console,
    ControlServer,
    control_socket_path,
    ready_banner,
    wait_demo_relay,
    wait_ready,
)
from hypertuna.firstrun import BASE_DIR, ensure_operator, prepare_environment, prepare_escrow, run_step
from hypertuna.webserver import web_argv

STOP_GRACE_SECONDS = 10
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
# A member that ran this long since its last start counts as healthy again: its crash count restarts.
STABLE_SECONDS = 60.0
GIVE_UP_AFTER = 5
PR_SET_PDEATHSIG = 1


def celery_argv(python: str, concurrency: int, schedule: Path) -> list[str]:
    """A Celery worker with its embedded beat (one per role: a second beat would run each task twice)."""
    return [
        python,
        "-m",
        "celery",
        "-A",
        "hypertuna.celery",
        "worker",
        "-B",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "-s",
        str(schedule),
    ]


@dataclass
class Member:
    name: str
    argv: list[str]
    cwd: Path = BASE_DIR
    env: dict[str, str] | None = None
    # Output is read line by line (and echoed) so that markers such as the demo worker's ready line are picked up.
    watch: bool = False
    # "restart" (with backoff, give up after repeated crashes: the group stops) or "report" (an exit is
    # logged and the member stays stopped; the group goes on).
    on_exit: str = "restart"
    # Restarted whenever the named member restarts (the demo worker with the bridge hosting its testnet).
    follows: str | None = None
    # Stopped only once every other member has exited (the bridge, which the others talk to: stopped with them,
    # the web process logged "lost the bridge" on every Ctrl-C).
    stops_last: bool = False
    # Where each line of the member's stdout and stderr goes (``Console.member_output``: its log file, and the
    # console when notable); None: stdout is echoed (when watched) and stderr inherited.
    output: Callable[[str, bytes], None] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None)
    markers: dict[str, dict[str, object]] = field(default_factory=dict)
    marker_seen: threading.Event = field(default_factory=threading.Event)
    crashes: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    # Stopped for good: exited on its own (``on_exit="report"``) or on request (``make demo-worker-stop``).
    gone: bool = False
    _env: dict[str, str] = field(default_factory=dict)

    def start(self, env: dict[str, str]) -> None:
        self._env = env
        self.started_at = time.monotonic()
        self.restart_at = None
        piped = self.watch or self.output is not None
        # Own session per member: Ctrl-C reaches the supervisor, which then stops each in order. Node
        # members also get a stdin pipe and exit when it closes; every member gets SIGTERM if the supervisor
        # dies without stopping them (members are started from the supervisor's main thread only).
        self.process = subprocess.Popen(
            self.argv,
            env=env,
            cwd=self.cwd,
            start_new_session=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if piped else None,
            stderr=subprocess.STDOUT if self.output is not None else None,
            preexec_fn=_terminate_with_parent,
        )
        if piped:
            threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()

    def restart(self) -> None:
        self.start(self._env)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _pump(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            marker, _, payload = line.partition(" ")
            if marker.startswith("HYPERTUNA_") and payload.startswith("{"):
                try:
                    self.markers[marker] = json.loads(payload)
                    self.marker_seen.set()
                except ValueError:
                    pass
            if self.output is not None:
                # Keep draining whatever happens to the log file: a member whose pipe fills up would block.
                with contextlib.suppress(OSError):
                    self.output(self.name, raw)
            else:
                print(f"[{self.name}] {line}", flush=True)


def _terminate_with_parent() -> None:
    """``preexec_fn``: SIGTERM when the supervisor's thread that started the member dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_all(members: list[Member]) -> None:
    """SIGTERM to the members, the ``stops_last`` ones once the others have exited; a member still running
    ``STOP_GRACE_SECONDS`` after its signal is killed."""
    _stop_together([m for m in members if not m.stops_last])
    _stop_together([m for m in members if m.stops_last])


def _stop_together(members: list[Member]) -> None:
    for member in reversed(members):
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for member in members:
        if member.process is None:
            continue
        try:
            member.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"[supervisor] {member.name} did not stop in {STOP_GRACE_SECONDS} s; killing it", flush=True)
            member.process.kill()
            member.process.wait()


def demo_member(env: dict[str, str], var_dir: Path, base: str) -> Member:
    """The reference worker hosting the demo relay, registering with ``base``."""
    return Member(
        "demo-worker",
        [
            "node",
            "src/worker/main.mjs",
            "--bootstrap-file",
            env["HYPERTUNA_SWARM_BOOTSTRAP_FILE"],
            "--storage",
            str(var_dir / "demo-worker"),
            "--gateway-url",
            base,
            "--name",
            "demo",
            # An open relay (no --requires-auth): any client publishes and reads with its own key, no token.
            "--blind-peer",
            "gateway",
            # The demo worker escrows a dedicated gateway writer, so the relay stays writable under a
            # lease when the worker is stopped (see the README's escrow section).
            "--gateway-writer",
            "--escrow-url",
            env["HYPERTUNA_ESCROW_URL"],
            "--escrow-ca",
            str(var_dir / "escrow" / "pki" / "ca.pem"),
            "--escrow-cert",
            str(var_dir / "escrow" / "pki" / "worker.pem"),
            "--escrow-key",
            str(var_dir / "escrow" / "pki" / "worker-key.pem"),
        ],
        cwd=BASE_DIR / "bridge",
        # The registration secret travels in the environment (HYPERTUNA_WORKER_SECRET), not in ``ps``.
        env={**env, "HYPERTUNA_WORKER_SECRET": env["HYPERTUNA_REGISTRATION_SECRET"]},
        watch=True,
        on_exit="report",
        # On the local testnet the bridge hosts the DHT bootstrap: a restarted bridge has a new one.
        follows=None if env.get("HYPERTUNA_SWARM_BOOTSTRAP") else "bridge",
    )


def _say(text: str) -> None:
    print(f"[supervisor] {text}", flush=True)


class Supervisor:
    """Restarts members that exit (see the module docstring for the policy). ``tick`` is one pass; it
    returns an exit code once the group must stop, else None. ``say`` reports each event (the console)."""

    def __init__(
        self,
        members: list[Member],
        *,
        clock: Callable[[], float] = time.monotonic,
        say: Callable[[str], None] = _say,
        log_hint: Callable[[Member], str] = lambda member: "",
    ) -> None:
        self.members = members
        self.clock = clock
        self.say = say
        self.log_hint = log_hint

    def tick(self) -> int | None:
        now = self.clock()
        for member in list(self.members):
            if member.gone or member.process is None:
                continue
            if member.restart_at is not None:
                if now >= member.restart_at:
                    self._restart(member)
                continue
            code = member.process.poll()
            if code is None:
                continue
            hint = self.log_hint(member)
            if member.on_exit == "report":
                member.gone = True
                self.say(f"{member.name} exited with {code}; not restarted, the gateway keeps serving{hint}")
                continue
            if now - member.started_at >= STABLE_SECONDS:
                member.crashes = 0
            member.crashes += 1
            if member.crashes >= GIVE_UP_AFTER:
                self.say(
                    f"GIVING UP: {member.name} exited with {code}, its {member.crashes}th crash in a row (each "
                    f"within {STABLE_SECONDS:.0f} s of starting); stopping the group{hint}"
                )
                return code or 1
            delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (member.crashes - 1))
            member.restart_at = now + delay
            self.say(f"{member.name} exited with {code}; restarting in {delay:.0f} s{hint}")
        return None

    def _restart(self, member: Member) -> None:
        member.restart()
        self.say(f"restarted {member.name} (pid {member.pid})")
        for follower in self.members:
            if follower.follows == member.name and follower.process is not None and not follower.gone:
                self.say(f"restarting {follower.name} with {member.name}")
                stop_all([follower])
                follower.restart()

    def control(self, command: str) -> str:
        """``stop <member>`` / ``start <member>`` for a member whose exit is only reported (the demo worker):
        a requested stop is not a crash, and the member stays stopped until ``start``. Returns the answer."""
        verb, _, name = command.partition(" ")
        member = next((m for m in self.members if m.name == name), None)
        if verb not in ("stop", "start"):
            return f"error: unknown command {command!r} (stop|start demo-worker)"
        if member is None:
            return f"error: this gateway runs no {name} (started with --no-demo, or not ready yet)"
        if member.on_exit != "report":
            return f"error: {name} is part of the gateway; only the demo worker is stopped and started this way"
        if verb == "stop":
            if member.gone:
                return f"ok: {name} is not running"
            member.gone = True
            member.restart_at = None
            stop_all([member])
            self.say(f"{name} stopped on request; `make demo-worker-start` starts it again")
            return (
                f"ok: {name} stopped; the gateway serves its relay from the replica now, and accepts writes under"
                f" an escrow lease once the worker has been silent for {HEARTBEAT_SILENCE}"
            )
        if not member.gone:
            return f"ok: {name} is already running (pid {member.pid})"
        member.gone = False
        member.crashes = 0
        member.restart()
        self.say(f"{name} started on request (pid {member.pid})")
        return f"ok: {name} started (pid {member.pid})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Hypertuna Gateway (web + celery) as one group.")
    parser.add_argument("--host", default=os.environ.get("HYPERTUNA_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("HYPERTUNA_PORT", "8000")))
    parser.add_argument("--var-dir", default=os.environ.get("HYPERTUNA_VAR_DIR", str(BASE_DIR / "var")))
    parser.add_argument("--no-demo", action="store_true", help="do not start the reference worker and demo relay")
    parser.add_argument("--escrow-port", type=int, default=int(os.environ.get("HYPERTUNA_ESCROW_LISTEN_PORT", "8443")))
    args = parser.parse_args(argv)

    var_dir = Path(args.var_dir).resolve()
    env = prepare_environment(var_dir)
    env.setdefault("HYPERTUNA_BRIDGE_SOCKET", str(var_dir / "bridge.sock"))
    env.setdefault("HYPERTUNA_SWARM_BOOTSTRAP_FILE", str(var_dir / "swarm.json"))
    env.setdefault("HYPERTUNA_BRIDGE_STORAGE", str(var_dir / "bridge"))
    env.setdefault("HYPERTUNA_BRIDGE_EXIT_ON_STDIN_CLOSE", "1")
    env.setdefault("HYPERTUNA_WORKER_EXIT_ON_STDIN_CLOSE", "1")
    console = Console(var_dir / "log")
    setup_log = console.log_file("setup")
    console.say(
        f"preparing the gateway in {var_dir} (migrations, certificates); each process logs to {console.log_dir}"
    )
    try:
        escrow_env = prepare_escrow(env, var_dir, args.escrow_port, setup_log.fileno())
        run_step([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], env, setup_log.fileno())
        password = ensure_operator(env, var_dir, setup_log.fileno())
    except subprocess.CalledProcessError as exc:
        console.say(
            f"setup failed: {' '.join(map(str, exc.cmd[1:4]))} exited with {exc.returncode}; see {setup_log.path}"
        )
        return 1

    python = sys.executable
    base = f"http://{args.host}:{args.port}"
    members = [
        Member("bridge", ["node", "src/main.mjs"], cwd=BASE_DIR / "bridge", watch=True, stops_last=True),
        Member("web", web_argv(python, args.host, args.port)),
        Member("celery", celery_argv(python, 2, var_dir / "celerybeat-schedule")),
        Member("events", [python, "manage.py", "bridge_events"]),
        # The escrow runs as its own role: own database, own broker folder, mTLS listener.
        Member("escrow", [python, "manage.py", "run_escrow"], env=escrow_env),
        Member(
            "escrow-celery", celery_argv(python, 1, var_dir / "escrow-service" / "celerybeat-schedule"), env=escrow_env
        ),
    ]
    demo = demo_member(env, var_dir, base)

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    for member in [*members, demo]:
        member.output = console.member_output
        console.log_file(member.name)  # this run's file from the start (the previous run's becomes .1)
    supervisor = Supervisor(members, say=console.say, log_hint=lambda m: f" (see {console.log_dir / m.name}.log)")
    for member in members:
        member.start(member.env or env)
    console.say(f"started {', '.join(f'{m.name} (pid {m.pid})' for m in members)}")
    console.follow_workers(env)

    if not wait_ready(f"{base}/ready", members, timeout=120):
        if not stopping:
            console.say(f"the gateway did not become ready; stopping (see the logs in {console.log_dir})")
        stop_all(members)
        return 0 if stopping else 1
    relay = None
    if not args.no_demo:
        demo.start(demo.env or env)
        members.append(demo)
        relay = wait_demo_relay(demo, var_dir / "demo-worker" / "status.json", lambda: stopping)
        if relay is None and not stopping:
            console.say(f"the demo worker did not register its relay; see {console.log_file(demo.name).path}")
        elif relay is not None:
            console.peer_names[str(relay["swarmPublicKey"])] = "demo worker"
    console.banner = ready_banner(
        base=base,
        var_dir=var_dir,
        log_dir=console.log_dir,
        password=password,
        escrow_url=env["HYPERTUNA_ESCROW_URL"],
        relay=relay,
    )
    console.show_banner()
    console.read_enter(sys.stdin)

    exit_code = 0
    control = ControlServer(control_socket_path(var_dir))
    try:
        while not stopping:
            code = supervisor.tick()
            if code is not None:
                exit_code = code
                break
            control.handle(supervisor.control, wait=0.5)
    finally:
        control.close()
    console.say("stopping")
    stop_all(members)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

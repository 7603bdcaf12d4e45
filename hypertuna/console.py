"""The terminal of ``make run``: member output goes to log files, the console shows what a person needs.

Each member's stdout and stderr go to ``<var>/log/<member>.log`` (the previous run's file is kept as
``<member>.log.1``; a file that grows past ``LOG_MAX_BYTES`` is rotated the same way). The console shows the
ready banner, then one line per notable event: the supervisor's own (a member exited, restarted, was given
up on, stopped or started on request), a worker online or offline (the bridge's ``peer.connected`` /
``peer.disconnected`` events, followed over its RPC socket and checked against its pool's state every few
seconds), a lease opened or closed on the gateway's bridge, a lease request the escrow did not grant, and any
record at ERROR or above from any member. Celery banners, warnings and INFO chatter stay in the files
(``make logs`` follows them). A line on a terminal's stdin (Enter) prints the banner again; when stdin is not
a terminal nothing reads it.

``python -m hypertuna.console stop|start demo-worker`` asks a running supervisor, over a Unix socket in the
var directory (mode 0600), to stop or start its demo worker (``make demo-worker-stop`` / ``-start``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import queue
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypertuna.supervisor import Member

LOG_MAX_BYTES = 10 * 1024 * 1024
# A message longer than this is cut on the console (the log file keeps it whole).
CONSOLE_MESSAGE_CHARS = 160
CONTROL_TIMEOUT_SECONDS = 30.0
NAME_WAIT_SECONDS = 3.0
# How often the worker lines are checked against the bridge pool's state, besides its events.
RECONCILE_SECONDS = 5.0
_SETTING_UP = {"handshaking", "identifying"}
# The same error line is shown once in this window; the next one after it says how many were held back.
REPEAT_WINDOW_SECONDS = 60.0
# Python's text log format (hypertuna.settings) and Celery's own: "... ERROR logger [request-id] message" and
# "[date: ERROR/MainProcess] message".
_TEXT_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \S+ (?P<level>[A-Z]+) (?P<logger>\S+) \[[^\]]*\] (?P<msg>.*)$")
_CELERY_RECORD = re.compile(r"^\[[^\]]*: (?P<level>[A-Z]+)/(?P<logger>[^\]]+)\] (?P<msg>.*)$")
_ERROR_LEVELS = {"error", "critical", "fatal"}
ERROR = "ERROR"
_NOT_GRANTED = {"refused", "conflict", "error", "unavailable"}
# When the escrow grants a lease for a stopped worker (escrow/policy.py): after this much silence from it.
HEARTBEAT_SILENCE = "HYPERTUNA_ESCROW_HEARTBEAT_SILENCE, 90 s by default"
# What a lone refusal reason means to someone trying the offline fallback (escrow/policy.py has them all).
_REASON_HINTS = {
    "worker-heartbeat-recent": f"the worker was heard from too recently: the escrow waits {HEARTBEAT_SILENCE}; "
    "a later write asks again",
}


def short(key: object) -> str:
    text = str(key or "?")
    return text[:12] + "…" if len(text) > 16 else text


def _record(line: str) -> dict[str, Any] | None:
    """A log line as ``{"level", "logger", "msg", …}``: the JSON lines of the Python members and the bridge,
    or Python's text format, or Celery's. None for anything else (banners, access logs, tracebacks)."""
    if line.startswith("{"):
        try:
            data = json.loads(line)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        return {**data, "level": str(data.get("level", "")), "msg": str(data.get("msg", data.get("message", "")))}
    match = _TEXT_RECORD.match(line) or _CELERY_RECORD.match(line)
    return match.groupdict() if match else None


def notable(member: str, line: str) -> str | None:
    """The console line for a member's output line, or None when it belongs to the log file only."""
    record = _record(line)
    if record is None:
        return None
    msg, logger = record["msg"], str(record.get("logger", ""))
    if logger.startswith("bridge") and msg == "lease opened":
        return f"lease granted: the gateway writes for relay {short(record.get('relayKey'))}"
    if logger.startswith("bridge") and msg == "lease closed":
        return f"lease closed: relay {short(record.get('relayKey'))} ({record.get('reason', '?')})"
    if msg == "escrow lease request" and record.get("result") in _NOT_GRANTED:
        reasons = [str(reason) for reason in record.get("reasons") or []]
        why = ", ".join(reasons) or record["result"]
        hint = f" ({_REASON_HINTS[reasons[0]]})" if len(reasons) == 1 and reasons[0] in _REASON_HINTS else ""
        return f"lease request for relay {short(record.get('relay_key'))} not granted: {why}{hint}"
    if record["level"].lower() in _ERROR_LEVELS:
        text = msg if len(msg) <= CONSOLE_MESSAGE_CHARS else msg[: CONSOLE_MESSAGE_CHARS - 1] + "…"
        error = record.get("error")
        return f"{member}: {ERROR} {logger}: {text}" + (f" ({error})" if isinstance(error, str) and error else "")
    return None


def ready_banner(
    *,
    base: str,
    var_dir: Path,
    log_dir: Path,
    password: str | None,
    escrow_url: str,
    relay: dict[str, Any] | None,
) -> str:
    """What ``make run`` prints once the gateway is ready (and again on Enter)."""
    kept = var_dir / "admin-password"
    secret = f"{password} (shown once; also in {kept})" if password else f"in {kept}"
    lines = [
        "",
        f"  Hypertuna Gateway is ready at {base}",
        f"    admin:    {base}/admin/  (user admin, password {secret})",
        f"    API docs: {base}/api/docs/",
        f"    metrics:  {base}/metrics   health: {base}/health   ready: {base}/ready",
        f"    worker registration secret: {var_dir / 'registration-secret'}",
        f"    escrow (mTLS): {escrow_url}, certificates in {var_dir / 'escrow' / 'pki'}",
    ]
    if relay:
        ws_base = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        url = f"{ws_base}/{relay['relayKey']}"
        lines += [
            "",
            "  Demo relay, open to every key (no token): publish and read with any Nostr client and your own key",
            f"    {url}",
            f"    (also {ws_base}/{relay['gatewayPath']})",
            f"    e.g.  nak event --sec <your 64-hex secret key> -c hello {url}",
            f"          nak req -k 1 {url}",
            "  See the offline fallback: `make demo-worker-stop`, publish and read again (the gateway serves the",
            "  relay from its replica, and writes under an escrow lease once the worker has been silent for",
            f"  {HEARTBEAT_SILENCE}), then `make demo-worker-start`.",
        ]
    lines += [
        "",
        f"  Logs: {log_dir}/<process>.log (`make logs` follows them); below, one line per notable event.",
        "  Enter shows this again; Ctrl-C stops.",
        "",
    ]
    return "\n".join(lines)


def wait_ready(url: str, members: list[Member], timeout: float = 60.0) -> bool:
    """True once ``url`` (``/ready``) answers 200; False when a member exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(m.process is not None and m.process.poll() is not None for m in members):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback URL we built)
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def wait_demo_relay(
    demo: Member, status_file: Path, stopping: Callable[[], bool], timeout: float = 120.0
) -> dict[str, Any] | None:
    """The demo worker's status (``relayKey``, ``gatewayPath``, …) once the gateway accepted its relay's
    registration; None when it exited or did not manage within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping():
        ready = demo.markers.get("HYPERTUNA_WORKER_READY")
        if ready is not None:
            # Its first registration may have failed; the worker retries and records the outcome in its status.
            with contextlib.suppress(OSError, ValueError):
                ready = {**ready, "registration": json.loads(status_file.read_text())["registration"]}
            registration = ready.get("registration")
            if isinstance(registration, dict) and registration.get("ok"):
                return ready
        if demo.process is None or demo.process.poll() is not None:
            return None
        demo.marker_seen.wait(0.5)
        demo.marker_seen.clear()
    return None


class LogFile:
    """One member's log file: the previous run's kept as ``.1``, rotated again past ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self._rotate_and_open()

    def _rotate_and_open(self) -> IO[bytes]:
        if self.path.exists() and self.path.stat().st_size:
            self.path.replace(self.path.with_name(self.path.name + ".1"))
        return self.path.open("ab")

    def fileno(self) -> int:
        return self._handle.fileno()

    def write(self, raw: bytes) -> None:
        with self._lock:
            self._handle.write(raw)
            self._handle.flush()
            if self._handle.tell() >= self.max_bytes:
                self._handle.close()
                self._handle = self._rotate_and_open()


class Console:
    """What the terminal shows: the banner and one timestamped line per notable event."""

    def __init__(self, log_dir: Path, out: IO[str] | None = None) -> None:
        self.log_dir = log_dir
        self.out = out or sys.stdout
        self.banner = ""
        self._lock = threading.Lock()
        self._logs: dict[str, LogFile] = {}
        self._errors_shown: dict[str, tuple[float, int]] = {}  # error line -> (shown at, held back since)
        # Swarm public key -> a friendly name ("demo worker"), learnt from the demo worker's ready marker.
        self.peer_names: dict[str, str] = {}

    def say(self, text: str) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):  # a closed terminal stops nothing
            self.out.write(f"{time.strftime('%H:%M:%S')}  {text}\n")
            self.out.flush()

    def _unless_repeated(self, line: str) -> str | None:
        """``line`` the first time in ``REPEAT_WINDOW_SECONDS`` (with the count held back before), else None."""
        now = time.monotonic()
        with self._lock:
            shown_at, held = self._errors_shown.get(line, (-REPEAT_WINDOW_SECONDS, 0))
            if now - shown_at < REPEAT_WINDOW_SECONDS:
                self._errors_shown[line] = (shown_at, held + 1)
                return None
            if len(self._errors_shown) > 1000:
                self._errors_shown = {k: v for k, v in self._errors_shown.items() if now - v[0] < REPEAT_WINDOW_SECONDS}
            self._errors_shown[line] = (now, 0)
        return line + (f" (seen {held} more times since it was last shown)" if held else "")

    def show_banner(self) -> None:
        with self._lock:
            self.out.write(self.banner + "\n")
            self.out.flush()

    def log_file(self, member: str) -> LogFile:
        with self._lock:
            if member not in self._logs:
                self._logs[member] = LogFile(self.log_dir / f"{member}.log")
            return self._logs[member]

    def member_output(self, member: str, raw: bytes) -> None:
        """One line a member wrote (stdout or stderr): into its log file; onto the console if notable."""
        self.log_file(member).write(raw if raw.endswith(b"\n") else raw + b"\n")
        line = notable(member, raw.decode("utf-8", "replace").strip())
        if line is not None and f": {ERROR} " in line:
            line = self._unless_repeated(line)
        if line is not None:
            self.say(line)

    def peer_name(self, peer_key: str) -> str:
        return self.peer_names.get(peer_key) or f"worker {short(peer_key)}"

    def read_enter(self, stream: IO[str]) -> threading.Thread | None:
        """Reprint the banner on every line of ``stream`` (Enter) when it is a terminal."""
        if not stream.isatty():
            return None

        def run() -> None:
            with contextlib.suppress(OSError, ValueError):  # the terminal went away
                for _ in stream:
                    self.show_banner()

        thread = threading.Thread(target=run, name="console-enter", daemon=True)
        thread.start()
        return thread

    def follow_workers(self, env: dict[str, str]) -> threading.Thread:
        """Say when a worker comes online or goes offline, as the bridge reports it (across bridge restarts)."""
        thread = threading.Thread(target=asyncio.run, args=(self._follow_workers(env),), daemon=True)
        thread.name = "console-workers"
        thread.start()
        return thread

    async def _announce(self, change: tuple[str, str, str | None]) -> None:
        state, key, reason = change
        if state == "offline":
            self.say(f"{self.peer_name(key)} offline ({reason})")
            return
        # The gateway may reach the demo worker just before its ready line names it.
        for _ in range(int(NAME_WAIT_SECONDS * 10)):
            if key in self.peer_names:
                break
            await asyncio.sleep(0.1)
        self.say(f"{self.peer_name(key)} online")

    async def _follow_workers(self, env: dict[str, str]) -> None:
        from hypertuna.bridge import BridgeClient, BridgeClientError

        client = BridgeClient.from_env(env, client_name="supervisor-console", reconnect=False)
        presence = WorkerPresence()
        while True:
            # Subscribed before connecting, so the topics go with the handshake and no event falls between.
            async with client.events("peer.connected", "peer.disconnected") as events:
                try:
                    await client.connect()
                    loop = asyncio.get_running_loop()
                    while client.connected:
                        # Events say it at once; the pool's state, read on connecting and every few seconds,
                        # catches what a lost connection (or a lost event) kept from them.
                        for change in presence.reconcile((await client.pool_status()).get("peers") or []):
                            await self._announce(change)
                        deadline = loop.time() + RECONCILE_SECONDS
                        with contextlib.suppress(BridgeClientError):  # BridgeTimeout: time to reconcile
                            while (left := deadline - loop.time()) > 0:
                                event = await events.get(left)
                                for change in presence.event(event.name, event.data):
                                    await self._announce(change)
                except BridgeClientError:
                    pass
            await asyncio.sleep(1.0)


class WorkerPresence:
    """Which workers the console has said are online; each input returns the changes to announce as
    ``(state, peer key, reason)``, ``state`` being ``"online"`` or ``"offline"``. A close the bridge reports as
    benign (a replaced duplicate connection, a disconnect on request) is not announced."""

    def __init__(self) -> None:
        self.online: set[str] = set()

    def event(self, name: str, data: dict[str, Any]) -> list[tuple[str, str, str | None]]:
        from relays.bridge import BENIGN_CLOSES

        key = str(data.get("peerKey", ""))
        if name == "peer.connected" and key not in self.online:
            self.online.add(key)
            return [("online", key, None)]
        if name == "peer.disconnected" and key in self.online:
            self.online.discard(key)
            reason = data.get("reason")
            return [] if reason in BENIGN_CLOSES else [("offline", key, str(reason))]
        return []

    def reconcile(self, peers: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
        """Changes that make the said state match the pool's peer list (``pool.status``)."""
        changes: list[tuple[str, str, str | None]] = []
        ready = {str(p.get("peerKey")) for p in peers if p.get("state") == "ready"}
        # A connection being set up again (after a replaced duplicate) is not a worker gone.
        present = ready | {str(p.get("peerKey")) for p in peers if p.get("state") in _SETTING_UP}
        for key in sorted(ready - self.online):
            changes += self.event("peer.connected", {"peerKey": key})
        reasons = {str(p.get("peerKey")): p.get("lastReason") for p in peers}
        for key in sorted(self.online - present):
            changes += self.event("peer.disconnected", {"peerKey": key, "reason": reasons.get(key) or "gone"})
        return changes


# ---- control: stop and start the demo worker of a running supervisor -------------------------------


def control_socket_path(var_dir: Path) -> Path:
    """``<var>/supervisor.sock``, or a name in the temp folder derived from it when that path is longer than
    a Unix socket address allows."""
    path = var_dir.resolve() / "supervisor.sock"
    if len(os.fsencode(path)) < 100:
        return path
    digest = hashlib.sha256(os.fsencode(var_dir.resolve())).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"hypertuna-{digest}.sock"


class ControlServer:
    """Accepts one-line commands on the control socket. The supervisor's main thread runs them (``handle``
    once per pass) so that every member is started from that thread, and the answer goes back to the caller."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: queue.Queue[tuple[str, queue.Queue[str]]] = queue.Queue()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._sock.bind(str(path))
        finally:
            os.umask(old_umask)
        self._sock.listen(4)
        threading.Thread(target=self._serve, name="console-control", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(CONTROL_TIMEOUT_SECONDS)
            try:
                command = conn.makefile("r", encoding="utf-8").readline().strip()
                reply: queue.Queue[str] = queue.Queue(maxsize=1)
                self.requests.put((command, reply))
                answer = reply.get(timeout=CONTROL_TIMEOUT_SECONDS)
            except (OSError, queue.Empty):
                answer = "error: the supervisor did not answer in time"
            with contextlib.suppress(OSError):
                conn.sendall((answer + "\n").encode())

    def handle(self, run: Callable[[str], str], wait: float) -> None:
        """Run the commands waiting (on the calling thread); wait up to ``wait`` seconds for the first."""
        try:
            command, reply = self.requests.get(timeout=wait)
        except queue.Empty:
            return
        while True:
            reply.put(run(command))
            try:
                command, reply = self.requests.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def send_command(var_dir: Path, command: str) -> tuple[bool, str]:
    path = control_socket_path(var_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONTROL_TIMEOUT_SECONDS + 5)
            sock.connect(str(path))
            sock.sendall((command + "\n").encode())
            answer = sock.makefile("r", encoding="utf-8").readline().strip()
    except (FileNotFoundError, ConnectionRefusedError):
        return False, f"no running gateway found (no supervisor listens on {path}); start it with `make run`"
    except OSError as exc:
        return False, f"could not reach the supervisor on {path}: {exc}"
    return answer.startswith("ok"), answer.removeprefix("ok: ").removeprefix("error: ")


def main(argv: list[str] | None = None) -> int:
    from hypertuna.supervisor import BASE_DIR

    parser = argparse.ArgumentParser(description="Stop or start the demo worker of a running `make run`.")
    parser.add_argument("action", choices=("stop", "start"))
    parser.add_argument("member", choices=("demo-worker",))
    parser.add_argument("--var-dir", default=os.environ.get("HYPERTUNA_VAR_DIR", str(BASE_DIR / "var")))
    args = parser.parse_args(argv)
    ok, answer = send_command(Path(args.var_dir), f"{args.action} {args.member}")
    print(answer, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

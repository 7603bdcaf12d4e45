"""Postgres restarted in the middle of a stream of deposits: no acknowledged deposit is lost, none doubled.

Deposits go through the real mTLS listener with the worker client, which retries the identical body
(same idempotency key) on transport errors and 5xx answers. The Postgres that restarts is a private
cluster this test creates (initdb in a temporary directory, its own port and socket directory, trust
authentication on 127.0.0.1), never the machine's shared one: for the test's duration the default
database connection points at it. The cluster is stopped and its directory removed at the end, also on
failure or SIGTERM; on SIGKILL the server still stops (its parent-death signal). Runs when the suite runs
against Postgres; bounded to about a minute.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections

from escrow import audit, crypto
from escrow.models import Deposit, IdempotencyRecord
from escrow.worker_client import WorkerClient
from tests.escrow.mtls import escrow_listener, make_pki

pytestmark = [pytest.mark.postgres, pytest.mark.urls("escrow.service_urls")]

DEPOSITS = 24
RESTART_AFTER = 6
DATABASE = "escrow_restart"
PR_SET_PDEATHSIG = 1


def postgres_bin() -> Path | None:
    """The newest installed server's binaries (``/usr/lib/postgresql/<major>/bin``)."""

    def major(path: Path) -> int:
        match = re.fullmatch(r"\d+", path.parent.parent.name)
        return int(match.group()) if match else -1

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=major)
    return candidates[-1].parent if candidates else None


def _die_with(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: the server gets SIGINT (fast shutdown) when the thread that started it dies.

    Runs after the child's setuid (which would clear the setting); if the parent is already gone, exit."""

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGINT)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


class PrivateCluster:
    """A throwaway Postgres server: ``start``, ``restart`` (a real stop and start), ``remove``.

    Start and restart from the main thread: the parent-death signal follows the thread that spawned."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="ht-private-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:  # the server refuses to run as root
            account = pwd.getpwnam("postgres")
            self._user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self.sockets.mkdir()
        if self._user:
            os.chown(self.sockets, self._user["user"], self._user["group"])

    def _run(self, *argv: str) -> None:
        subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]], check=True, timeout=120, capture_output=True, **self._user
        )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.sockets}'\nmax_connections = 40\nfsync = off\n"
            )

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with(os.getpid()),
                **self._user,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"private Postgres exited: {self.log.read_text(errors='replace')[-2000:]}")
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)], timeout=10
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("private Postgres did not accept connections in time")

    def stop(self, timeout: float = 30.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)  # fast shutdown, as `pg_ctl restart -m fast`
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """A SIGTERM during the test unwinds it like Ctrl-C, so the cleanup below runs."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def private_cluster() -> Iterator[PrivateCluster]:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("needs the PostgreSQL server binaries (/usr/lib/postgresql/<major>/bin)")
    with sigterm_unwinds():
        cluster = PrivateCluster(bindir)
        try:
            cluster.init()
            cluster.start()
            cluster._run("createdb", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", DATABASE)
            yield cluster
        finally:
            cluster.remove()


@contextmanager
def default_database_on(cluster: PrivateCluster) -> Iterator[dict[str, Any]]:
    """Point the default connection (every thread's) at the private cluster, migrated; put it back after."""
    database = settings.DATABASES["default"]
    assert connections["default"].settings_dict is database, "connections must read the settings' dict"
    keys = ("HOST", "PORT", "NAME", "USER", "PASSWORD", "OPTIONS")
    saved = {key: database[key] for key in keys if key in database}
    connections.close_all()
    database.update(HOST="127.0.0.1", PORT=str(cluster.port), NAME=DATABASE, USER="postgres", PASSWORD="", OPTIONS={})
    try:
        call_command("migrate", verbosity=0, interactive=False)
        yield database
    finally:
        connections.close_all()
        for key in keys:
            database.pop(key, None)
        database.update(saved)


def wait_for_postgres(deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            connection.close()
            connection.ensure_connection()
            return
        except Exception:
            time.sleep(0.2)
    raise AssertionError("Postgres did not come back in time")


def test_postgres_restart_mid_run_loses_no_deposit(tmp_path, private_cluster, django_db_blocker):
    certs = make_pki(tmp_path / "pki")
    acknowledged: dict[str, str] = {}  # relay key -> deposit id the escrow acknowledged
    reached_restart_point = threading.Event()
    depositor_error: list[BaseException] = []

    with django_db_blocker.unblock(), default_database_on(private_cluster):
        with connection.cursor() as cursor:
            cursor.execute("SHOW port")
            assert cursor.fetchone()[0] == str(private_cluster.port), "the test must run on its private cluster"
        started = time.monotonic()
        with escrow_listener(certs) as url:
            worker = WorkerClient(certs.client(url, certs.worker, timeout=5), crypto.generate_signing_keypair())
            worker.policy()

            def deposit_all() -> None:
                try:
                    for index in range(DEPOSITS):
                        if index == RESTART_AFTER:
                            reached_restart_point.set()
                        relay_key = f"{index:02x}" * 32
                        writer = crypto.generate_signing_keypair()
                        result = worker.deposit(relay_key, writer.secret, attempts=40, deadline=60)
                        acknowledged[relay_key] = result["depositId"]
                        assert time.monotonic() - started < 120, "the run must stay bounded"
                except BaseException as exc:  # reported by the main thread
                    depositor_error.append(exc)
                finally:
                    reached_restart_point.set()

            depositor = threading.Thread(target=deposit_all, name="depositor", daemon=True)
            depositor.start()
            # The restart runs on this (main) thread: the server's parent-death signal follows its spawner.
            assert reached_restart_point.wait(timeout=60)
            before = private_cluster.process.pid if private_cluster.process else None
            private_cluster.restart()
            assert private_cluster.process is not None and private_cluster.process.pid != before
            depositor.join(timeout=150)
            assert not depositor.is_alive(), "deposits did not finish"
        assert not depositor_error, depositor_error

        wait_for_postgres(time.monotonic() + 30)
        assert len(acknowledged) == DEPOSITS
        for relay_key, deposit_id in acknowledged.items():
            rows = list(Deposit.objects.filter(relay_key=relay_key).values_list("id", "state"))
            assert [(str(i), s) for i, s in rows] == [(deposit_id, "active")], f"{relay_key}: {rows}"
        assert IdempotencyRecord.objects.count() == DEPOSITS
        assert audit.verify(record=False).ok


def test_private_cluster_is_removed_and_its_server_dies_with_the_test_process(tmp_path):
    """The cleanup the restart test relies on: SIGTERM removes the cluster; SIGKILL still stops its server."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("needs the PostgreSQL server binaries (/usr/lib/postgresql/<major>/bin)")
    report = tmp_path / "cluster.txt"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "import django\n"
        "django.setup()\n"
        "from tests.escrow.test_pg_restart import PrivateCluster, postgres_bin, sigterm_unwinds\n"
        "with sigterm_unwinds():\n"
        "    cluster = PrivateCluster(postgres_bin())\n"
        "    try:\n"
        "        cluster.init(); cluster.start()\n"
        "        Path(sys.argv[1]).write_text(f'{cluster.root} {cluster.process.pid}')\n"
        "        time.sleep(120)\n"
        "    finally:\n"
        "        cluster.remove()\n"
    )
    root_dir = Path(__file__).resolve().parents[2]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "hypertuna.settings"}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        report.unlink(missing_ok=True)
        holder = subprocess.Popen([sys.executable, "-c", script, str(report)], cwd=root_dir, env=env)
        try:
            deadline = time.monotonic() + 60
            while not report.exists() or not report.read_text():
                assert holder.poll() is None and time.monotonic() < deadline, "private cluster did not start"
                time.sleep(0.1)
            cluster_root, server_pid = report.read_text().split()
            holder.send_signal(sig)
            holder.wait(timeout=40)
            deadline = time.monotonic() + 30
            while _alive(int(server_pid)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _alive(int(server_pid)), f"the private server outlived {sig.name} of its owner"
            if sig == signal.SIGTERM:
                assert not Path(cluster_root).exists(), "SIGTERM must remove the private cluster"
            else:
                shutil.rmtree(cluster_root, ignore_errors=True)
        finally:
            with contextlib.suppress(ProcessLookupError):
                holder.kill()
            holder.wait(timeout=10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

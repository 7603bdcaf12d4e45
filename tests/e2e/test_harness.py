"""The e2e harness itself: a stack that fails to start leaves nothing behind."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.e2e.harness import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def _databases() -> set[str]:
    admin = urlunsplit(urlsplit(os.environ["DATABASE_URL"])._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


def test_a_stack_that_fails_to_start_stops_what_it_started_and_drops_its_database(tmp_path, monkeypatch):
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        pytest.skip("needs PostgreSQL")
    stack = Stack(tmp_path)
    name = urlsplit(stack.env["DATABASE_URL"]).path.lstrip("/")
    assert name in _databases()
    started = stack.procs

    def bridge_that_fails() -> None:
        stack.procs.append(stack._spawn("sleeper", ["sleep", "60"]))  # a process started before the failure
        raise RuntimeError("bridge exited with 1")

    monkeypatch.setattr(stack, "start_bridge", bridge_that_fails)
    with pytest.raises(RuntimeError, match="bridge exited"):
        stack.start()
    assert name not in _databases()
    assert [proc.process.poll() is not None for proc in started] == [True]

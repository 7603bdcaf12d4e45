"""The web process's replica reads (``relays/replica_reads.py``): on Postgres async connections on the event
loop, on SQLite threads; bounded, renewed when broken, not reused when cancelled mid-query, closed on demand,
and never in the way of other reads or of the process's other database calls."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from channels.db import database_sync_to_async
from coincurve import PrivateKey
from django.db import connection

from hypertuna.nostr import Filter, sign_event
from relays import replica_reads
from relays.models import Relay
from relays.replica_reads import close_read_connections, query_replica, read_replica
from replicas import queries
from tests.conftest import hex_key
from tests.replicas.helpers import ingest

pytestmark = pytest.mark.django_db(transaction=True)
EVERYTHING = [Filter.from_json({})]

needs_postgres = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="async replica reads are Postgres-only (SQLite reads on threads)"
)


def _other_connection() -> psycopg.Connection[Any]:
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("prepare_threshold", None)
    return psycopg.connect(**params, autocommit=True)


def _terminate(pid: int) -> None:
    with _other_connection() as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])


def _sessions() -> int:
    """Open sessions on the test database other than Django's own connection."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def _stored(content: str) -> tuple[str, str]:
    key = hex_key()
    event = sign_event(PrivateKey().secret, kind=1, content=content)
    ingest(key, [event])
    return key, event.id


def _slow_for(relay_key: str, seconds: float) -> Any:
    """``queries._answer`` with one slow statement for ``relay_key`` (Postgres sleeps on the server)."""
    real = queries._answer

    def answer(key: str, filters: Any, cap: int, *, postgres: bool) -> Iterator[Any]:
        if key != relay_key:
            return (yield from real(key, filters, cap, postgres=postgres))
        yield ("SELECT pg_sleep(%s)", [seconds])
        return []

    return answer


@needs_postgres
def test_reads_run_on_the_event_loop_over_one_kept_connection():
    key, event_id = _stored("kept")
    before = _sessions()

    async def reads() -> None:
        for _ in range(3):
            assert [e.id for e in await read_replica(key, EVERYTHING, max_limit=10)] == [event_id]
        reads = replica_reads._async_reads
        assert reads is not None and len(reads._open) == 1  # one read at a time: one connection, kept

    asyncio.run(reads())
    assert _sessions() == before + 1
    close_read_connections()
    assert _sessions() == before


@needs_postgres
def test_reads_on_the_event_loop_build_no_django_connection(monkeypatch):
    """Each REQ is handled in a task of its own, and Django keeps a connection object per task context on the
    event loop: asking Django anything there (``connection.vendor``) would build one per REQ (45 µs)."""
    from django.db.utils import ConnectionHandler

    key, event_id = _stored("kept")
    built: list[str] = []
    create = ConnectionHandler.create_connection
    monkeypatch.setattr(
        ConnectionHandler, "create_connection", lambda self, alias: built.append(alias) or create(self, alias)
    )

    async def reads() -> None:
        # As in the web process, every read in a task of its own whose parent never asked Django anything; the
        # first opens the read connection (from Django's settings).
        await asyncio.create_task(read_replica(key, EVERYTHING, max_limit=10))
        built.clear()
        for _ in range(5):
            read = asyncio.create_task(read_replica(key, EVERYTHING, max_limit=10))
            assert [e.id for e in await read] == [event_id]
        assert built == []

    asyncio.run(reads())


@needs_postgres
def test_a_read_whose_connection_was_terminated_reopens_it_and_answers():
    key, event_id = _stored("kept")

    async def reads() -> None:
        assert [e.id for e in await read_replica(key, EVERYTHING, max_limit=10)] == [event_id]
        for _ in range(2):  # twice: the renewed connection is kept and renewed in turn
            reads = replica_reads._async_reads
            assert reads is not None
            (old,) = reads._idle
            await asyncio.to_thread(_terminate, old.info.backend_pid)
            assert [e.id for e in await read_replica(key, EVERYTHING, max_limit=10)] == [event_id]
            assert reads._idle and reads._idle[0] is not old and old not in reads._open

    asyncio.run(reads())


@needs_postgres
def test_a_query_error_is_raised_and_the_connection_kept(monkeypatch):
    def failing(key: str, filters: Any, cap: int, *, postgres: bool) -> Iterator[Any]:
        yield ("SELECT 1 / 0", [])
        return []

    async def reads() -> None:
        await read_replica(hex_key(), EVERYTHING, max_limit=10)
        reads = replica_reads._async_reads
        assert reads is not None
        (kept,) = reads._idle
        monkeypatch.setattr(queries, "_answer", failing)
        with pytest.raises(psycopg.errors.DivisionByZero):
            await read_replica(hex_key(), EVERYTHING, max_limit=10)
        assert reads._idle == [kept]

    asyncio.run(reads())


@needs_postgres
def test_a_read_cancelled_mid_query_stops_the_query_on_the_server(monkeypatch):
    slow_key, (key, event_id) = hex_key(), _stored("after")
    monkeypatch.setattr(queries, "_answer", _slow_for(slow_key, 30))

    def sleeping() -> int:
        with _other_connection() as other:
            return other.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%%'"
            ).fetchone()[0]

    async def reads() -> None:
        slow = asyncio.ensure_future(read_replica(slow_key, EVERYTHING, max_limit=10))
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(sleeping) == 1
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert await asyncio.to_thread(sleeping) == 0
        assert [e.id for e in await read_replica(key, EVERYTHING, max_limit=10)] == [event_id]
        reads = replica_reads._async_reads
        assert reads is not None and len(reads._open) == 1  # the cancelled read's connection, idle again

    asyncio.run(reads())


@needs_postgres
def test_reads_at_once_are_bounded_by_the_setting(monkeypatch, settings):
    settings.HYPERTUNA_REPLICA_READ_CONNECTIONS = 2
    slow_key = hex_key()
    monkeypatch.setattr(queries, "_answer", _slow_for(slow_key, 0.3))
    most = 0

    async def reads() -> None:
        nonlocal most
        tasks = [asyncio.ensure_future(read_replica(slow_key, EVERYTHING, max_limit=10)) for _ in range(5)]
        while not all(task.done() for task in tasks):
            reads = replica_reads._async_reads
            most = max(most, len(reads._open) if reads else 0)
            await asyncio.sleep(0.01)
        assert [task.result() for task in tasks] == [[]] * 5

    asyncio.run(reads())
    assert most == 2


@pytest.mark.parametrize("on_postgres", [True, False], ids=["async", "threads"])
async def test_a_slow_read_holds_up_neither_other_reads_nor_other_database_calls(monkeypatch, on_postgres):
    """A slow replica read (a cold cache, a heavy filter) must not make every other socket of the process wait,
    whether it reads a replica or authenticates (Django's one sync thread)."""
    if on_postgres and connection.vendor != "postgresql":
        pytest.skip("async replica reads are Postgres-only")
    monkeypatch.setattr(replica_reads, "_on_postgres", lambda: on_postgres)
    slow_key = hex_key()
    if on_postgres:
        monkeypatch.setattr(queries, "_answer", _slow_for(slow_key, 10))
    else:
        real = queries.query_events
        release = asyncio.Event()
        loop = asyncio.get_running_loop()

        def query(relay_key: str, filters: Any, *, max_limit: int) -> Any:
            if relay_key == slow_key:
                asyncio.run_coroutine_threadsafe(asyncio.wait_for(release.wait(), 10), loop).result(11)
                return []
            return real(relay_key, filters, max_limit=max_limit)

        monkeypatch.setattr(queries, "query_events", query)
    slow = asyncio.ensure_future(read_replica(slow_key, EVERYTHING, max_limit=10))
    await asyncio.sleep(0.2)
    try:
        started = time.monotonic()
        assert await read_replica(hex_key(), EVERYTHING, max_limit=10) == []
        assert await database_sync_to_async(Relay.objects.count)() == 0
        assert time.monotonic() - started < 5
        assert not slow.done()
    finally:
        if on_postgres:
            slow.cancel()  # the server's sleep is cancelled with it
            with contextlib.suppress(asyncio.CancelledError):
                await slow
        else:
            release.set()
    if not on_postgres:
        assert await slow == []


@needs_postgres
def test_a_read_thread_renews_a_broken_connection():
    """The thread path's reads (SQLite in service; any Django connection here) run on one long-lived
    connection per thread; when it is dropped, the next read opens a new one instead of failing."""
    key, event_id = _stored("kept")

    def terminate_this_connection() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            _terminate(cursor.fetchone()[0])

    terminate_this_connection()
    with pytest.raises(psycopg.OperationalError):  # what a bare query does: the broken connection stays
        queries.query_events(key, EVERYTHING, max_limit=10)
    assert [e.id for e in query_replica(key, EVERYTHING, max_limit=10)] == [event_id]
    terminate_this_connection()
    assert [e.id for e in query_replica(key, EVERYTHING, max_limit=10)] == [event_id]


@needs_postgres
def test_closing_the_read_threads_closes_their_connections(monkeypatch):
    monkeypatch.setattr(replica_reads, "_on_postgres", lambda: False)
    before = _sessions()
    asyncio.run(read_replica(hex_key(), EVERYTHING, max_limit=10))
    assert _sessions() == before + 1  # the read thread's own connection
    close_read_connections()
    assert _sessions() == before

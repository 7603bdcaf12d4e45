"""The web process's replica reads: REQ answers from the materialized replica, off Django's one sync thread.

On Postgres a read runs on the event loop over an async psycopg connection of the process's own (at most
``HYPERTUNA_REPLICA_READ_CONNECTIONS`` of them, opened on first use and kept): no thread hand-off there and
back, and a slow query waits on its socket, not on a thread. (Timed inside the web process, the two hops
took 0.22 ms of a 100-event answer's 2.6 ms; the gateway's p50 over 8 interleaved runs each at 1M events:
4.09 ms against 4.59 for a 100-event time window, 1.37 against 1.41 for an answer of EOSE alone.) On SQLite
(the embedded single-node default, whose driver has no async API) a read runs on as many threads of the
process's own, each with its own connection.

Either way a slow replica query holds up neither other sockets' reads nor the process's other database calls
(authentication, token checks: Django's sync thread), and a read whose connection broke under it (Postgres
restarted, the backend terminated) reopens it and runs once more, so replica reads come back with the
database instead of failing until something renews the connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from django.conf import settings

from hypertuna.nostr import Filter

if TYPE_CHECKING:
    import psycopg

    from replicas.queries import StoredEvent


class _AsyncReads:
    """Async psycopg connections of one event loop: at most ``size`` reads at once, idle connections kept."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self._slots = asyncio.Semaphore(size)
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._open: set[psycopg.AsyncConnection[Any]] = set()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        import psycopg
        from django.db import connection

        params = connection.get_connection_params()  # the settings' database, options (prepare_threshold)
        params.pop("cursor_factory", None)  # Django's sync cursor class
        conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
        self._open.add(conn)
        return conn

    def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._open.discard(conn)
        conn.pgconn.finish()  # no I/O to wait for: the socket is closed at once

    async def _read_on(
        self, conn: psycopg.AsyncConnection[Any], relay_key: str, filters: Sequence[Filter], max_limit: int
    ) -> list[StoredEvent]:
        """The read on ``conn``, which goes back to the idle ones unless it broke. A read cancelled in the middle
        of a query (its socket closed) has had the query cancelled on the server by psycopg; the connection is
        kept if that left it idle, else closed."""
        from psycopg.pq import TransactionStatus

        from replicas.queries import aquery_events_on

        try:
            events = await aquery_events_on(conn, relay_key, filters, max_limit=max_limit)
        except BaseException:
            if conn.broken or conn.closed or conn.info.transaction_status is not TransactionStatus.IDLE:
                self._discard(conn)
            else:
                self._idle.append(conn)  # the query's own error, or a cancelled query: the connection is fine
            raise
        self._idle.append(conn)
        return events

    async def query(self, relay_key: str, filters: Sequence[Filter], max_limit: int) -> list[StoredEvent]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                return await self._read_on(conn, relay_key, filters, max_limit)
            except Exception:
                if not conn.closed:
                    raise
            return await self._read_on(await self._connect(), relay_key, filters, max_limit)

    def close(self) -> None:
        for conn in list(self._open):
            self._discard(conn)
        self._idle.clear()


_async_reads: _AsyncReads | None = None
_read_pool: tuple[concurrent.futures.ThreadPoolExecutor, int] | None = None


def _on_postgres() -> bool:
    # From the settings, not ``connection.vendor``: on the event loop that builds a database wrapper for every
    # new task (45 µs a REQ).
    return "postgresql" in settings.DATABASES["default"]["ENGINE"]


async def read_replica(relay_key: str, filters: Sequence[Filter], *, max_limit: int) -> list[StoredEvent]:
    """The replica's answer to a REQ with ``filters`` (``replicas.queries.query_events``), read as the module
    docstring says."""
    global _async_reads, _read_pool
    size = settings.HYPERTUNA_REPLICA_READ_CONNECTIONS
    loop = asyncio.get_running_loop()
    if _on_postgres():
        if _async_reads is None or _async_reads.loop is not loop:
            # One loop per process in service; a test run starts a loop per test, and a connection belongs to one.
            if _async_reads is not None:
                _async_reads.close()
            _async_reads = _AsyncReads(loop, size)
        return await _async_reads.query(relay_key, filters, max_limit)
    if _read_pool is None:
        _read_pool = (concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="replica-read"), size)
    read = partial(query_replica, relay_key, filters, max_limit=max_limit)
    return await loop.run_in_executor(_read_pool[0], read)


def close_read_connections() -> None:
    """Close the replica reads' database connections and stop their threads (a test run's end, so that its
    database can be dropped; a process exit closes them anyway). The next read opens new ones."""
    global _async_reads, _read_pool
    if _async_reads is not None:
        _async_reads.close()
        _async_reads = None
    if _read_pool is None:
        return
    (pool, size), _read_pool = _read_pool, None
    from django.db import connections

    barrier = threading.Barrier(size, timeout=10)

    def close_own() -> None:
        # Each of the ``size`` tasks waits for the others, so each runs on a thread of its own.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        connections.close_all()

    for _ in range(size):
        pool.submit(close_own)
    pool.shutdown(wait=True)


def query_replica(relay_key: str, filters: Sequence[Filter], *, max_limit: int) -> list[StoredEvent]:
    """``query_events`` on this thread's Django connection (a read thread's), without the per-call connection
    check of ``database_sync_to_async`` (a round trip per REQ); a broken connection is renewed once."""
    import psycopg
    from django.db import InterfaceError, OperationalError, connection

    from replicas.queries import query_events

    try:
        return query_events(relay_key, filters, max_limit=max_limit)
    # Django's errors, and psycopg's own from the prepared statements run on the raw connection.
    except (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError):
        if connection.in_atomic_block:
            raise
        connection.close()
        return query_events(relay_key, filters, max_limit=max_limit)


__all__ = ["close_read_connections", "query_replica", "read_replica"]

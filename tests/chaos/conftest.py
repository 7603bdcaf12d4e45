"""Fixtures of the chaos suite: real processes (the end-to-end harness), faults injected into them, and for the
Redis and Postgres cases a private ``redis-server`` and a private Postgres cluster that the test may stop and
start (never the machine's shared ones)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.helpers import OPERATOR_ENV, PrivateRedis
from tests.e2e.harness import Stack, node_available


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/chaos/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def need_node() -> None:
    if not node_available():
        pytest.fail("the chaos suite needs Node 20 and `npm ci` in bridge/ (make test installs both)")


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[tuple[object, str]]:
    """A throwaway cluster (initdb in a temporary directory, own port) and the URL of a database in it."""
    from tests.escrow.test_pg_restart import PrivateCluster, postgres_bin, sigterm_unwinds

    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("needs the PostgreSQL server binaries (/usr/lib/postgresql/<major>/bin)")
    with sigterm_unwinds():
        cluster = PrivateCluster(bindir)
        try:
            cluster.init()
            cluster.start()
            cluster._run("createdb", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "chaos")
            yield cluster, f"postgres://postgres@127.0.0.1:{cluster.port}/chaos"
        finally:
            cluster.remove()


# The blind peer's smallest byte budget and no stale grace: the GC cases need them, and neither touches what
# the other mirror cases check (the budget clears priority-0 cores only, stale hygiene runs on request).
MIRROR_STACK_ENV = {"HYPERTUNA_BRIDGE_BLIND_PEER_MAX_BYTES": "1000000", "HYPERTUNA_BRIDGE_BLIND_PEER_STALE_MS": "0"}


@pytest.fixture(scope="package")
def mirror_stack(tmp_path_factory) -> Iterator[Stack]:
    """One gateway node on its own DHT testnet (the bridge may restart) for the mirror and GC cases."""
    stack = start_stack(tmp_path_factory.mktemp("mirrors"), testnet=True, env=MIRROR_STACK_ENV)
    try:
        yield stack
    finally:
        stack.stop()


def start_stack(tmp: Path, *, testnet: bool = False, **kwargs) -> Stack:
    """A started ``Stack`` with operator keys; ``testnet``: its own DHT testnet, so the bridge may restart."""
    need_node()
    env = {**OPERATOR_ENV, **kwargs.pop("env", {})}
    stack = Stack(tmp, env=env, **kwargs)
    try:
        if testnet:
            stack.start_testnet()
        return stack.start()
    except BaseException:
        stack.stop()
        raise

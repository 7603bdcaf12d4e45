"""The interop suite: the published worker runtime behind the real gateway processes (bridge, uvicorn, the
bridge event consumer, Celery worker + beat, the escrow role), everything on 127.0.0.1.

It never skips: without Node or ``npm ci`` in ``interop/`` it fails and says how to install (``make test``
installs both). A worker that tried to reach a non-loopback address, or died of an unhandled rejection,
fails the test that ran it.
"""

from __future__ import annotations

import pytest

from tests.e2e.harness import Stack
from tests.interop.realworker import RealWorker, runtime_version

OPERATOR = ("interop-ops", "operator-secret-for-interop")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/interop/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="session")
def runtime() -> str:
    version = runtime_version()
    if version is None:
        pytest.fail("the interop suite needs Node 20 and `npm ci` in interop/ (make test installs both)")
    return version


# Progress sampled often and an owner's contact re-announced twice a second, so mirror evidence tests see the
# announcement follow the worker within a second or two.
ANNOUNCE_MS = 500


@pytest.fixture(scope="session")
def stack(tmp_path_factory, runtime):
    """One gateway for the whole suite (each test module runs its own workers and relays)."""
    stack = Stack(
        tmp_path_factory.mktemp("interop"),
        celery=True,
        escrow=True,
        env={
            "HYPERTUNA_OPERATOR_KEYS": f"{OPERATOR[0]}:{OPERATOR[1]}",
            # Celery beat materializes the replica (no manual sync in this suite).
            "HYPERTUNA_REPLICA_SYNC_INTERVAL": "2",
            "HYPERTUNA_BRIDGE_MIRROR_PROGRESS_MS": "250",
            "HYPERTUNA_BRIDGE_MIRROR_ANNOUNCE_MS": str(ANNOUNCE_MS),
        },
    )
    # The bridge tells workers the gateway's origin in its handshake; the runtime routes its relays by it.
    stack.env["HYPERTUNA_PUBLIC_URL"] = stack.base_url
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def workers(stack):
    """Starts workers for a module; every test of the module fails if any of them hit the guard or died."""
    started: list[RealWorker] = []

    def start(name: str, **kwargs) -> RealWorker:
        worker = RealWorker(stack, name, **kwargs)
        started.append(worker)
        return worker

    start.started = started  # type: ignore[attr-defined]
    return start


@pytest.fixture(autouse=True)
def _no_runtime_failures(request):
    yield
    if "workers" not in request.fixturenames:
        return
    started = request.getfixturevalue("workers").started
    failures = [(w.name, f) for w in started for f in w.failures()]
    assert not failures, f"worker runtime failures (logs: {[str(w.log_path()) for w in started]}): {failures}"

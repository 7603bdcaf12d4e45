from __future__ import annotations

import pytest

from tests.e2e.harness import Stack, node_available


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not node_available():
        pytest.fail("end-to-end tests need Node 20 and `npm ci` in bridge/ (make test installs both)")
    stack = Stack(tmp_path_factory.mktemp("stack")).start()
    try:
        yield stack
    finally:
        stack.stop()

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _replica_settings(settings: Any) -> None:
    # Most tests use dummy signatures for speed; test_sync checks verification with real ones.
    settings.HYPERTUNA_REPLICA_VERIFY_SIGNATURES = False
    settings.HYPERTUNA_REPLICA_MAX_LIMIT = 500
    settings.HYPERTUNA_REPLICA_STALE_AFTER = 600
    settings.HYPERTUNA_REPLICA_FAIL_AFTER = 3

"""Every process that loads Django (web, bridge event consumer, manage.py) knows every task by name, not
only Celery workers, whose start-up is what runs Celery's lazy autodiscovery."""

from __future__ import annotations

import subprocess
import sys

from tests.e2e.harness import ROOT

TASKS = ("relays.tasks.push_blind_peer_trust", "replicas.tasks.perform_mirror_action", "escrow.tasks.expire_leases")


def test_tasks_are_registered_outside_celery_workers():
    probe = "from celery import current_app; import sys; sys.stdout.write(' '.join(sorted(current_app.tasks)))"
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    registered = set(result.stdout.split())
    assert set(TASKS) <= registered

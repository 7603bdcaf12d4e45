"""`.ci/run` (the CI entry point) runs `make lint` and `make test`, and fails when either fails.

Run with stand-ins on PATH for make, pg_isready, redis-cli, psql, caddy, promtool, chromium and apt-get
that only record their calls."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STUBS = {
    "make": 'echo "make $*" >> "$CI_CALLS"; [ "$1" != "$CI_FAIL" ]',
    "pg_isready": "exit 0",
    "redis-cli": "echo PONG",
    "psql": "echo 1",
    "pg_ctlcluster": 'echo "pg_ctlcluster $*" >> "$CI_CALLS"',
    "redis-server": 'echo "redis-server $*" >> "$CI_CALLS"',
    "caddy": "exit 0",
    "promtool": "exit 0",
    "chromium": "exit 0",
    "apt-get": 'echo "apt-get $*" >> "$CI_CALLS"; exit 1',
}


def run_ci(tmp_path: Path, fail: str = "") -> tuple[int, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in STUBS.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\n{body}\n")
        stub.chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CI_CALLS": str(calls),
        "CI_FAIL": fail,
    }
    result = subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, timeout=60)
    return result.returncode, calls.read_text().splitlines()


def test_ci_runs_lint_then_tests(tmp_path):
    code, calls = run_ci(tmp_path)
    assert code == 0
    assert calls == ["make lint", "make test"], "CI must run the linters and the tests, and touch no server"


@pytest.mark.parametrize("failing", ["lint", "test"])
def test_ci_fails_when_lint_or_tests_fail(tmp_path, failing):
    code, calls = run_ci(tmp_path, fail=failing)
    assert code != 0
    assert calls[-1] == f"make {failing}"
    assert "make lint" in calls


def test_ci_never_restarts_or_stops_the_shared_servers():
    script = (ROOT / ".ci" / "run").read_text()
    for forbidden in (" restart", " stop", "shutdown", "FLUSHALL"):
        assert forbidden not in script, forbidden
    assert os.access(ROOT / ".ci" / "run", os.X_OK)

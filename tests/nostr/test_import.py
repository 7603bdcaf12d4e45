"""``hypertuna.nostr`` must stay Django-free: checked in a fresh interpreter and in the source."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "hypertuna" / "nostr"

PROBE = """
import sys
import hypertuna.nostr
import hypertuna.nostr.crypto, hypertuna.nostr.events, hypertuna.nostr.filters
import hypertuna.nostr.frames, hypertuna.nostr.visibility, hypertuna.nostr.errors
loaded = sorted(name for name in sys.modules if name == "django" or name.startswith("django."))
print(",".join(loaded))
"""


def test_importing_the_package_does_not_import_django() -> None:
    # A fresh interpreter: this pytest process has Django loaded by pytest-django. The settings
    # variable is set as in production, so anything that imports Django when it is set would show.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "hypertuna.settings", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing hypertuna.nostr loaded: {result.stdout.strip()}"


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_module_imports_django_even_lazily() -> None:
    sources = sorted(PACKAGE.glob("*.py"))
    assert sources
    for path in sources:
        offenders = {m for m in _imported_modules(path) if m.split(".")[0] in {"django", "rest_framework", "channels"}}
        assert not offenders, f"{path.name} imports {offenders}"


def test_coincurve_is_imported_only_by_the_crypto_module() -> None:
    importers = {path.name for path in PACKAGE.glob("*.py") if "coincurve" in _imported_modules(path)}
    assert importers == {"crypto.py"}

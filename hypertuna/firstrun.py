"""What ``make run`` prepares in its ``var/`` folder before the group starts.

On the embedded default it creates what a first run needs and keeps it in ``var/`` (mode 0600): a
registration secret, a Django secret key and an operator account, each generated once and reused
afterwards, and the development escrow's certificates and database. The operator password is printed once,
when the account is created; later starts point to its file. Secrets reach child processes through the
environment, never their command line (``ps``).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def _persisted_secret(path: Path, nbytes: int = 32) -> str:
    """A secret generated on first use and kept (mode 0600) for later runs."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def prepare_environment(var_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "hypertuna.settings")
    env.setdefault("HYPERTUNA_VAR_DIR", str(var_dir))
    if not env.get("HYPERTUNA_REGISTRATION_SECRET"):
        env["HYPERTUNA_REGISTRATION_SECRET"] = _persisted_secret(var_dir / "registration-secret")
    if not env.get("SECRET_KEY"):
        env["SECRET_KEY"] = _persisted_secret(var_dir / "django-secret-key", 40)
    # One JSON object per line in the members' log files: the console picks its events out of them.
    env.setdefault("HYPERTUNA_LOG_FORMAT", "json")
    return env


def run_step(argv: list[str], env: dict[str, str], output: int | None, *, check: bool = True) -> int:
    """A setup command (migrations, certificates) run to completion; its output goes to ``output`` (a file
    descriptor: the setup log) when given."""
    stderr = subprocess.STDOUT if output is not None else None
    return subprocess.run(argv, env=env, cwd=BASE_DIR, check=check, stdout=output, stderr=stderr).returncode


def ensure_operator(env: dict[str, str], var_dir: Path, output: int | None = None) -> str | None:
    """Create an ``admin`` superuser with a generated password when no superuser exists yet.

    Returns the password only when the account was created by this call (it is shown once); afterwards it
    stays in ``var/admin-password`` (0600) and is never printed again."""
    password_file = var_dir / "admin-password"
    code = (
        "from django.contrib.auth import get_user_model;"
        "U=get_user_model();"
        "import sys;"
        "sys.exit(0 if U.objects.filter(is_superuser=True).exists() else 3)"
    )
    if run_step([sys.executable, "-c", f"import django;django.setup();{code}"], env, output, check=False) == 0:
        return None
    password = _persisted_secret(password_file, 12)
    create = (
        "import django;django.setup();"
        "from django.contrib.auth import get_user_model;"
        f"get_user_model().objects.create_superuser('admin', None, {password!r})"
    )
    run_step([sys.executable, "-c", create], env, output)
    return password


def prepare_escrow(env: dict[str, str], var_dir: Path, port: int, output: int | None = None) -> dict[str, str]:
    """Development escrow next to the gateway: a private CA and certificates (created once), the escrow
    role's own database and state folder, and the gateway configured as its mTLS client."""
    pki = var_dir / "escrow" / "pki"
    if not (pki / "ca.pem").exists():
        run_step([sys.executable, "manage.py", "escrow_certs", "init", "--dir", str(pki)], env, output)
    env.setdefault("HYPERTUNA_ESCROW_URL", f"https://127.0.0.1:{port}")
    env.setdefault("HYPERTUNA_ESCROW_CA", str(pki / "ca.pem"))
    env.setdefault("HYPERTUNA_ESCROW_CLIENT_CERT", str(pki / "gateway.pem"))
    env.setdefault("HYPERTUNA_ESCROW_CLIENT_KEY", str(pki / "gateway-key.pem"))
    service_dir = var_dir / "escrow-service"
    escrow_env = {
        **env,
        "HYPERTUNA_ROLE": "escrow",
        "HYPERTUNA_VAR_DIR": str(service_dir),
        "ESCROW_DATABASE_URL": env.get("ESCROW_DATABASE_URL") or f"sqlite:///{service_dir / 'escrow.sqlite3'}",
        "HYPERTUNA_ESCROW_PKI_DIR": str(pki),
        "HYPERTUNA_ESCROW_TLS_CA": str(pki / "ca.pem"),
        "HYPERTUNA_ESCROW_TLS_CERT": str(pki / "server.pem"),
        "HYPERTUNA_ESCROW_TLS_KEY": str(pki / "server-key.pem"),
        "HYPERTUNA_ESCROW_LISTEN_PORT": str(port),
    }
    service_dir.mkdir(parents=True, exist_ok=True)
    run_step([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], escrow_env, output)
    return escrow_env

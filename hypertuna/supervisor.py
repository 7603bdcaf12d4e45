"""``make run``: start the whole gateway as one supervised group of processes.

Starts the web process (Daphne) and Celery (worker with embedded beat), waits until the gateway answers
``/ready``, prints where everything is, and stops the whole group cleanly on Ctrl-C (SIGINT/SIGTERM) or as
soon as any member dies (a half-running gateway is worse than a stopped one).

On the embedded default it also creates what a first run needs and keeps it in ``var/``: a registration
secret, a Django secret key and an operator account, each generated once and reused afterwards.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
STOP_GRACE_SECONDS = 10


@dataclass
class Member:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = field(default=None)


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
    env.setdefault("HYPERTUNA_LOG_FORMAT", "text")
    return env


def ensure_operator(env: dict[str, str], var_dir: Path) -> str | None:
    """Create an ``admin`` superuser with a generated password when no superuser exists yet."""
    password_file = var_dir / "admin-password"
    code = (
        "from django.contrib.auth import get_user_model;"
        "U=get_user_model();"
        "import sys;"
        "sys.exit(0 if U.objects.filter(is_superuser=True).exists() else 3)"
    )
    result = subprocess.run([sys.executable, "-c", f"import django;django.setup();{code}"], env=env, cwd=BASE_DIR)
    if result.returncode == 0:
        return password_file.read_text().strip() if password_file.exists() else None
    password = _persisted_secret(password_file, 12)
    create = (
        "import django;django.setup();"
        "from django.contrib.auth import get_user_model;"
        f"get_user_model().objects.create_superuser('admin', None, {password!r})"
    )
    subprocess.run([sys.executable, "-c", create], env=env, cwd=BASE_DIR, check=True)
    return password


def wait_ready(url: str, members: list[Member], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(m.process is not None and m.process.poll() is not None for m in members):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback URL we built)
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def stop_all(members: list[Member]) -> None:
    for member in members:
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for member in members:
        if member.process is None:
            continue
        try:
            member.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"[supervisor] {member.name} did not stop in {STOP_GRACE_SECONDS} s; killing it", flush=True)
            member.process.kill()
            member.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Hypertuna Gateway (web + celery) as one group.")
    parser.add_argument("--host", default=os.environ.get("HYPERTUNA_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("HYPERTUNA_PORT", "8000")))
    parser.add_argument("--var-dir", default=os.environ.get("HYPERTUNA_VAR_DIR", str(BASE_DIR / "var")))
    args = parser.parse_args(argv)

    var_dir = Path(args.var_dir).resolve()
    env = prepare_environment(var_dir)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], env=env, cwd=BASE_DIR, check=True)
    password = ensure_operator(env, var_dir)

    python = sys.executable
    members = [
        Member("web", [python, "-m", "daphne", "-b", args.host, "-p", str(args.port), "hypertuna.asgi:application"]),
        Member(
            "celery",
            [python, "-m", "celery", "-A", "hypertuna.celery", "worker", "-B", "--loglevel", "INFO",
             "--concurrency", "2", "-s", str(var_dir / "celerybeat-schedule")],
        ),
    ]

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    for member in members:
        # Own process group per member: Ctrl-C reaches the supervisor, which then stops each in order.
        member.process = subprocess.Popen(member.argv, env=env, cwd=BASE_DIR, start_new_session=True)
        print(f"[supervisor] started {member.name} (pid {member.process.pid})", flush=True)

    base = f"http://{args.host}:{args.port}"
    if wait_ready(f"{base}/ready", members):
        print(
            "\n"
            f"  Hypertuna Gateway is ready at {base}\n"
            f"    admin:    {base}/admin/  (user admin{', password ' + password if password else ''})\n"
            f"    API docs: {base}/api/docs/\n"
            f"    metrics:  {base}/metrics   health: {base}/health   ready: {base}/ready\n"
            f"    worker registration secret: {var_dir / 'registration-secret'}\n"
            "  Press Ctrl-C to stop.\n",
            flush=True,
        )
    elif not stopping:
        print("[supervisor] the gateway did not become ready; stopping", flush=True)
        stop_all(members)
        return 1

    exit_code = 0
    while not stopping:
        for member in members:
            assert member.process is not None
            code = member.process.poll()
            if code is not None:
                print(f"[supervisor] {member.name} exited with {code}; stopping the group", flush=True)
                exit_code = code or 1
                stopping = True
                break
        time.sleep(0.5)
    print("[supervisor] stopping", flush=True)
    stop_all(members)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

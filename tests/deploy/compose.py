"""Reading docker-compose.yml, the Dockerfile and the supervisor without a container engine.

Shared by the static checks (test_compose.py) and the smoke run (test_smoke.py). A process is described by
its *kind* (what it runs, independent of paths, ports and interpreter) and the *role* it runs in
(``gateway`` or ``escrow``), so the processes ``make run`` starts can be matched with compose services.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
NODES_FILE = REPO / "deploy" / "docker-compose.nodes.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
CADDYFILE = REPO / "deploy" / "proxy" / "Caddyfile"
SUPERVISOR = REPO / "hypertuna" / "supervisor.py"
WEBSERVER = REPO / "hypertuna" / "webserver.py"
# Where the image puts the repository (Dockerfile WORKDIR).
IMAGE_ROOT = "/app"

_INTERPOLATION = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\})")


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), f"{path.name} has no services"
    return data


def interpolated_names(text: str) -> set[str]:
    """Variables compose substitutes from .env (``${NAME...}``; ``$$`` is a literal dollar)."""
    return {m.group("name") for m in _INTERPOLATION.finditer(text) if m.group("name")}


class InterpolationError(ValueError):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's substitution: ``${A}``, ``${A:-default}``, ``${A-default}``, ``${A:?error}``, ``${A?error}``, ``$$``."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        if name is None:
            return "$"
        current = env.get(name)
        if op in (":-", ":?"):
            missing = not current
        else:
            missing = current is None
        if op in (":-", "-"):
            return arg if missing else str(current)
        if op in (":?", "?"):
            if missing:
                raise InterpolationError(f"{name}: {arg}")
            return str(current)
        return current or ""

    return _INTERPOLATION.sub(replace, value)


def env_example_names() -> set[str]:
    return {m.group(1) for m in re.finditer(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M)}


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def healthcheck_argv(service: dict[str, Any]) -> tuple[str, list[str]] | None:
    """``("CMD", argv)`` or ``("CMD-SHELL", [script])``, or None without a health check."""
    test = (service.get("healthcheck") or {}).get("test")
    if not test:
        return None
    if isinstance(test, str):
        return "CMD-SHELL", [test]
    return str(test[0]), [str(t) for t in test[1:]]


def container_path_to_repo(path: str) -> Path | None:
    """A path inside the image that belongs to the repository copy, as a path in this checkout."""
    if path == IMAGE_ROOT or path.startswith(IMAGE_ROOT + "/"):
        return REPO / path[len(IMAGE_ROOT) :].lstrip("/")
    return None


@dataclass(frozen=True)
class Process:
    role: str  # gateway | escrow
    kind: str  # e.g. web, celery-worker, celery-beat, manage:bridge_events, node:bridge/src/main.mjs


def process_kinds(argv: list[str], cwd: Path) -> set[str]:
    """What a command runs. ``python``/``python3`` and the interpreter path all count as Python."""
    if not argv:
        return set()
    program = Path(argv[0]).name
    if program == "node" and len(argv) > 1:
        script = (cwd / argv[1]).resolve()
        try:
            return {f"node:{script.relative_to(REPO)}"}
        except ValueError:
            return {f"node:{script}"}
    if program.startswith("python") or program == "<python>":
        rest = argv[1:]
        if rest[:1] == ["-m"] and len(rest) > 1:
            return _module_kinds(rest[1], rest[2:])
        if rest and Path(rest[0]).name == "manage.py":
            return {f"manage:{rest[1]}"} if len(rest) > 1 else {"manage:"}
        return {f"script:{rest[0]}"} if rest else set()
    if program in ("celery", "uvicorn"):
        return _module_kinds(program, argv[1:])
    return {f"exec:{program}"}


def _module_kinds(module: str, args: list[str]) -> set[str]:
    if module == "uvicorn":
        return {"web"}
    if module == "celery":
        sub = celery_subcommand(args)
        if sub == "worker":
            return {"celery-worker", "celery-beat"} if "-B" in args or "--beat" in args else {"celery-worker"}
        if sub == "beat":
            return {"celery-beat"}
        return {f"celery:{sub}"}
    return {f"module:{module}"}


def celery_subcommand(args: list[str]) -> str | None:
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("-A", "--app", "-b", "--broker", "--workdir", "--config"):
            skip = True
            continue
        if not arg.startswith("-"):
            return arg
    return None


def option_value(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def service_workdir(service: dict[str, Any]) -> Path:
    workdir = service.get("working_dir") or IMAGE_ROOT
    mapped = container_path_to_repo(str(workdir))
    assert mapped is not None, f"working_dir {workdir} is outside the image's {IMAGE_ROOT}"
    return mapped


def compose_processes(compose: dict[str, Any]) -> dict[str, set[Process]]:
    """Processes each service of our image runs (services from other images are infrastructure)."""
    result: dict[str, set[Process]] = {}
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        role = service_env(service).get("HYPERTUNA_ROLE") or "gateway"
        kinds = process_kinds(command_argv(service), service_workdir(service))
        result[name] = {Process(role, kind) for kind in kinds}
    return result


# ---- supervisor (hypertuna/supervisor.py) ---------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    argv: list[str]
    cwd: Path
    role: str

    @property
    def processes(self) -> set[Process]:
        return {Process(self.role, kind) for kind in process_kinds(self.argv, self.cwd)}


def supervisor_members() -> list[Member]:
    """Every ``Member(name, [argv...], cwd=..., env=...)`` the supervisor builds, read from its source.

    Reading the source (not running ``make run``) keeps this a static check. An argv built by a helper of the
    module or of ``hypertuna/webserver.py`` (``web_argv(...)``) is read from the list the helper returns.
    Elements that are not literals become ``<python>`` (the interpreter variable) or ``<expr>``;
    ``cwd=BASE_DIR / "x"`` maps to the folder ``x``; ``env=escrow_env`` (or any env whose name mentions escrow)
    means the escrow role.
    """
    tree = ast.parse(SUPERVISOR.read_text())
    # Helpers that build an argv (``web_argv(python, host, port)``, here or in the web-server module): the list
    # literal they return.
    builders = {
        fn.name: ret.value
        for module in (tree, ast.parse(WEBSERVER.read_text()))
        for fn in ast.walk(module)
        if isinstance(fn, ast.FunctionDef)
        for ret in ast.walk(fn)
        if isinstance(ret, ast.Return) and isinstance(ret.value, ast.List)
    }
    members = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Member"):
            continue
        if len(node.args) < 2 or not isinstance(node.args[0], ast.Constant):
            continue
        command = node.args[1]
        if isinstance(command, ast.Call) and isinstance(command.func, ast.Name) and command.func.id in builders:
            command = builders[command.func.id]
        if not isinstance(command, ast.List):
            continue
        argv = [_literal(element) for element in command.elts]
        cwd = REPO
        role = "gateway"
        for keyword in node.keywords:
            if keyword.arg == "cwd":
                parts = [c.value for c in ast.walk(keyword.value) if isinstance(c, ast.Constant)]
                cwd = REPO.joinpath(*[str(p) for p in parts])
            if keyword.arg == "env" and "escrow" in ast.unparse(keyword.value):
                role = "escrow"
        members.append(Member(str(node.args[0].value), argv, cwd, role))
    return members


def _literal(node: ast.expr) -> str:
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.Name) and node.id in ("python", "sys.executable"):
        return "<python>"
    if isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.executable":
        return "<python>"
    return "<expr>"


# ---- Dockerfile -----------------------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    alias: str | None
    instructions: list[tuple[str, str]]


def dockerfile_stages(text: str | None = None) -> list[Stage]:
    text = DOCKERFILE.read_text() if text is None else text
    logical: list[str] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--")]
            alias = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], alias, []))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def image_command() -> list[str]:
    """The image's default command: the exec-form ``CMD`` of the Dockerfile's last stage."""
    commands = [rest for keyword, rest in dockerfile_stages()[-1].instructions if keyword == "CMD"]
    assert commands, "the Dockerfile's last stage has no CMD"
    return [str(part) for part in json.loads(commands[-1])]


def node_major_of_image(image: str) -> int | None:
    match = re.fullmatch(r"(?:docker\.io/)?(?:library/)?node:(\d+)(?:[.\-][\w.\-]*)?(?:@sha256:[0-9a-f]{64})?", image)
    return int(match.group(1)) if match else None


def engines_minimum_major(spec: str) -> int:
    """The lowest Node major a simple ``engines`` range admits (``>=20``, ``>=20.6.0``, ``^20``, ``20.x``)."""
    match = re.search(r"(\d+)", spec)
    if not match:
        raise ValueError(f"cannot read the engines range {spec!r}")
    return int(match.group(1))

"""Static checks of the deployment: docker-compose.yml, the Dockerfile, .env.example and the proxy config
against what the code needs. No container engine is involved; test_smoke.py runs the commands."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
from django.core.management import get_commands

from tests.deploy import compose as c

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# The reference worker is the demo relay's host in `make run`, not a process of the gateway.
NOT_DEPLOYED = {"node:bridge/src/worker/main.mjs"}
BRIDGE_USERS = {"web", "celery-worker", "manage:bridge_events", "node:bridge/src/main.mjs"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return c.load_compose()


# ---- every process of `make run` has a service ----------------------------------------------------


def test_supervisor_members_are_read_from_its_source():
    members = {m.name: m for m in c.supervisor_members()}
    # The reader must see the bridge, web, Celery and escrow members, or the next test proves nothing.
    kinds = set().union(*(m.processes for m in members.values()))
    assert c.Process("gateway", "node:bridge/src/main.mjs") in kinds
    assert c.Process("gateway", "web") in kinds
    assert c.Process("gateway", "celery-worker") in kinds
    assert any(p.role == "escrow" for p in kinds)


def test_every_supervised_process_has_a_compose_service(compose):
    provided = set().union(*c.compose_processes(compose).values())
    missing = []
    for member in c.supervisor_members():
        for process in member.processes:
            if process.kind in NOT_DEPLOYED:
                continue
            if process not in provided:
                missing.append(f"{member.name}: {process.kind} ({process.role} role) {' '.join(member.argv)}")
    assert not missing, "processes `make run` starts that no compose service runs:\n" + "\n".join(missing)


def test_one_beat_per_role(compose):
    beats: dict[str, list[str]] = {}
    for name, processes in c.compose_processes(compose).items():
        for process in processes:
            if process.kind == "celery-beat":
                beats.setdefault(process.role, []).append(name)
    assert all(len(names) == 1 for names in beats.values()), f"several beats would run each task twice: {beats}"
    assert set(beats) == {"gateway", "escrow"}


# ---- each command exists ---------------------------------------------------------------------------


def _check_python_command(argv: list[str], cwd: Path) -> list[str]:
    problems = []
    rest = argv[1:]
    if rest[:1] == ["-m"]:
        module, args = rest[1], rest[2:]
        if importlib.util.find_spec(module) is None:
            return [f"module {module} is not installed"]
        if module == "celery":
            app = c.option_value(args, "-A", "--app")
            if not app or importlib.util.find_spec(app) is None:
                problems.append(f"celery app {app!r} does not exist")
            sub = c.celery_subcommand(args)
            if sub not in ("worker", "beat", "inspect"):
                problems.append(f"celery subcommand {sub!r}")
        if module == "uvicorn":
            target = next((a for a in args if ":" in a and not a.startswith("-")), None)
            if target is None:
                return ["uvicorn without an application"]
            mod, _, attr = target.partition(":")
            if not hasattr(importlib.import_module(mod), attr):
                problems.append(f"{target} does not exist")
        return problems
    if rest and rest[0].endswith("manage.py"):
        if not (cwd / rest[0]).is_file():
            problems.append(f"{cwd / rest[0]} does not exist")
        if len(rest) < 2 or rest[1] not in get_commands():
            problems.append(f"manage.py has no command {rest[1:2]}")
        return problems
    if rest:
        script = c.container_path_to_repo(rest[0]) if rest[0].startswith("/") else cwd / rest[0]
        if script is None or not script.is_file():
            problems.append(f"script {rest[0]} does not exist in the image")
    return problems


def _check_command(argv: list[str], cwd: Path) -> list[str]:
    program = Path(argv[0]).name
    if program == "node":
        script = cwd / argv[1]
        return [] if script.is_file() else [f"{script} does not exist"]
    if program.startswith("python"):
        return _check_python_command(argv, cwd)
    return [f"{argv[0]} is not a program the image runs this way (use python -m …)"]


def test_every_service_command_exists(compose):
    problems = []
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        argv = c.command_argv(service)
        if not argv:
            problems.append(f"{name}: no command")
            continue
        problems += [f"{name}: {p}" for p in _check_command(argv, c.service_workdir(service))]
    assert not problems, "\n".join(problems)


def test_every_health_check_command_exists(compose):
    problems = []
    for name, service in compose["services"].items():
        check = c.healthcheck_argv(service)
        if check is None:
            if service.get("restart") != "no":
                problems.append(f"{name}: long-running service without a health check")
            continue
        if "build" not in service:
            continue
        form, argv = check
        if form == "CMD-SHELL":
            argv = [a for a in shlex.split(argv[0]) if not a.startswith(">")]
        problems += [f"{name} healthcheck: {p}" for p in _check_command(argv, c.service_workdir(service))]
        if argv[1:2] == ["deploy/healthcheck.py"] or argv[1:2] == ["/app/deploy/healthcheck.py"]:
            if argv[2:3] not in (["http"], ["bridge"], ["redis"], ["tcp"]):
                problems.append(f"{name}: healthcheck.py has no check {argv[2:3]}")
    assert not problems, "\n".join(problems)


def test_celery_health_checks_ping_the_node_the_service_names(compose):
    for name, service in compose["services"].items():
        argv = c.command_argv(service)
        if "celery" not in argv or c.celery_subcommand(argv[3:]) != "worker":
            continue
        node_name = c.option_value(argv, "-n", "--hostname")
        assert node_name and node_name.endswith("@%h"), f"{name}: give the worker a node name (-n name@%h)"
        form, check = c.healthcheck_argv(service) or ("", [""])
        expected = node_name.replace("%h", "$$HOSTNAME")
        assert form == "CMD-SHELL" and f"-d {expected}" in check[0], f"{name}: health check must ping {expected}"


def test_long_running_services_restart(compose):
    for name, service in compose["services"].items():
        assert service.get("restart") in ("unless-stopped", "always", "no"), f"{name}: no restart policy"
        if service.get("restart") == "no":
            assert c.command_argv(service)[-2:] == ["migrate", "--noinput"], f"{name}: only migrations run once"


# ---- environment -----------------------------------------------------------------------------------


def test_every_compose_variable_is_in_env_example(compose):
    missing = sorted(c.interpolated_names(c.COMPOSE_FILE.read_text()) - c.env_example_names())
    assert not missing, f"docker-compose.yml reads variables .env.example does not describe: {missing}"


def test_every_proxy_variable_is_in_env_example():
    config = "\n".join(line for line in c.CADDYFILE.read_text().splitlines() if not line.lstrip().startswith("#"))
    names = set(re.findall(r"\{\$([A-Z][A-Z0-9_]*)", config))
    assert names, "the Caddyfile reads no variables?"
    assert not names - c.env_example_names(), sorted(names - c.env_example_names())


def _settings_variables() -> set[str]:
    text = (c.REPO / "hypertuna" / "settings.py").read_text()
    return set(re.findall(r"env\.\w+\(\s*\"([A-Z][A-Z0-9_]*)\"", text))


def _bridge_variables() -> set[str]:
    text = (c.REPO / "bridge" / "src" / "config.mjs").read_text()
    names = set(re.findall(r"env\.([A-Z][A-Z0-9_]*)", text)) | set(re.findall(r"int\(env, '([A-Z][A-Z0-9_]*)'", text))
    readme = (c.REPO / "bridge" / "README.md").read_text()
    section = readme.split("## Environment (bridge)", 1)[1].split("\n## ", 1)[0]
    for cell in re.findall(r"^\| `([^|]+)` \|", section, re.M):
        for name in re.findall(r"HYPERTUNA_[A-Z0-9_]+", cell):
            # "HYPERTUNA_BRIDGE_RECONNECT_BASE_MS` / `_MAX_MS": the suffix form names a sibling.
            names.add(name)
        if "` / `_" in cell:
            base, suffix = cell.split("` / `")
            names.add(base.rsplit("_", 2)[0] + suffix.rstrip("`"))
    return names


def test_every_setting_is_in_env_example():
    settings_vars = _settings_variables()
    bridge_vars = _bridge_variables()
    assert len(settings_vars) > 40 and len(bridge_vars) > 20, "the readers found too few variables"
    missing = sorted((settings_vars | bridge_vars | {"HYPERTUNA_BRIDGE_TCP"}) - c.env_example_names())
    assert not missing, f".env.example lacks: {missing}"


def test_escrow_role_gets_its_own_database_and_no_gateway_env_file(compose):
    for name, service in compose["services"].items():
        env = c.service_env(service)
        if env.get("HYPERTUNA_ROLE") != "escrow":
            continue
        assert "env_file" not in service, f"{name}: the escrow role must not read the gateway's .env"
        assert "@escrow-postgres:" in env.get("ESCROW_DATABASE_URL", ""), f"{name}: escrow database"
        assert "DATABASE_URL" not in env, f"{name}: the escrow role must not see the gateway database"
        assert "escrow-redis" in env.get("REDIS_URL", ""), f"{name}: escrow broker shared with the gateway"
        assert env.get("HYPERTUNA_ESCROW_KEK_FILE", "").startswith("/run/secrets/"), f"{name}: KEK from a secret"
        assert not env.get("HYPERTUNA_ESCROW_KEK"), f"{name}: KEK in the environment"


def test_secret_files_are_mounted_where_the_environment_points(compose):
    defined = set(compose.get("secrets") or {})
    for name, service in compose["services"].items():
        mounted = {s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []}
        assert mounted <= defined, f"{name}: undefined secrets {mounted - defined}"
        for var, value in c.service_env(service).items():
            if value.startswith("/run/secrets/"):
                assert value.removeprefix("/run/secrets/") in mounted, f"{name}: {var}={value} is not mounted"


def test_escrow_client_settings_are_complete_where_the_escrow_is_used(compose):
    users = []
    for name, service in compose["services"].items():
        env = c.service_env(service)
        if env.get("HYPERTUNA_ESCROW_URL"):
            users.append(name)
            for var in ("HYPERTUNA_ESCROW_CA", "HYPERTUNA_ESCROW_CLIENT_CERT", "HYPERTUNA_ESCROW_CLIENT_KEY"):
                assert env.get(var), f"{name}: HYPERTUNA_ESCROW_URL without {var} (check escrow.E001)"
    assert users == ["web"], f"the web process is the escrow's only client; found {users}"


def test_bridge_socket_is_shared_by_every_bridge_user(compose):
    processes = c.compose_processes(compose)
    volumes = set()
    for name, service in compose["services"].items():
        if not {p.kind for p in processes.get(name, set()) if p.role == "gateway"} & BRIDGE_USERS:
            continue
        socket_dir = str(Path(c.service_env(service)["HYPERTUNA_BRIDGE_SOCKET"]).parent)
        mounts = [v.split(":") for v in service.get("volumes") or []]
        sources = [src for src, dst, *_ in mounts if dst == socket_dir]
        assert sources, f"{name}: nothing mounted at {socket_dir} (bridge socket)"
        volumes.update(sources)
    assert len(volumes) == 1 and next(iter(volumes)) in compose["volumes"], volumes


# ---- networks: the proxy reaches only web ----------------------------------------------------------


def test_proxy_cannot_reach_the_escrow_or_the_databases(compose):
    services = compose["services"]
    proxy_networks = set(services["proxy"]["networks"])
    reachable = {name for name, s in services.items() if proxy_networks & set(s.get("networks") or ["default"])}
    assert reachable == {"proxy", "web"}, reachable
    escrow_private = {name for name, s in services.items() if "escrow-private" in (s.get("networks") or [])}
    assert escrow_private == {"escrow", "escrow-worker", "escrow-migrate", "escrow-postgres", "escrow-redis"}
    for name in ("backend", "escrow-api", "escrow-private"):
        assert compose["networks"][name].get("internal") is True, f"{name} must be internal"


def test_only_the_proxy_and_the_escrow_publish_ports(compose):
    published = {name: s["ports"] for name, s in compose["services"].items() if s.get("ports")}
    assert set(published) == {"proxy", "escrow", "grafana"}
    escrow_ports = published["escrow"]
    assert escrow_ports == ["${HYPERTUNA_ESCROW_PUBLISH:-127.0.0.1:8443}:8443"], "escrow loopback by default"


def test_public_dht_only_when_the_operator_sets_it(compose):
    bridge = compose["services"]["bridge"]
    assert "HYPERTUNA_SWARM_BOOTSTRAP" not in c.service_env(bridge), "compose must not choose the DHT"
    default = re.search(r"^HYPERTUNA_SWARM_BOOTSTRAP=(.*)$", c.ENV_EXAMPLE.read_text(), re.M)
    assert default and default.group(1) == "local"
    storage = c.service_env(bridge)["HYPERTUNA_BRIDGE_STORAGE"]
    assert any(v.split(":")[1] == storage and v.split(":")[0] in compose["volumes"] for v in bridge["volumes"])


# ---- Dockerfile ------------------------------------------------------------------------------------


def _bridge_engines() -> list[tuple[str, str]]:
    found = []
    for path in (c.REPO / "bridge" / "package.json", c.REPO / "bridge" / "blind" / "package.json"):
        engines = json.loads(path.read_text()).get("engines", {})
        if "node" in engines:
            found.append((str(path.relative_to(c.REPO)), engines["node"]))
    return found


def _runtime_node_major(stages: list[c.Stage]) -> int:
    final = stages[-1]
    for keyword, rest in final.instructions:
        if keyword == "COPY" and "/usr/local/bin/node" in rest:
            source = re.search(r"--from=(\S+)", rest)
            assert source, "node copied from no stage"
            stage = next((s for s in stages if s.alias == source.group(1)), None)
            assert stage is not None, f"no stage {source.group(1)}"
            major = c.node_major_of_image(stage.image)
            assert major is not None, f"{stage.image} is not an official node image"
            return major
        assert not (keyword == "RUN" and re.search(r"apt-get install[^&]*\bnodejs\b", rest)), (
            "Debian's nodejs is Node 18"
        )
    raise AssertionError("the final image gets node from no official Node image")


def test_image_node_is_at_least_the_bridge_engines():
    stages = c.dockerfile_stages()
    major = _runtime_node_major(stages)
    engines = _bridge_engines()
    assert engines, "bridge/package.json declares no engines.node"
    for path, spec in engines:
        assert major >= c.engines_minimum_major(spec), f"image Node {major} < {path} engines {spec}"


def test_node_check_rejects_debian_nodejs_and_old_images():
    debian = "FROM python:3.11-slim-bookworm\nRUN apt-get update && apt-get install -y nodejs npm\n"
    with pytest.raises(AssertionError):
        _runtime_node_major(c.dockerfile_stages(debian))
    old = "FROM node:18-bookworm-slim AS n\nFROM python:3.11-slim\nCOPY --from=n /usr/local/bin/node /usr/local/bin/node\n"
    assert _runtime_node_major(c.dockerfile_stages(old)) == 18 < c.engines_minimum_major(">=20")


def test_image_installs_both_bridge_trees_and_not_interop():
    text = c.DOCKERFILE.read_text()
    stages = c.dockerfile_stages()
    runs = [rest for s in stages for kw, rest in s.instructions if kw == "RUN"]
    assert any(re.search(r"\bnpm ci\b", r) for r in runs), "npm ci (lockfile install) missing"
    assert not any("npm install" in r for r in runs), "npm install ignores the lockfile"
    assert "bridge/blind/package-lock.json" in text, "the blind/ tree is installed from its lockfile"
    assert "blind/node_modules" in text
    assert "interop" not in "\n".join(rest for s in stages for _, rest in s.instructions)
    assert re.search(r"^interop$", (c.REPO / ".dockerignore").read_text(), re.M)


def test_image_runs_as_a_non_root_user():
    final = c.dockerfile_stages()[-1]
    users = [rest for kw, rest in final.instructions if kw == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users


def test_health_check_script_rejects_bad_arguments():
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", c.REPO / "deploy" / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for argv in ([], ["http"], ["http", "file:///etc/passwd"], ["tcp", "nohost"], ["bogus"]):
        assert module.main(argv) == 1
    for argv, environ in (
        (["redis"], {}),
        (["redis"], {"REDIS_URL": "rediss://127.0.0.1:6379/0"}),
        (["bridge"], {"HYPERTUNA_BRIDGE_SOCKET": str(c.REPO / "var" / "no-such-bridge.sock")}),
    ):
        with pytest.raises(module.Unhealthy):
            module.run(argv, environ)


# ---- the web server runs with the same WebSocket settings everywhere -------------------------------

# Options that differ on purpose between `make run` and a container behind its proxy.
_PER_PLACE = {"--host": 1, "--port": 1, "--forwarded-allow-ips": 1, "--proxy-headers": 0, "--no-proxy-headers": 0}


def _server_options(argv: list[str]) -> list[str]:
    options, skip = [], 0
    for arg in argv[argv.index("uvicorn") + 1 :]:
        if skip:
            skip -= 1
        elif arg in _PER_PLACE:
            skip = _PER_PLACE[arg]
        else:
            options.append(arg)
    return options


def test_every_web_command_runs_uvicorn_as_make_run_does():
    """Frame limit, pings, loop and protocol are part of the gateway's behaviour (1009 closes, idle cost), so
    the image, both compose files and `make run` must not drift apart."""
    from hypertuna.webserver import web_argv

    expected = _server_options(web_argv("python", "127.0.0.1", 8000))
    commands = {"Dockerfile CMD": c.image_command()}
    for path in (c.COMPOSE_FILE, c.NODES_FILE):
        for name, service in c.load_compose(path)["services"].items():
            argv = c.command_argv(service)
            if "uvicorn" in argv and "hypertuna.asgi:application" in argv:
                commands[f"{path.name}:{name}"] = argv
    assert len(commands) >= 3, f"expected the image's and both compose files' web commands, found {sorted(commands)}"
    for place, argv in commands.items():
        assert _server_options(argv) == expected, place
        # Behind the proxy, the client's address comes from X-Forwarded-For.
        assert "--proxy-headers" in argv, place

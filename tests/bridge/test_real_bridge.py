"""The Python client against the real Node bridge (and a reference worker) on a loopback testnet."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hypertuna.bridge import BridgeClient, BridgeError, probe

pytestmark = pytest.mark.asyncio

REPO_ROOT = Path(__file__).resolve().parents[2]
BRIDGE_DIR = REPO_ROOT / "bridge"
NODE = shutil.which("node")

if NODE is None or not (BRIDGE_DIR / "node_modules").is_dir():
    pytest.skip(
        "bridge/node_modules is missing (run `cd bridge && npm ci`) or node is not installed",
        allow_module_level=True,
    )


def _spawn(
    script: str, args: list[str], env: dict[str, str], marker: str, log: Path, timeout: float = 30
) -> tuple[Any, dict[str, Any]]:
    # stderr goes to a file: an undrained pipe could fill up and block the child.
    with log.open("w") as err:
        proc = subprocess.Popen(
            [NODE, str(BRIDGE_DIR / script), *args],
            cwd=BRIDGE_DIR,
            # The children stop when this process goes away and their stdin closes.
            env={
                **os.environ,
                "HYPERTUNA_BRIDGE_LOG_LEVEL": "warn",
                "HYPERTUNA_BRIDGE_EXIT_ON_STDIN_CLOSE": "1",
                "HYPERTUNA_WORKER_EXIT_ON_STDIN_CLOSE": "1",
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.PIPE,
            text=True,
        )
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(marker + " "):
            return proc, json.loads(line[len(marker) + 1 :])
    proc.kill()
    proc.wait(timeout=5)
    raise AssertionError(f"{script} did not become ready: {log.read_text()[-2000:]}")


def _stop(proc: Any) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="htr-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def bridge(workdir: Path) -> Iterator[dict[str, Any]]:
    env = {
        "HYPERTUNA_BRIDGE_SOCKET": str(workdir / "bridge.sock"),
        "HYPERTUNA_SWARM_BOOTSTRAP": "local",
        "HYPERTUNA_SWARM_BOOTSTRAP_FILE": str(workdir / "swarm.json"),
        "HYPERTUNA_BRIDGE_STORAGE": str(workdir / "bridge"),
    }
    proc, info = _spawn("src/main.mjs", [], env, "HYPERTUNA_BRIDGE_READY", workdir / "bridge.log")
    try:
        yield {
            "proc": proc,
            "info": info,
            "socket": env["HYPERTUNA_BRIDGE_SOCKET"],
            "swarm_file": str(workdir / "swarm.json"),
        }
    finally:
        _stop(proc)


@pytest.fixture
async def client(bridge: dict[str, Any]) -> AsyncIterator[BridgeClient]:
    c = BridgeClient(socket_path=bridge["socket"], client_name="pytest", subscribe=["peer.*"], call_timeout=20)
    await c.connect()
    yield c
    await c.close()


async def test_hello_swarm_info_and_pool_status(client: BridgeClient, bridge: dict[str, Any]) -> None:
    assert client.server_info["protocol"] == 1
    assert "peer.request" in client.server_info["methods"]
    info = await client.swarm_info()
    assert info["mode"] == "local"
    assert info["gatewayPublicKey"] == bridge["info"]["gatewayPublicKey"]
    assert info["testnetNodes"] >= 4
    assert all(node.startswith("127.0.0.1:") for node in info["bootstrap"])
    status = await client.pool_status()
    assert status["publicKey"] == info["gatewayPublicKey"]
    assert status["connections"] == 0
    assert status["peers"] == []
    assert os.stat(bridge["socket"]).st_mode & 0o777 == 0o600
    ok, detail = await asyncio.to_thread(probe, socket_path=bridge["socket"], timeout=2)
    assert ok, detail


async def test_reference_worker_end_to_end(client: BridgeClient, bridge: dict[str, Any], workdir: Path) -> None:
    events = client.events("peer.connected", "peer.register")
    files = workdir / "files"
    files.mkdir()
    blob = bytes(range(256)) * 1200
    (files / "clip.bin").write_bytes(blob)
    proc, worker = _spawn(
        "src/worker/main.mjs",
        [
            "--bootstrap-file",
            bridge["swarm_file"],
            "--storage",
            str(workdir / "worker"),
            "--name",
            "py demo",
            "--drive-import",
            str(files),
        ],
        {},
        "HYPERTUNA_WORKER_READY",
        workdir / "worker.log",
    )
    try:
        peer_key = worker["swarmPublicKey"]
        seen: set[str] = set()
        async with asyncio.timeout(20):
            while not {"peer.connected", "peer.register"} <= seen:
                ev = await events.get()
                if ev.data.get("peerKey") != peer_key:
                    continue
                seen.add(ev.name)
                if ev.name == "peer.register":
                    assert ev.data["body"]["publicKey"] == peer_key
                    await client.register_reply(ev.data["registerId"], 200, body={"status": "ok"})
        res = await client.peer_request(
            peer_key,
            "POST",
            f"/post/relay/{worker['relayKey']}",
            body={"message": json.dumps(["REQ", "s", {"limit": 5}]), "connectionKey": "ab" * 16},
        )
        assert res.status_code == 200
        assert res.ndjson() == [["EOSE", "s"]]
        assert await client.peer_health(peer_key) >= 0
        sha = worker["files"][0]["hash"]
        async with client.peer_request_stream(
            peer_key, "GET", f"/drive/{worker['identifier']}/{sha}", chunk_size=32 * 1024, window=2
        ) as stream:
            assert stream.head is not None
            assert stream.head["statusCode"] == 200
            assert stream.head["bodyLength"] == len(blob)
            assert await stream.read() == blob
        assert stream.result["chunks"] == 10
        with pytest.raises(BridgeError) as info:
            await client.peer_request("00" * 32, "GET", "/health", connect_timeout_ms=1000)
        assert info.value.code == "peer-unavailable"
    finally:
        events.close()
        with contextlib.suppress(Exception):
            _stop(proc)

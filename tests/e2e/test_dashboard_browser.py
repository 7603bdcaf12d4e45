"""The operator dashboard in a real browser: headless Chromium (Debian's ``chromium`` package) logs in to the
admin of a real stack (uvicorn, bridge, Celery worker + beat sampling every second, a reference worker with a
client connected through a token) and the numbers in the rendered page equal what the database holds.

Driven over the Chrome DevTools protocol with the ``websockets`` client the suite already uses."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.e2e.harness import ROOT, Stack, node_available, spawn

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PASSWORD = "dashboard-pw-0123456789"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not node_available():
        pytest.fail("end-to-end tests need Node 20 and `npm ci` in bridge/")
    env = {"DJANGO_SETTINGS_MODULE": "tests.e2e.fast_beat_settings"}  # a stats sample every second
    stack = Stack(tmp_path_factory.mktemp("dashboard-stack"), celery=True, env=env).start()
    try:
        yield stack
    finally:
        stack.stop()


def _manage(stack: Stack, *args: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**stack.env, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


EXPECTED = """
import json
from django.db.models import Max
from relays.models import Peer, Relay, StatSample
from relays import stats
s = StatSample.objects.filter(resolution="minute", at=__AT__).first()
print(json.dumps({
    "total": Relay.objects.count(),
    "healthy": Peer.objects.filter(active=True, unreachable_since__isnull=True).count(),
    "unreachable": Peer.objects.filter(active=True, unreachable_since__isnull=False).count(),
    "sessions": len(stats.live_sessions()),
    "sample": None if s is None else {"frames": s.frames, "seconds": s.seconds},
}))
"""


class DevTools:
    """A tiny Chrome DevTools protocol client: one page target, commands answered by id."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_loaded(url)

    async def wait_loaded(self, url: str) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = await self.evaluate("document.readyState + ' ' + location.href")
            if state and state.startswith("complete") and state.split(" ", 1)[1] == url:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"page {url} did not load")


def _start_chromium(stack: Stack, profile: Path) -> tuple[Any, str]:
    argv = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    proc = spawn("chromium", argv, cwd=ROOT, env={**os.environ}, log_dir=stack.tmp)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
        assert time.monotonic() < deadline and proc.process.poll() is None, "chromium did not start"
        time.sleep(0.1)
    port = int(port_file.read_text().splitlines()[0])
    return proc, f"http://127.0.0.1:{port}"


def _page_ws_url(base: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{base}/json/list", timeout=10) as response:
        targets = json.loads(response.read())
    return next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")


def _metric(dom: str, name: str) -> str:
    found = re.search(rf'data-metric="{name}"[^>]*>([^<]*)<', dom)
    assert found, f"{name} not in the dashboard"
    return found.group(1).strip()


def test_dashboard_renders_in_chromium_and_matches_the_database(stack, tmp_path):
    worker = stack.start_worker("watched", "--requires-auth", "--issue-token")
    token = worker.wait_marker("HYPERTUNA_WORKER_TOKEN")
    _manage(
        stack,
        "createsuperuser",
        "--noinput",
        "--username",
        "op",
        "--email",
        "op@example.org",
        DJANGO_SUPERUSER_PASSWORD=PASSWORD,
    )
    chromium, devtools_base = _start_chromium(stack, tmp_path / "profile")

    async def run() -> tuple[str, dict[str, Any]]:
        url = f"{stack.ws_url}/{token['gatewayPath']}?token={token['token']}"
        async with websockets.connect(url) as client:
            for n in range(5):  # traffic for the frames counter
                await client.send(json.dumps(["REQ", f"s{n}", {"limit": 1}]))
                while json.loads(await asyncio.wait_for(client.recv(), 30))[0] != "EOSE":
                    pass
            async with websockets.connect(_page_ws_url(devtools_base), max_size=None) as cdp:
                browser = DevTools(cdp)
                await browser.call("Page.enable")
                await browser.goto(f"{stack.base_url}/admin/login/?next=/admin/")
                await browser.evaluate(
                    "document.querySelector('#id_username').value='op';"
                    f"document.querySelector('#id_password').value={json.dumps(PASSWORD)};"
                    "document.querySelector('#login-form').submit(); true"
                )
                await browser.wait_loaded(f"{stack.base_url}/admin/")
                # Until the live session is published and a sample counted the REQs (beat: every second).
                deadline = time.monotonic() + 30
                while True:
                    await browser.goto(f"{stack.base_url}/admin/")
                    dom = await browser.evaluate("document.documentElement.outerHTML")
                    sample_at = re.search(r'data-sample-at="([^"]*)"', dom)
                    if _metric(dom, "sessions-total") == "1" and sample_at and sample_at.group(1):
                        expected = json.loads(
                            _manage(stack, "shell", "-c", EXPECTED.replace("__AT__", repr(sample_at.group(1))))
                            .strip()
                            .splitlines()[-1]
                        )
                        if expected["sessions"] == 1 and expected["sample"] is not None:
                            return dom, expected
                    assert time.monotonic() < deadline, f"dashboard never showed the session\n{stack.log_tail()}"
                    await asyncio.sleep(0.5)

    try:
        dom, expected = asyncio.run(run())
    finally:
        chromium.stop()

    assert "Relays online" in dom and "app-relays" in dom  # the dashboard, and the app list below it
    assert _metric(dom, "relays-total") == str(expected["total"]) == "1"
    assert _metric(dom, "relays-online") == "1"
    assert _metric(dom, "sessions-total") == str(expected["sessions"])
    assert _metric(dom, "sessions-relay") == "1"
    assert _metric(dom, "peers-healthy") == str(expected["healthy"])
    assert _metric(dom, "peers-unreachable") == str(expected["unreachable"])
    sample = expected["sample"]
    assert float(_metric(dom, "frames-per-s")) == pytest.approx(round(sample["frames"] / sample["seconds"], 2))
    assert _metric(dom, "reach-database") == "up" and _metric(dom, "reach-bridge") == "up"
    assert dom.count("<polyline") >= 5  # the last hour's charts have samples

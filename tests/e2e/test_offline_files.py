"""Files while every worker is offline, through real processes (escrow, gateway, bridge with its blind peer,
a reference worker with a drive): the worker's file stays readable from its mirrored drive (ranges too),
uploads are refused without an escrow lease and stored under one in the relay's gateway drive, streamed
(the web process does not grow by the file's size), and a join request no worker can take is kept as an
artifact; when the worker returns it is pushed what the gateway holds, copies it into its own drive, and
reports resync-complete, after which the gateway clears its pending writes and releases the lease."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import time

import pytest

from tests.e2e.harness import ROOT, Stack, node_available
from tests.e2e.test_escrow import _escrow_flags, _sync_until_ready

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not node_available():
        pytest.fail("end-to-end tests need Node 20 and `npm ci` in bridge/")
    env = {"HYPERTUNA_ESCROW_HEARTBEAT_SILENCE": "5"}
    stack = Stack(tmp_path_factory.mktemp("offline-files"), escrow=True, env=env).start()
    try:
        yield stack
    finally:
        stack.stop()


def _request(stack, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        # HTTPMessage: header names match without regard to case (the web server sends them in lower case).
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _wait_drive_mirrored(stack, relay_key):
    """Until the blind peer holds every block of the worker's drive cores it was told about."""
    code = (
        "import django,sys;django.setup();from replicas.models import MirrorCore as M;"
        f"q=M.objects.filter(relay_key={relay_key!r},core_type__in=['hyperdrive-metadata','hyperdrive-blobs']);"
        "sys.exit(0 if q.count()==2 and all(c.mirrored_length>0 and c.mirrored_length>=c.remote_length for c in q)"
        " else 1)"
    )
    env = {**stack.env, "DJANGO_SETTINGS_MODULE": "hypertuna.settings"}
    deadline = time.monotonic() + 60
    while subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, timeout=60).returncode != 0:
        assert time.monotonic() < deadline, stack.log_tail()
        time.sleep(1)


def test_files_stay_readable_and_uploads_need_a_lease_while_the_worker_is_offline(stack, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    original = os.urandom(300_000)
    (files / "photo.jpg").write_bytes(original)
    digest = hashlib.sha256(original).hexdigest()
    worker_args = (
        "files",
        "--blind-peer",
        "gateway",
        "--drive-import",
        str(files),
        "--gateway-writer-out",
        str(tmp_path / "gateway-writer.json"),
        *_escrow_flags(stack, tmp_path / "signing.hex"),
    )
    worker = stack.start_worker(*worker_args, "--issue-token", storage=tmp_path / "worker")
    relay_key = worker.markers["HYPERTUNA_WORKER_READY"]["relayKey"]
    token = worker.wait_marker("HYPERTUNA_WORKER_TOKEN", timeout=60)["token"]
    deposited = worker.wait_marker("HYPERTUNA_WORKER_ESCROW", timeout=60)

    status, headers, body = _request(stack, "GET", f"/drive/{relay_key}/{digest}.jpg")
    assert status == 200 and body == original and headers.get("X-Hypertuna-Source") is None  # the worker's answer
    _sync_until_ready(stack, relay_key)  # mirror evidence for the escrow
    _wait_drive_mirrored(stack, relay_key)
    worker.stop()

    # The worker heartbeated a moment ago: the escrow refuses a lease, and nothing is stored.
    upload = os.urandom(20 * MIB)
    name = hashlib.sha256(upload).hexdigest()
    put_headers = {"x-relay-token": token, "content-type": "application/octet-stream"}
    status, _, body = _request(stack, "PUT", f"/drive/{relay_key}/{name}", upload, put_headers)
    assert status == 425 and json.loads(body)["error"] == "gateway-escrow-lease-missing", body

    status, headers, body = _request(stack, "GET", f"/drive/{relay_key}/{digest}.jpg")
    assert status == 200, (status, body[:300], stack.log_tail(40))
    assert body == original and headers["X-Hypertuna-Source"] == "mirror"
    assert headers["ETag"] == f'"{digest}"' and headers["Content-Type"] == "image/jpeg"
    status, headers, body = _request(
        stack, "GET", f"/drive/{relay_key}/{digest}.jpg", headers={"Range": "bytes=1000-1999"}
    )
    assert status == 206 and body == original[1000:2000]
    assert headers["Content-Range"] == f"bytes 1000-1999/{len(original)}"
    status, _, body = _request(stack, "GET", f"/drive/{relay_key}/{'0' * 64}")
    assert status == 404 and json.loads(body)["error"] == "file-not-found"

    # Bad input is refused before any lease matters.
    status, _, body = _request(stack, "PUT", f"/drive/{relay_key}/..", b"x", put_headers)
    assert status in (400, 404), body  # a client library may fold "..", the gateway never stores it
    status, _, body = _request(stack, "PUT", f"/drive/{relay_key}/{name}", b"", put_headers)
    assert status == 400 and json.loads(body)["error"] == "empty-payload"
    status, _, body = _request(stack, "PUT", f"/drive/{relay_key}/{name}", upload[:10])
    assert status == 401

    web = next(p for p in stack.procs if p.name == "web").process.pid
    deadline = time.monotonic() + 60
    while True:  # once the heartbeat silence passed, the lease is granted
        status, _, body = _request(stack, "PUT", f"/drive/{relay_key}/{name}", upload, put_headers)
        if status == 202:
            break
        assert status == 425 and time.monotonic() < deadline, (status, body, stack.log_tail(60))
        time.sleep(2)
    stored = json.loads(body)
    assert stored["status"] == "stored" and stored["mode"] == "gateway-drive" and stored["relayKey"] == relay_key
    assert stored["driveVersion"] >= 1 and stored["bytes"] == len(upload)
    # Streamed: the web process does not take on a file (20 MiB) in memory. Measured across a second upload, once
    # the first has loaded the lease, escrow and upload code paths.
    second = os.urandom(20 * MIB)
    rss_before = _rss_kib(web)
    status, _, body = _request(
        stack, "PUT", f"/drive/{relay_key}/{hashlib.sha256(second).hexdigest()}", second, put_headers
    )
    rss_after = _rss_kib(web)
    assert status == 202, body
    assert rss_after - rss_before < 10 * 1024, (rss_before, rss_after)

    status, headers, body = _request(stack, "GET", f"/drive/{relay_key}/{name}", headers={"Range": "bytes=-4096"})
    assert status == 206 and body == upload[-4096:] and headers["X-Hypertuna-Source"] == "gateway-drive"

    status, _, body = _request(
        stack,
        "POST",
        f"/post/join/{relay_key}",
        json.dumps({"pubkey": "ab" * 32}),
        {"content-type": "application/json"},
    )
    assert status == 202, body
    assert json.loads(body)["artifactPath"].startswith("/join/")

    assert _django(stack, _OPEN_WRITES.format(relay_key=relay_key)) == ["drive", "drive", "http-join"]

    # The worker returns: the push names the gateway drive, the worker copies the file and the artifact into
    # its own drive and reports resync-complete; the gateway clears its pending writes and lets the lease go.
    returned = stack.start_worker(*worker_args, storage=tmp_path / "worker")
    deadline = time.monotonic() + 60
    while _django(stack, f"from relays.pending_push import push; print(json.dumps(push({relay_key!r})))") != (
        "acknowledged"
    ):
        assert time.monotonic() < deadline, stack.log_tail(60)
        time.sleep(1)
    resync = returned.wait_marker("HYPERTUNA_WORKER_RESYNC", timeout=90)
    identifier = returned.markers["HYPERTUNA_WORKER_READY"]["identifier"]
    assert f"/{identifier}/{name}" in resync["copied"], resync
    assert any(path.startswith("/gateway-artifacts/join/") for path in resync["copied"]), resync
    deadline = time.monotonic() + 30
    while _django(stack, _OPEN_WRITES.format(relay_key=relay_key)) != []:
        assert time.monotonic() < deadline, stack.log_tail(60)
        time.sleep(1)
    # Files are the worker's to serve again (the gateway's copies answer only when no worker does).
    status, headers, body = _request(stack, "GET", f"/drive/{relay_key}/{digest}.jpg")
    assert status == 200 and body == original and "X-Hypertuna-Source" not in headers, headers
    # The lease is gone: with the worker back, the escrow grants none and nothing more is stored for it.
    status, _, body = _request(stack, "PUT", f"/drive/{relay_key}/{name}", upload[:10], put_headers)
    assert status == 425, body

    # The worker rotates its gateway writer and deposits anew; the escrow's audit chain verifies and shows
    # the lease ended.
    deadline = time.monotonic() + 60
    while returned.markers.get("HYPERTUNA_WORKER_ESCROW", deposited)["depositId"] == deposited["depositId"]:
        assert time.monotonic() < deadline, stack.log_tail(60)
        time.sleep(1)
    audit = stack.manage("escrow_audit", "verify", "--relay", relay_key, env=stack.escrow_env)
    assert audit.returncode == 0 and "OK:" in audit.stdout, audit.stdout + audit.stderr
    actions = [line.split()[2] for line in audit.stdout.splitlines() if line.startswith("  #")]
    granted = actions.index("unlock-granted")
    # The lease ended: by the worker's rotation when it reconnected, or by the gateway's release at resync.
    assert {"rotation", "revoke"} & set(actions[granted + 1 :]), audit.stdout


_OPEN_WRITES = (
    "from replicas.models import PendingWrite as P;"
    "print(json.dumps(sorted(P.objects.filter(relay_key={relay_key!r},cleared_at=None).values_list('write_type',flat=True))))"
)


def _django(stack, code):
    """Run ``code`` in a Django shell of the stack and return the JSON its last line prints."""
    env = {**stack.env, "DJANGO_SETTINGS_MODULE": "hypertuna.settings"}
    out = subprocess.run(
        [sys.executable, "-c", "import django,json;django.setup();" + code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])

"""Files while a relay's workers are offline: reads from the gateway's copies, uploads and artifacts into
its gateway drive under the escrow lease. The bridge is a fake with the drive RPCs' semantics (the real
ones are covered by bridge/test/gateway-drives.test.mjs and tests/e2e/test_offline_files.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from prometheus_client import REGISTRY

from escrow.coordinator import LeaseHandle, LeasePending
from hypertuna.bridge import BridgeError
from relays import drive_offline, proxy, tokens
from relays.forwarding import PeerError
from replicas.drives import pending_counts
from replicas.models import CoreType, GatewayDrive, MirrorCore, PendingWrite
from tests.relays.test_proxy import register

pytestmark = pytest.mark.django_db(transaction=True)
DEAD = "9" * 64  # not test_proxy's dead peer: the health tracker remembers peers across tests
RELAY, OTHER = "1" * 64, "2" * 64
DRIVE_KEY = "d" * 64
FILE = bytes(range(256)) * 40
HASH = hashlib.sha256(FILE).hexdigest()


class FakeStream:
    def __init__(self, bridge, params):
        self.bridge, self.params, self.head, self.exited = bridge, params, None, False

    async def __aenter__(self):
        self.head, self.body = self.bridge.locate(self.params)
        return self

    async def __aexit__(self, *exc):
        self.exited = True

    async def cancel(self):
        self.exited = True

    def __aiter__(self):
        return self._chunks()

    async def _chunks(self):
        for off in range(0, len(self.body), 1000):
            yield self.body[off : off + 1000]


class FakeDriveBridge:
    """The bridge's drive RPCs over dicts: mirror files by (drive key, path), gateway files by path."""

    def __init__(self):
        self.mirror = {}
        self.gateway = {}
        self.uploads = {}
        self.busy = set()
        self.reads = []
        self.chunks = []
        self.version = 0

    def locate(self, params):
        self.reads.append(params)
        for source in params["sources"]:
            found = None
            if source == "mirror":
                found = next(
                    (
                        (p, self.mirror[(k, p)])
                        for k in params["driveKeys"]
                        for p in params["mirrorPaths"]
                        if (k, p) in self.mirror
                    ),
                    None,
                )
            else:
                found = next(
                    (
                        ("/" + "/".join(p), self.gateway["/" + "/".join(p)])
                        for p in params["gatewayPaths"]
                        if "/" + "/".join(p) in self.gateway
                    ),
                    None,
                )
            if found:
                path, data = found
                size = len(data)
                head = {
                    "source": source,
                    "size": size,
                    "etag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "lastModified": 1_700_000_000_000,
                    "start": 0,
                    "end": size - 1,
                    "rangeUnsatisfiable": False,
                    "path": path,
                }
                if "suffix" in params:
                    head["start"] = max(0, size - params["suffix"])
                elif "start" in params:
                    end = size - 1 if params["end"] is None else min(params["end"], size - 1)
                    if params["start"] >= size:
                        head["rangeUnsatisfiable"] = True
                        return head, b""
                    head["start"], head["end"] = params["start"], end
                body = b"" if params["headOnly"] else data[head["start"] : head["end"] + 1]
                return head, body
        raise BridgeError("not-found", "no copy of this file is held")

    def drive_read_stream(self, params, *, window=8):
        return FakeStream(self, params)

    async def drive_upload_begin(self, *, relay_key, path, max_bytes, sha256=None, mime=None, file_name=None):
        key = "/" + "/".join(path)
        if key in self.busy:
            raise BridgeError("conflict", "another upload of this path is in progress")
        self.busy.add(key)
        upload_id = f"u{len(self.uploads)}"
        self.uploads[upload_id] = {"path": key, "data": b"", "max": max_bytes, "sha256": sha256}
        return upload_id

    async def drive_upload_chunk(self, upload_id, data):
        up = self.uploads[upload_id]
        self.chunks.append(len(data))
        await asyncio.sleep(0)
        up["data"] += data
        return len(up["data"])

    async def drive_upload_commit(self, upload_id):
        up = self.uploads.pop(upload_id)
        self.busy.discard(up["path"])
        digest = hashlib.sha256(up["data"]).hexdigest()
        if up["sha256"] and up["sha256"] != digest:
            raise BridgeError("hash-mismatch", "the bytes do not hash to the file name")
        self.gateway[up["path"]] = up["data"]
        self.version += 1
        return {
            "driveKey": "e" * 64,
            "blobsKey": "f" * 64,
            "version": self.version,
            "mirrored": True,
            "path": up["path"],
            "bytes": len(up["data"]),
            "sha256": digest,
        }

    async def drive_upload_abort(self, upload_id):
        up = self.uploads.pop(upload_id, None)
        if up:
            self.busy.discard(up["path"])

    async def drive_put_json(self, *, relay_key, path, document):
        key = "/" + "/".join(path)
        self.gateway[key] = json.dumps(document).encode()
        self.version += 1
        return {
            "driveKey": "e" * 64,
            "version": self.version,
            "mirrored": True,
            "path": key,
            "bytes": len(self.gateway[key]),
        }


class Leases:
    enabled = True

    def __init__(self, granted=True):
        self.granted = granted
        self.asked = []

    async def ensure_write_lease(self, relay_key, healthy_peers=0):
        self.asked.append(relay_key)
        if self.granted == "pending":
            raise LeasePending(relay_key, retry_after=4)
        return LeaseHandle(relay_key, "lease-9", 1, 1_900_000_000, "ab" * 32) if self.granted else None


class DeadWorkers:
    async def stream(self, peer_key, method, path, *, headers, body, timeout):
        raise PeerError("Connection timeout", unreachable=True)


@pytest.fixture
def bridge(monkeypatch):
    fake = FakeDriveBridge()
    monkeypatch.setattr(drive_offline, "get_bridge", lambda: fake)
    monkeypatch.setattr(proxy, "transport", lambda: DeadWorkers())
    return fake


@pytest.fixture
def leases(monkeypatch):
    coordinator = Leases()
    monkeypatch.setattr("escrow.coordinator.get_coordinator", lambda: coordinator)
    return coordinator


def offline_relay(relay_key=RELAY, *, mirrored=True):
    register(relay_key, [DEAD])
    if mirrored:
        MirrorCore.objects.create(
            core_key=DRIVE_KEY if relay_key == RELAY else "c" * 64,
            relay_key=relay_key,
            public_identifier="npub1x:files",
            core_type=CoreType.HYPERDRIVE_METADATA,
        )


def token_for(relay_key):
    return tokens.issue_token(relay_key=relay_key, relay_auth_token="auth").token


async def test_a_mirrored_file_is_served_when_no_worker_answers(bridge):
    await sync_to_async(offline_relay)()
    bridge.mirror[(DRIVE_KEY, f"/npub1x:files/{HASH}")] = FILE
    response = await AsyncClient().get(f"/drive/{RELAY}/{HASH}.png")
    assert response.status_code == 200
    assert b"".join([c async for c in response.streaming_content]) == FILE
    assert response["X-Hypertuna-Source"] == "mirror"
    assert response["ETag"] == f'"{HASH}"' and response["Content-Type"] == "image/png"
    assert response["Content-Length"] == str(len(FILE)) and response["Last-Modified"].endswith("GMT")
    read = bridge.reads[-1]
    assert read["driveKeys"] == [DRIVE_KEY] and read["sources"] == ["mirror", "gateway-drive"]
    assert f"/npub1x:files/{HASH}" in read["mirrorPaths"] and f"/{RELAY}/{HASH}" in read["mirrorPaths"]

    ranged = await AsyncClient().get(f"/drive/{RELAY}/{HASH}.png", headers={"Range": "bytes=100-1099"})
    assert ranged.status_code == 206 and ranged["Content-Range"] == f"bytes 100-1099/{len(FILE)}"
    assert b"".join([c async for c in ranged.streaming_content]) == FILE[100:1100]
    suffix = await AsyncClient().get(f"/drive/{RELAY}/{HASH}.png", headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206 and b"".join([c async for c in suffix.streaming_content]) == FILE[-10:]
    past = await AsyncClient().get(f"/drive/{RELAY}/{HASH}.png", headers={"Range": f"bytes={len(FILE)}-"})
    assert past.status_code == 416 and past["Content-Range"] == f"bytes */{len(FILE)}"
    cached = await AsyncClient().get(f"/drive/{RELAY}/{HASH}.png", headers={"If-None-Match": f'"{HASH}"'})
    assert cached.status_code == 304


async def test_absent_files_are_404_json_and_relays_without_copies_keep_the_peer_error(bridge):
    await sync_to_async(offline_relay)()
    missing = await AsyncClient().get(f"/drive/{RELAY}/{'0' * 64}")
    assert missing.status_code == 404 and missing.json()["error"] == "file-not-found"
    await sync_to_async(offline_relay)(OTHER, mirrored=False)
    no_copy = await AsyncClient().get(f"/drive/{OTHER}/x.png")
    assert no_copy.status_code == 502 and no_copy.json()["error"] == "peers-unreachable"
    assert all(r["relayKey"] == RELAY for r in bridge.reads)


async def test_upload_is_refused_without_a_lease_and_stored_under_one(bridge, leases):
    await sync_to_async(offline_relay)()
    token = await sync_to_async(token_for)(RELAY)
    leases.granted = False
    refused = await AsyncClient().put(f"/drive/{RELAY}/{HASH}.png?token={token}", FILE, content_type="image/png")
    assert refused.status_code == 425 and refused.json()["error"] == "gateway-escrow-lease-missing"
    leases.granted = "pending"
    pending = await AsyncClient().put(f"/drive/{RELAY}/{HASH}.png?token={token}", FILE, content_type="image/png")
    assert pending.status_code == 425 and pending["Retry-After"] == "4"
    assert bridge.gateway == {} and await sync_to_async(PendingWrite.objects.count)() == 0

    leases.granted = True
    big = FILE * 30  # several upload chunks
    name = hashlib.sha256(big).hexdigest()
    stored = await AsyncClient().put(
        f"/drive/{RELAY}/{name}.bin", big, content_type="application/octet-stream", headers={"X-Relay-Token": token}
    )
    assert stored.status_code == 202, stored.content
    body = stored.json()
    assert body["status"] == "stored" and body["mode"] == "gateway-drive" and body["relayKey"] == RELAY
    assert body["driveVersion"] == 1 and body["bytes"] == len(big)
    assert bridge.gateway[f"/{RELAY}/{name}"] == big
    assert len(bridge.chunks) > 1 and max(bridge.chunks) <= drive_offline.UPLOAD_CHUNK
    write = await sync_to_async(PendingWrite.objects.get)()
    assert (write.relay_key, write.write_type, write.reference, write.lease_id) == (
        RELAY,
        "drive",
        f"/{RELAY}/{name}",
        "lease-9",
    )
    assert write.size == len(big) and write.cleared_at is None
    drive = await sync_to_async(GatewayDrive.objects.get)(relay_key=RELAY)
    assert drive.drive_key == "e" * 64 and drive.mirrored
    assert (await sync_to_async(pending_counts)())[RELAY] == 1
    gauge = await sync_to_async(REGISTRY.get_sample_value)("gateway_pending_writes", {"relay": RELAY})
    assert gauge == 1

    # The worker-convention name is served back from the gateway drive once no mirror has it.
    served = await AsyncClient().get(f"/drive/{RELAY}/{name}.bin", headers={"Range": "bytes=0-9"})
    assert served.status_code == 206 and served["X-Hypertuna-Source"] == "gateway-drive"
    assert b"".join([c async for c in served.streaming_content]) == big[:10]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/drive/{relay}/..", 400, "invalid-path"),
        ("/drive/{relay}/a%20b", 400, "invalid-path"),
        ("/drive/{relay}/.hidden", 200, None),
        ("/drive/{relay}/%2e%2e", 400, "invalid-path"),
    ],
)
async def test_upload_paths_outside_the_worker_alphabet_are_400(bridge, leases, path, status, code):
    await sync_to_async(offline_relay)()
    token = await sync_to_async(token_for)(RELAY)
    response = await AsyncClient().put(path.format(relay=RELAY) + f"?token={token}", b"x", content_type="text/plain")
    if code is None:
        assert response.status_code == 202
    else:
        assert response.status_code == status and response.json()["error"] == code


async def test_bad_uploads_get_clear_4xx_and_store_nothing(bridge, leases, settings):
    await sync_to_async(offline_relay)()
    await sync_to_async(offline_relay)(OTHER)
    token, other_token = await sync_to_async(token_for)(RELAY), await sync_to_async(token_for)(OTHER)
    url = f"/drive/{RELAY}/{HASH}"
    assert (await AsyncClient().put(f"/drive/{'9' * 64}/x?token={token}", b"x")).status_code == 404
    assert (await AsyncClient().put(f"{url}?token={token}", b"")).json()["error"] == "empty-payload"
    assert (await AsyncClient().put(url, FILE)).status_code == 401
    wrong = await AsyncClient().put(f"{url}?token={other_token}", FILE)
    assert wrong.status_code == 403 and wrong.json()["error"] == "invalid-token"
    settings.HYPERTUNA_DRIVE_MAX_BYTES = 100
    big = await AsyncClient().put(f"{url}?token={token}", FILE)
    assert big.status_code == 413 and big.json()["error"] == "payload-too-large"
    settings.HYPERTUNA_DRIVE_MAX_BYTES = 10**6
    mismatch = await AsyncClient().put(f"{url}?token={token}", b"not the hashed bytes")
    assert mismatch.status_code == 400 and mismatch.json()["error"] == "hash-mismatch"
    assert bridge.gateway == {} and await sync_to_async(PendingWrite.objects.count)() == 0


async def test_an_upload_of_a_path_already_being_uploaded_is_409_and_the_first_one_lands(bridge, leases):
    await sync_to_async(offline_relay)()
    token = await sync_to_async(token_for)(RELAY)
    big = FILE * 30
    name = hashlib.sha256(big).hexdigest()
    first = await bridge.drive_upload_begin(relay_key=RELAY, path=[RELAY, name], max_bytes=10**6, sha256=name)
    second = await AsyncClient().put(f"/drive/{RELAY}/{name}?token={token}", big)
    assert second.status_code == 409 and second.json()["error"] == "upload-in-progress"
    await bridge.drive_upload_chunk(first, big)
    await bridge.drive_upload_commit(first)
    assert bridge.gateway == {f"/{RELAY}/{name}": big} and bridge.busy == set()
    assert await sync_to_async(PendingWrite.objects.count)() == 0
    again = await AsyncClient().put(f"/drive/{RELAY}/{name}?token={token}", big)
    assert again.status_code == 202


async def test_join_with_no_reachable_worker_is_kept_as_an_artifact_without_credentials(bridge, leases):
    await sync_to_async(offline_relay)()
    response = await AsyncClient().post(
        f"/post/join/{RELAY}?token=secret&x=1",
        {"pubkey": "p"},
        content_type="application/json",
        headers={"Authorization": "Bearer b", "Cookie": "c=1", "X-Custom": "kept"},
    )
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and body["mode"] == "gateway-drive" and body["artifactPath"].startswith("/join/")
    artifact = json.loads(bridge.gateway[body["artifactPath"]])
    assert artifact["body"] == {"pubkey": "p"} and artifact["category"] == "join" and artifact["relayKey"] == RELAY
    assert artifact["query"] == {"x": "1"} and artifact["headers"]["x-custom"] == "kept"
    assert not {"authorization", "cookie"} & set(artifact["headers"])
    callback = await AsyncClient().post(f"/callback/finalize-auth/{RELAY}", {}, content_type="application/json")
    assert callback.status_code == 202 and callback.json()["artifactPath"].startswith("/callback/")
    types = sorted(await sync_to_async(list)(PendingWrite.objects.values_list("write_type", flat=True)))
    assert types == ["http-callback", "http-join"]
    leases.granted = False
    refused = await AsyncClient().post(f"/post/join/{RELAY}", {}, content_type="application/json")
    assert refused.status_code == 425

"""Gateway coordinator and in-memory vault, against a real mTLS escrow listener where it matters."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from prometheus_client import REGISTRY

from escrow import coordinator as coordinator_module
from escrow import crypto
from escrow.coordinator import EscrowCoordinator
from escrow.models import Lease
from escrow.transport import MTLSClient
from escrow.vault import LeaseVault, StaleLease
from escrow.worker_client import WorkerClient
from tests.escrow.mtls import escrow_listener, make_pki


def fresh_mirror(relay_key):
    # The gateway saw the worker 5 s ago, and its mirror holds everything the worker announced then.
    return {"announcedAt": int(timezone.now().timestamp()) - 5, "announcedLength": 3, "mirroredLength": 3}


def unlock_count(result: str) -> float:
    return REGISTRY.get_sample_value("gateway_escrow_unlock_requests_total", {"result": result}) or 0.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def escrow_url(certs, escrow_settings):
    escrow_settings.HYPERTUNA_ESCROW_HEARTBEAT_SILENCE = 0
    with escrow_listener(certs) as url:
        yield url


@pytest.fixture
def deposited(certs, escrow_url):
    worker = WorkerClient(certs.client(escrow_url, certs.worker), crypto.generate_signing_keypair())
    writer = crypto.generate_signing_keypair()
    relay_key = "ef" * 32
    worker.deposit(relay_key, writer.secret)
    return worker, writer, relay_key


def make_coordinator(certs, url, **kwargs) -> EscrowCoordinator:
    return EscrowCoordinator(certs.client(url, certs.gateway), **kwargs)


@pytest.mark.urls("escrow.service_urls")
@pytest.mark.django_db(transaction=True)
async def test_ensure_write_lease_obtains_opens_and_reuses(certs, escrow_url, deposited):
    _, writer, relay_key = deposited
    coordinator = make_coordinator(certs, escrow_url, mirror_evidence=fresh_mirror)
    before = unlock_count("granted")
    lease = await coordinator.ensure_write_lease(relay_key, healthy_peers=0)
    assert lease is not None and lease.fence == 1 and lease.writer_public_key == writer.public.hex()
    with coordinator.vault.writer_secret(relay_key) as secret:
        assert secret is not None and bytes(secret) == bytes(writer.secret)
    again = await coordinator.ensure_write_lease(relay_key, healthy_peers=0)
    assert again == lease
    assert await Lease.objects.acount() == 1
    assert unlock_count("granted") == before + 1
    assert REGISTRY.get_sample_value("gateway_escrow_leases_active") == 1.0


@pytest.mark.urls("escrow.service_urls")
@pytest.mark.django_db(transaction=True)
async def test_refusal_without_mirror_evidence_leaves_the_relay_read_only(certs, escrow_url, deposited):
    _, _, relay_key = deposited
    coordinator = make_coordinator(certs, escrow_url, mirror_evidence=lambda relay_key: None)
    assert await coordinator.ensure_write_lease(relay_key, healthy_peers=0) is None
    health = coordinator.vault.health()[0]
    assert health["status"] == "refused" and health["reasons"] == ["mirror-evidence-missing"]
    assert coordinator.vault.count() == 0


@pytest.mark.urls("escrow.service_urls")
@pytest.mark.django_db(transaction=True)
async def test_automatic_requests_pause_after_a_refusal_but_manual_ones_do_not(certs, escrow_url, deposited):
    from escrow.models import AuditEntry

    _, _, relay_key = deposited
    now = [1_000.0]
    coordinator = make_coordinator(
        certs, escrow_url, mirror_evidence=lambda relay_key: None, clock=lambda: now[0], refusal_pause=5.0
    )
    audited = await sync_to_async(AuditEntry.objects.count)()
    for _ in range(5):  # a client repeating EVENTs on a read-only relay
        assert await coordinator.ensure_write_lease(relay_key, healthy_peers=0) is None
    assert await sync_to_async(AuditEntry.objects.count)() == audited + 1  # one refused unlock, not five
    result = await coordinator.request_lease(relay_key, healthy_peers=0, requested_by="operator:t")
    assert result.status == "refused"
    assert await sync_to_async(AuditEntry.objects.count)() == audited + 2
    now[0] += 6
    assert await coordinator.ensure_write_lease(relay_key, healthy_peers=0) is None
    assert await sync_to_async(AuditEntry.objects.count)() == audited + 3


class Recording:
    """The escrow client, recording the paths the coordinator asks for."""

    def __init__(self, inner):
        self.inner = inner
        self.paths: list[str] = []

    def request(self, method, path, body=None):
        self.paths.append(path)
        return self.inner.request(method, path, body)


async def wait_for(condition, *, within=5.0):
    import asyncio

    for _ in range(int(within / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


@pytest.mark.urls("escrow.service_urls")
@pytest.mark.django_db(transaction=True)
async def test_a_held_lease_serves_writes_without_asking_the_escrow_even_when_renewal_is_due(
    certs, escrow_url, deposited
):
    _, _, relay_key = deposited
    client = Recording(certs.client(escrow_url, certs.gateway))
    coordinator = EscrowCoordinator(client, mirror_evidence=fresh_mirror, confirm_interval=60)
    lease = await coordinator.ensure_write_lease(relay_key)
    assert lease is not None
    asked = len(client.paths)
    entry = coordinator.vault.get(relay_key)
    coordinator._clock = lambda: entry.expires_at - 60  # a third of the lifetime is left
    for _ in range(5):
        assert await coordinator.ensure_write_lease(relay_key) == lease
    assert client.paths[asked:] == []  # no confirm, no renew on the write path
    coordinator.shutdown()


def watched(certs, url):
    """A coordinator whose watcher runs every 0.1 s on a settable clock, and the escrow paths it asks for."""
    client = Recording(certs.client(url, certs.gateway))
    now = [1_000.0]
    coordinator = EscrowCoordinator(client, mirror_evidence=fresh_mirror, confirm_interval=0.1, clock=lambda: now[0])
    return client, now, coordinator


@pytest.mark.urls("escrow.service_urls")
@pytest.mark.django_db(transaction=True)
async def test_the_watcher_renews_in_the_background_without_any_write_and_tells_listeners(certs, escrow_url, deposited):
    _, _, relay_key = deposited
    client, now, coordinator = watched(certs, escrow_url)
    heard = []
    coordinator.on_grant(heard.append)
    asked = []
    coordinator.renew_while(lambda key: asked.append(key) or True)
    lease = await coordinator.ensure_write_lease(relay_key)
    assert lease is not None and heard == [lease]  # the grant itself
    entry = coordinator.vault.get(relay_key)
    now[0] = entry.stored_at + (entry.expires_at - entry.stored_at) / 2  # not due yet
    await asyncio.sleep(0.35)
    assert "/escrow/renew" not in client.paths
    now[0] = entry.expires_at - (entry.expires_at - entry.stored_at) / 4  # due
    assert await wait_for(lambda: "/escrow/renew" in client.paths)
    assert asked and asked[0] == relay_key
    assert await wait_for(lambda: len(heard) >= 2)
    renewed = heard[1]
    assert (renewed.lease_id, renewed.fence) == (lease.lease_id, lease.fence)
    assert renewed.expires_at == int(coordinator.vault.get(relay_key).expires_at)
    coordinator.shutdown()


@pytest.mark.urls("escrow.service_urls")
@pytest.mark.django_db(transaction=True)
async def test_the_watcher_wakes_for_a_renewal_due_before_its_next_confirmation(certs, escrow_url, deposited):
    """A short lease must not lapse between two confirmations: the watcher sleeps until the renewal is due."""
    import time

    _, _, relay_key = deposited
    client = Recording(certs.client(escrow_url, certs.gateway))
    offset = [0.0]
    coordinator = EscrowCoordinator(
        client, mirror_evidence=fresh_mirror, confirm_interval=60, clock=lambda: time.time() + offset[0]
    )
    lease = await coordinator.ensure_write_lease(relay_key)
    offset[0] = coordinator._renew_at(coordinator.vault.get(relay_key)) - time.time() - 0.3  # due in 0.3 s
    coordinator._watch(lease)  # as if granted at this point of its lifetime
    assert await wait_for(lambda: "/escrow/renew" in client.paths, within=2.0)
    coordinator.shutdown()


@pytest.mark.urls("escrow.service_urls")
@pytest.mark.django_db(transaction=True)
async def test_the_watcher_does_not_renew_while_the_relay_no_longer_needs_the_lease(certs, escrow_url, deposited):
    _, _, relay_key = deposited
    client, now, coordinator = watched(certs, escrow_url)
    coordinator.renew_while(lambda key: False)  # a healthy worker serves the relay again
    assert await coordinator.ensure_write_lease(relay_key) is not None
    entry = coordinator.vault.get(relay_key)
    now[0] = entry.expires_at - 30
    assert await wait_for(lambda: client.paths.count(f"/escrow/relays/{relay_key}") >= 3)  # the watcher runs
    assert "/escrow/renew" not in client.paths
    coordinator.shutdown()


@pytest.mark.urls("escrow.service_urls")
@pytest.mark.django_db(transaction=True)
async def test_release_wipes_and_revokes_at_the_escrow(certs, escrow_url, deposited):
    _, _, relay_key = deposited
    coordinator = make_coordinator(certs, escrow_url, mirror_evidence=fresh_mirror)
    lease = await coordinator.ensure_write_lease(relay_key)
    secret = coordinator.vault.get(relay_key).writer_secret
    assert await coordinator.release(relay_key, reason="worker-resync") is True
    assert bytes(secret) == bytes(64)
    assert (await Lease.objects.aget(id=lease.lease_id)).state == "revoked"
    # The escrow can grant again right away (fence moves on).
    again = await coordinator.ensure_write_lease(relay_key)
    assert again is not None and again.fence == lease.fence + 1


@pytest.mark.urls("escrow.service_urls")
@pytest.mark.django_db(transaction=True)
async def test_lease_held_by_another_node_is_not_stolen(certs, escrow_url, deposited):
    _, _, relay_key = deposited
    node_a = make_coordinator(certs, escrow_url, mirror_evidence=fresh_mirror)
    node_b = make_coordinator(certs, escrow_url, mirror_evidence=fresh_mirror)
    assert await node_a.ensure_write_lease(relay_key) is not None
    assert await node_b.ensure_write_lease(relay_key) is None
    assert node_a.vault.get(relay_key) is not None


@pytest.mark.django_db(transaction=True)
async def test_unreachable_escrow_means_retry_not_read_only(certs, tmp_path):
    """An escrow that cannot be reached is an outage, not a refusal: writes are told to retry (for as long as
    automatic requests pause), never that the relay is read-only."""
    from escrow.coordinator import LeasePending

    client = MTLSClient(
        "https://127.0.0.1:9",
        ca=str(certs.ca.cert),
        cert=str(certs.gateway.cert),
        key=str(certs.gateway.key),
        timeout=2,
    )
    coordinator = EscrowCoordinator(client, mirror_evidence=fresh_mirror, refusal_pause=5.0)
    before = unlock_count("unavailable")
    with pytest.raises(LeasePending) as first:
        await coordinator.ensure_write_lease("ab" * 32)
    assert first.value.retry_after == 5
    with pytest.raises(LeasePending):  # paused: answered at once, no second request
        await coordinator.ensure_write_lease("ab" * 32)
    assert unlock_count("unavailable") == before + 1


async def test_no_escrow_configured_means_no_lease():
    coordinator = EscrowCoordinator(None)
    assert await coordinator.ensure_write_lease("ab" * 32) is None
    assert (await coordinator.request_lease("ab" * 32, healthy_peers=0, requested_by="t")).status == "disabled"


def test_missing_replicas_selector_means_no_mirror_evidence(monkeypatch):
    import replicas.selectors

    monkeypatch.delattr(replicas.selectors, "mirror_evidence")  # app present, selector not (yet)
    assert coordinator_module._mirror_evidence_sync("ab" * 32) is None
    monkeypatch.setitem(sys.modules, "replicas", None)  # app absent: the import itself fails
    assert coordinator_module._mirror_evidence_sync("ab" * 32) is None


@pytest.mark.django_db
def test_mirror_evidence_comes_from_the_replicas_selector(monkeypatch):
    import replicas.selectors

    moment = timezone.now() - timedelta(seconds=7, microseconds=600_000)
    found = {"announcedAt": moment, "announcedLength": 12, "mirroredLength": 11}
    monkeypatch.setattr(replicas.selectors, "mirror_evidence", lambda relay_key: found)
    # Whole seconds, rounded down: the observation is never reported later than it was.
    assert coordinator_module._mirror_evidence_sync("ab" * 32) == {
        "announcedAt": int(moment.timestamp()),
        "announcedLength": 12,
        "mirroredLength": 11,
    }
    monkeypatch.setattr(replicas.selectors, "mirror_evidence", lambda relay_key: None)
    assert coordinator_module._mirror_evidence_sync("ab" * 32) is None


def test_default_coordinator_follows_settings(settings, certs):
    settings.HYPERTUNA_ESCROW_URL = None
    assert coordinator_module.build_default_coordinator().enabled is False
    settings.HYPERTUNA_ESCROW_URL = "https://escrow.internal:8443"
    settings.HYPERTUNA_ESCROW_CA = str(certs.ca.cert)
    settings.HYPERTUNA_ESCROW_CLIENT_CERT = str(certs.gateway.cert)
    settings.HYPERTUNA_ESCROW_CLIENT_KEY = str(certs.gateway.key)
    built = coordinator_module.build_default_coordinator()
    assert built.enabled and built.client.host == "escrow.internal" and built.client.port == 8443
    settings.HYPERTUNA_ESCROW_CLIENT_KEY = None
    with pytest.raises(ImproperlyConfigured):
        coordinator_module.build_default_coordinator()


# --- Vault ---------------------------------------------------------------------------------------------


def opened(relay_key="ab" * 32, fence=1, expires_at=2_000.0, lease_id="l1"):
    writer = crypto.generate_signing_keypair()
    return crypto.OpenedLease(lease_id, relay_key, fence, int(expires_at), writer.public, bytearray(writer.secret))


def test_vault_expires_early_and_wipes():
    now = [1_000.0]
    vault = LeaseVault(clock=lambda: now[0], skew_margin=2.0)
    lease = opened(expires_at=1_100)
    secret = lease.writer_secret
    vault.put(lease)
    now[0] = 1_097.9
    assert vault.get(lease.relay_key) is not None
    now[0] = 1_098.0
    assert vault.get(lease.relay_key) is None
    assert bytes(secret) == bytes(64)
    assert vault.health()[0]["status"] == "expired"


def test_renewal_points_do_not_drift_towards_every_tick():
    """Each renewal starts a new term: the next renewal falls a third of one TTL before the new expiry, not a
    third of everything since the lease was first stored (which would end in a renewal on every tick)."""
    now = [1_000.0]
    coordinator = EscrowCoordinator(None, clock=lambda: now[0])
    coordinator.vault = LeaseVault(clock=lambda: now[0], skew_margin=2.0)
    lease = opened(expires_at=1_030)
    coordinator.vault.put(lease)
    points = []
    for _ in range(5):
        entry = coordinator.vault.get(lease.relay_key)
        due = coordinator._renew_at(entry)
        points.append(round(entry.expires_at - due, 3))
        now[0] = due
        coordinator.vault.update_expiry(lease.relay_key, lease.lease_id, due + 30)
    assert points[1:] == [points[1]] * 4 and points[1] == round(2.0 + (30 - 0) / 3, 3)


def test_vault_sweep_wipes_everything_expired():
    now = [1_000.0]
    vault = LeaseVault(clock=lambda: now[0])
    leases = [opened(relay_key=f"{i:02x}" * 32, expires_at=1_010 + i * 100) for i in range(3)]
    for lease in leases:
        vault.put(lease)
    now[0] = 1_150
    assert sorted(vault.sweep()) == sorted([leases[0].relay_key, leases[1].relay_key])
    assert bytes(leases[0].writer_secret) == bytes(64) and bytes(leases[2].writer_secret) != bytes(64)
    vault.clear()
    assert bytes(leases[2].writer_secret) == bytes(64) and vault.count() == 0


def test_vault_refuses_older_fences_and_wipes_superseded_entries():
    vault = LeaseVault(clock=lambda: 1_000.0)
    first = opened(fence=2)
    vault.put(first)
    stale = opened(fence=1)
    with pytest.raises(StaleLease):
        vault.put(stale)
    assert bytes(stale.writer_secret) == bytes(64)
    newer = opened(fence=3, lease_id="l3")
    vault.put(newer)
    assert bytes(first.writer_secret) == bytes(64)
    assert vault.get(first.relay_key).lease_id == "l3"


def test_vault_never_prints_the_secret():
    vault = LeaseVault(clock=lambda: 1_000.0)
    lease = opened()
    entry = vault.put(lease)
    text = repr(entry) + repr(lease) + str(vault.leases()) + str(vault.health())
    assert lease.writer_secret.hex() not in text and str(list(lease.writer_secret)) not in text


def test_borrowed_secret_is_read_only():
    vault = LeaseVault(clock=lambda: 1_000.0)
    lease = opened()
    vault.put(lease)
    with vault.writer_secret(lease.relay_key) as view, pytest.raises(TypeError):
        view[0] = 1
    with vault.writer_secret("cd" * 32) as missing:
        assert missing is None


def test_release_listeners_hear_every_drop_and_cannot_break_it():
    now = [1_000.0]
    vault = LeaseVault(clock=lambda: now[0])
    heard = []
    vault.on_release(lambda relay_key, lease_id, reason: heard.append((lease_id, reason)))
    vault.on_release(lambda *args: 1 / 0)  # a broken listener is logged, not fatal
    first = opened(lease_id="a", fence=1, expires_at=1_100)
    vault.put(first)
    vault.put(opened(lease_id="b", fence=2, expires_at=1_100))
    now[0] = 1_099
    vault.sweep()
    assert heard == [("a", "superseded"), ("b", "expired")]
    assert bytes(first.writer_secret) == bytes(64)


async def test_module_shortcut_uses_the_process_coordinator():
    fake = EscrowCoordinator(None)
    previous = coordinator_module.set_coordinator(fake)
    try:
        assert coordinator_module.get_coordinator() is fake
        assert await coordinator_module.ensure_write_lease("ab" * 32, healthy_peers=0) is None
    finally:
        coordinator_module.set_coordinator(previous)


class SlowDownEscrow:
    """An escrow that takes ``delay`` s to fail (down behind a slow network)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0

    def request(self, method, path, body=None):
        import time

        from escrow.transport import EscrowUnavailable

        self.calls += 1
        time.sleep(self.delay)
        raise EscrowUnavailable("connect timeout")


@pytest.mark.django_db(transaction=True)
async def test_a_slow_escrow_never_holds_a_write_longer_than_answer_within():
    import asyncio
    import time

    from escrow.coordinator import LeasePending

    escrow = SlowDownEscrow(delay=1.0)
    coordinator = EscrowCoordinator(escrow, mirror_evidence=fresh_mirror, answer_within=0.2, refusal_pause=30)
    started = time.monotonic()
    with pytest.raises(LeasePending) as pending:
        await coordinator.ensure_write_lease("ab" * 32)
    assert time.monotonic() - started < 0.9 and pending.value.retry_after == 1
    # A second write while the first request is under way joins it (one request at the escrow) and is
    # answered as quickly.
    with pytest.raises(LeasePending):
        await coordinator.ensure_write_lease("ab" * 32)
    await asyncio.sleep(1.5)  # the background request ends: escrow unreachable, automatic requests pause
    started = time.monotonic()
    with pytest.raises(LeasePending) as paused:
        await coordinator.ensure_write_lease("ab" * 32)
    assert time.monotonic() - started < 0.5 and paused.value.retry_after > 1
    assert escrow.calls == 1


@pytest.mark.urls("escrow.service_urls")
@pytest.mark.django_db(transaction=True)
async def test_an_escrow_side_revocation_wipes_the_lease_here_within_one_interval_without_any_write(
    certs, escrow_url, deposited
):
    import asyncio

    worker, _, relay_key = deposited
    coordinator = make_coordinator(certs, escrow_url, mirror_evidence=fresh_mirror, confirm_interval=0.3)
    assert await coordinator.ensure_write_lease(relay_key) is not None
    secret = coordinator.vault.get(relay_key).writer_secret
    await sync_to_async(worker.heartbeat)(relay_key)  # the worker is back: the escrow revokes the lease
    for _ in range(40):
        if coordinator.vault.get(relay_key) is None:
            break
        await asyncio.sleep(0.1)
    assert coordinator.vault.get(relay_key) is None
    assert bytes(secret) == bytes(len(secret))  # wiped
    await asyncio.sleep(0.5)
    assert not coordinator._watchers  # the watch ended with the lease
    coordinator.shutdown()
